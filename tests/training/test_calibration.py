"""The initial-size cap of NestedLoRA's modes (neuralsvd.calibration) and the models' output gain."""

from __future__ import annotations

import math

import pytest
import torch

import neuralsvd as nsvd
from neuralsvd.operators.paired import GaussianPairs
from neuralsvd.training.calibration import INIT_RATIO, calibrate_output_scale, scale_factors


def test_scale_factors_cap_and_keep():
    norms = torch.tensor([4.0, 1.0, 9.0, 0.0, 2.0, math.inf])
    quotients = torch.tensor([-1.0, 3.0, 9.0, 1.0, math.nan, 1.0])
    a = scale_factors(norms, quotients, ratio=1.0)
    # 4 > |-1|: shrink to 1 (a = 1/2); 1 < 3: kept; 9 = 9: kept; zero, NaN, inf: kept
    assert torch.allclose(a, torch.tensor([0.5, 1.0, 1.0, 1.0, 1.0, 1.0]))
    a = scale_factors(norms, quotients, ratio=0.25)
    assert torch.allclose(a, torch.tensor([0.25, math.sqrt(0.75), 0.5, 1.0, 1.0, 1.0]))


@pytest.mark.parametrize("cls", [nsvd.models.ParallelMLP, nsvd.models.MLP])
def test_scale_outputs_scales_values_and_jets_and_marks_the_model(cls):
    torch.manual_seed(0)
    model = cls(2, 3, hidden=(16, 16), envelope=True).double()
    x = torch.randn(50, 2, dtype=torch.float64)
    before_value, before_jet = model.value_and_jet(x)
    factors = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    assert not bool(model.output_scaled)
    model.scale_outputs(factors)
    value, jet = model.value_and_jet(x)
    assert torch.allclose(value, before_value * factors, atol=1e-12)
    assert torch.allclose(jet, before_jet * factors, atol=1e-12)
    assert bool(model.output_scaled)
    assert "output_gain" in model.state_dict() and "output_scaled" in model.state_dict()
    assert list(model.state_dict()["output_gain"].flatten()) == [0.5, 2.0, 1.0]


def test_calibration_caps_the_batch_norms_at_the_rayleigh_quotients():
    op = nsvd.operators.HarmonicOscillator(dim=2)
    torch.manual_seed(0)
    model = nsvd.models.ParallelMLP(2, 4, hidden=(32, 32)).double()
    model.output_gain.mul_(torch.tensor([1.0, 30.0, 30.0, 1e-3], dtype=torch.float64).view(4, 1, 1))
    x = op.sample(2048, torch.Generator().manual_seed(1), torch.float64)
    fx, tfx = op.apply(model, x)
    norms = fx.pow(2).mean(0)
    quotients = (fx * tfx).mean(0) / norms
    factors = calibrate_output_scale((model,), op, x)
    fx2, tfx2 = op.apply(model, x)
    capped = norms > quotients.abs()
    assert bool(capped[1]) and bool(capped[2]) and not bool(capped[3])  # made too large / too small above
    expected = torch.where(capped, quotients.abs(), norms)
    assert torch.allclose(fx2.pow(2).mean(0), expected, rtol=1e-10)
    assert torch.allclose(fx2, fx * factors, atol=1e-10)  # the shape is untouched
    assert torch.allclose((fx2 * tfx2).mean(0) / fx2.pow(2).mean(0), quotients, rtol=1e-10)  # so is the quotient
    assert calibrate_output_scale((model,), op, x) is None  # once per model
    plain = torch.nn.Linear(2, 2).double()
    assert calibrate_output_scale((plain,), op, x) is None  # no gain: untouched


def test_calibration_svd_caps_the_product_of_norms():
    op = GaussianPairs(torch.tensor([[1.0, 0.6], [0.6, 1.0]]), 1)
    torch.manual_seed(0)
    left, right = (nsvd.models.ParallelMLP(1, 3, hidden=(16,)).double() for _ in range(2))
    left.output_gain.mul_(20.0)
    x, y = op.sample_pair(4096, torch.Generator().manual_seed(0), torch.float64)
    fx, gy, _, tg = op.apply_svd(left, right, x, y)
    norms = (fx.pow(2).mean(0) * gy.pow(2).mean(0)).sqrt()
    sigma = (fx * tg).mean(0) / norms
    factors = calibrate_output_scale((left, right), op, (x, y), ratio=0.5)
    fx2, gy2, _, _ = op.apply_svd(left, right, x, y)
    after = (fx2.pow(2).mean(0) * gy2.pow(2).mean(0)).sqrt()
    assert torch.allclose(after, torch.minimum(norms, 0.5 * sigma.abs()), rtol=1e-10)
    assert torch.allclose(fx2, fx * factors, atol=1e-10) and torch.allclose(gy2, gy * factors, atol=1e-10)


def _fit_scaled(scale: float, ratio: float | None, steps: int = 30):
    op = nsvd.operators.HarmonicOscillator(dim=2, scale=scale, shift=16.0)
    torch.manual_seed(0)
    model = nsvd.models.ParallelMLP(2, 3, hidden=(16, 16)).double()
    model.output_gain.mul_(50.0)  # every mode starts above its cap, at either scale
    nsvd.fit(model, op, nsvd.NestedLoRA(3), steps=steps, batch_size=64, seed=0, progress=False,
             init_ratio=ratio, dtype=torch.float64, eval_batches=1, eval_batch_size=256,
             warm_start=None)  # the cap alone (the warm start, covariant too, has its own test)
    x = torch.randn(100, 2, dtype=torch.float64)
    return model(x)


def test_with_the_cap_training_does_not_depend_on_the_operators_scale():
    """Training k·g on c·T is training g on T with k → k/√c (Adam is blind to the loss's scale): after the
    cap, the run on 100·T is the run on T with every function 10× larger; without it, it is not."""
    f1, f100 = _fit_scaled(1.0, INIT_RATIO), _fit_scaled(100.0, INIT_RATIO)
    assert torch.allclose(f100, 10 * f1, rtol=1e-4, atol=1e-6 * float(f100.abs().max()))
    g1, g100 = _fit_scaled(1.0, None), _fit_scaled(100.0, None)
    assert not torch.allclose(g100, 10 * g1, rtol=1e-2)


def test_fit_calibrates_once_and_resume_keeps_the_gain(tmp_path):
    op = nsvd.operators.HarmonicOscillator(dim=2)
    torch.manual_seed(0)
    model = nsvd.models.ParallelMLP(2, 3, hidden=(16, 16))
    model.output_gain.mul_(50.0)
    nsvd.fit(model, op, nsvd.NestedLoRA(3), steps=20, progress=False, eval_batches=1, checkpoint_dir=tmp_path,
             warm_start=None)  # the cap alone
    gain = model.output_gain.clone()
    assert bool(model.output_scaled) and bool((gain < 50.0).all())
    nsvd.fit(model, op, nsvd.NestedLoRA(3), steps=20, progress=False, eval_batches=1)  # a second fit: kept
    assert torch.equal(model.output_gain, gain)
    torch.manual_seed(0)
    fresh = nsvd.models.ParallelMLP(2, 3, hidden=(16, 16))
    nsvd.fit(fresh, op, nsvd.NestedLoRA(3), steps=20, progress=False, eval_batches=1, checkpoint_dir=tmp_path,
             resume=True)
    assert torch.equal(fresh.output_gain, gain)  # from the checkpoint


def test_baselines_are_not_calibrated():
    op = nsvd.operators.HarmonicOscillator(dim=2)
    torch.manual_seed(0)
    model = nsvd.models.ParallelMLP(2, 3, hidden=(16, 16))
    nsvd.fit(model, op, nsvd.NeuralEF(3), steps=5, progress=False, eval_batches=1)
    assert not bool(model.output_scaled) and bool((model.output_gain == 1).all())


def test_state_saved_before_the_gain_existed_still_loads():
    torch.manual_seed(0)
    model = nsvd.models.ParallelMLP(2, 3, hidden=(8,))
    old = {k: v for k, v in model.state_dict().items() if k not in ("output_gain", "output_scaled")}
    fresh = nsvd.models.ParallelMLP(2, 3, hidden=(8,))
    fresh.load_state_dict(old)  # strict
    x = torch.randn(5, 2)
    assert torch.equal(fresh(x), model(x)) and bool(fresh.output_scaled)  # a trained model: not re-calibrated


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, "1"])
def test_fit_rejects_a_bad_init_ratio(bad):
    op = nsvd.operators.HarmonicOscillator(dim=2)
    with pytest.raises(ValueError, match="init_ratio must be a positive number or None"):
        nsvd.fit(nsvd.models.ParallelMLP(2, 2, hidden=(8,)), op, nsvd.NestedLoRA(2), steps=1, init_ratio=bad,
                 progress=False)

"""The warm start (neuralsvd.warm_start): deflated quotients by hand, the optimum left alone, scale
covariance, and modes that start at negative Rayleigh quotients recovered on problems it was not tuned on
(against numpy's eigh and a 1D finite-difference solve)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from _runs import FIT, assert_identical_runs, dense_with_top, small_model, tabular_at_optimum
from scipy.linalg import eigh_tridiagonal

import neuralsvd as nsvd
from neuralsvd.models import Tabular
from neuralsvd.operators import DenseOperator
from neuralsvd.training.warm_start import _surrogate, deflated_quotients, needs_warm_start, warm_start

F64 = torch.float64


def test_deflated_quotients_by_hand():
    gram = torch.tensor([[2.0, 1.0], [1.0, 4.0]], dtype=F64)  # ‖f_0‖² = 2, ‖f_1‖² = 4, ⟨f_0, f_1⟩ = 1
    inner = torch.tensor([6.0, 8.0], dtype=F64)  # ρ = (3, 2)
    # ρ̃_1 = 2 − 3 · 1² / (2 · 4)
    assert deflated_quotients(gram, inner).tolist() == pytest.approx([3.0, 2.0 - 3.0 / 8.0])
    # a negative earlier quotient deflates nothing
    assert deflated_quotients(gram, torch.tensor([-6.0, 8.0], dtype=F64)).tolist() == pytest.approx([-3.0, 2.0])


def test_surrogate_has_the_gradient_of_each_modes_objective():
    """Mode l's gradient is that of -ρ̃_l/s + (log n_l)², earlier modes held fixed (autograd by hand); with a
    subset of modes chosen (the rescue's case) only those move, ``s`` their mean ``|ρ̃_l|``."""
    torch.manual_seed(0)
    n, L = 40, 3
    fx = torch.randn(n, L, dtype=F64, requires_grad=True)
    tfx = torch.randn(n, L, dtype=F64)
    f = fx.detach()
    gram, inner = f.T @ f / n, (f * tfx).mean(0)
    rho = deflated_quotients(gram, inner)
    for chosen in (torch.ones(L, dtype=torch.bool), torch.tensor([False, True, True])):
        got = torch.autograd.grad(_surrogate(fx, tfx, gram, inner, rho, chosen), fx)[0]
        assert not got[:, ~chosen].any()  # the modes not chosen do not move
        _check_each_mode(got, f, tfx, gram, inner, rho, chosen)


def _check_each_mode(got, f, tfx, gram, inner, rho, chosen):
    n = f.shape[0]
    scale = rho[chosen].abs().mean()
    for l in torch.nonzero(chosen).flatten().tolist():
        col = f[:, l].clone().requires_grad_(True)
        g = torch.cat([f[:, :l], col[:, None], f[:, l + 1:]], 1)
        gram_l = g.T @ g / n
        a_l = 2 * (col * tfx[:, l]).mean() - inner[l]  # ∇⟨f, Tf⟩ = 2⟨∇f, Tf⟩
        r = a_l / gram_l[l, l] - sum((inner[i] / gram[i, i]).clamp_min(0) * gram_l[l, i] ** 2 / (gram[i, i] * gram_l[l, l])
                                    for i in range(l))
        want = torch.autograd.grad(-r / scale + gram_l[l, l].log() ** 2, col)[0]
        assert torch.allclose(got[:, l], want, atol=1e-12)


def _dense() -> np.ndarray:
    """Eigenvalues 3, 2, 1 and 37 negative ones in [−20, −5]."""
    return dense_with_top((3.0, 2.0, 1.0), (-20.0, -5.0), seed=0)


def test_the_optimum_is_left_alone():
    """At f_l = √λ_l φ_l every ρ̃_l = λ_l > 0: no warm start, and fit leaves the start as given."""
    op, model, lam = tabular_at_optimum(_dense(), 3)
    x = torch.arange(40)
    fx, tfx = op.apply(model, x)
    gram, inner = fx.T @ fx / len(x), (fx * tfx).mean(0)
    assert deflated_quotients(gram, inner).tolist() == pytest.approx(lam.tolist(), rel=1e-10)
    assert not needs_warm_start(model, op, x)
    result = nsvd.fit(model, op, nsvd.NestedLoRA(3), steps=4, batch_size=40, progress=False, lr=1e-12)
    assert result.extras["warm_start_steps"] == 0
    assert result.eigenvalues.tolist() == pytest.approx(lam.tolist(), rel=1e-6)


def test_dense_matrix_top_eigenpairs_with_defaults():
    """Most of the spectrum negative: random columns start at ρ < 0; the defaults still find the top 3."""
    a = _dense()
    lam, vec = np.linalg.eigh(a)
    torch.manual_seed(0)
    op = DenseOperator(torch.tensor(a, dtype=torch.float32))
    model = Tabular(a.shape[0], 3)
    x = torch.arange(a.shape[0])
    assert needs_warm_start(model, op, x)
    result = nsvd.fit(model, op, nsvd.NestedLoRA(3), steps=3000, batch_size=40, progress=False)
    assert result.status == "ok" and result.extras["warm_start_steps"] > 0
    assert result.eigenvalues.numpy() == pytest.approx(lam[::-1][:3], abs=1e-3)
    learned = result.eigenfunctions(x).double().numpy()
    cos = np.abs((learned / np.linalg.norm(learned, axis=0) * vec[:, ::-1][:, :3]).sum(0))
    assert cos == pytest.approx(np.ones(3), abs=1e-4)


def _levels_1d(potential, lo=-8.0, hi=8.0, n=4000, k=3):
    """The k lowest eigenvalues of -d²/dx² + V on [lo, hi] (Dirichlet), second-order finite differences."""
    x = np.linspace(lo, hi, n)
    h = x[1] - x[0]
    return eigh_tridiagonal(2 / h**2 + potential(x), -np.ones(n - 1) / h**2, select="i", select_range=(0, k - 1))[0]


def test_recovers_modes_that_start_at_negative_quotients():
    """An anharmonic well x² + 0.3 x⁴ no preset was tuned on, a newcomer's small network: every mode starts
    at ρ ≪ 0; with the warm start no mode is lost: every norm ratio healthy, every level within 2% at this
    small budget (1.8%, 0.6%, 0.5% measured)."""
    ref = _levels_1d(lambda s: s**2 + 0.3 * s**4)
    torch.manual_seed(0)
    op = nsvd.operators.Schrodinger(lambda x: x[:, 0] ** 2 + 0.3 * x[:, 0] ** 4, dim=1, shift=9.0,
                                    sampler=nsvd.sampling.Gaussian(dim=1, std=2.0))
    model = nsvd.models.ParallelMLP(1, 3, hidden=(32, 32))
    assert needs_warm_start(model, op, op.sample(256, torch.Generator().manual_seed(0)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no revival, no unconverged mode
        result = nsvd.fit(model, op, nsvd.NestedLoRA(3), steps=3000, batch_size=256, progress=False)
    assert result.extras["warm_start_steps"] > 0
    assert result.status == "ok"
    assert result.eigenvalues.numpy() == pytest.approx(ref, rel=2e-2)


def test_warm_start_is_scale_covariant():
    """On c·T the warm start gives the functions of T times √c (its objective ignores the scale)."""
    outs = []
    for scale in (1.0, 100.0):
        op = nsvd.operators.HarmonicOscillator(dim=2, scale=scale, shift=16.0)
        torch.manual_seed(0)
        model = nsvd.models.ParallelMLP(2, 3, hidden=(16, 16)).double()
        gen = torch.Generator().manual_seed(1)
        steps = warm_start(model, op, lambda: op.sample(64, gen, F64), 1e-3, 40)  # noqa: B023
        outs.append((steps, model(torch.linspace(-2, 2, 30, dtype=F64).reshape(15, 2))))
    assert outs[0][0] == outs[1][0] > 0
    assert torch.allclose(outs[1][1], 10 * outs[0][1], rtol=1e-6, atol=1e-9)


def test_resume_after_a_warm_start_is_bitwise_identical(tmp_path):
    """The warm start happens once, before step 0; a run stopped after a checkpoint and resumed ends
    bitwise identical to the uninterrupted one."""
    class Stop(Exception):
        pass

    def stop(step, model):
        if step == 50:  # after the checkpoint at step 40
            raise Stop

    kw = {**FIT, "warm_start": 200}
    op = nsvd.operators.HarmonicOscillator(2)
    whole = nsvd.fit(small_model(), op, nsvd.NestedLoRA(2), checkpoint_dir=tmp_path / "a", **kw)
    assert whole.extras["warm_start_steps"] > 0
    with pytest.raises(Stop):
        nsvd.fit(small_model(), op, nsvd.NestedLoRA(2), checkpoint_dir=tmp_path / "b", callback=stop, **kw)
    resumed = nsvd.fit(small_model(), op, nsvd.NestedLoRA(2), checkpoint_dir=tmp_path / "b", resume=True, **kw)
    assert resumed.extras["resumed_from"] == 40
    assert resumed.extras["warm_start_steps"] == whole.extras["warm_start_steps"]
    assert_identical_runs(whole, resumed)


def test_fit_rejects_a_bad_warm_start():
    op = nsvd.operators.HarmonicOscillator(dim=1)
    with pytest.raises(ValueError, match="warm_start must be an integer >= 0"):
        nsvd.fit(nsvd.models.ParallelMLP(1, 2), op, nsvd.NestedLoRA(2), steps=2, warm_start=-1, progress=False)

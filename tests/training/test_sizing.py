"""The size control (neuralsvd.training.sizing): a damped step toward each mode's best size, nothing at the optimum."""

import numpy as np
import pytest
import torch

import neuralsvd as nsvd
from neuralsvd.models import Tabular
from neuralsvd.operators import DenseOperator
from neuralsvd.training import sizing
from neuralsvd.training.sizing import SizeControl

LAM = torch.tensor([5.0, 3.0, 2.0], dtype=torch.float64)


def _gains(gram: torch.Tensor, rayleigh: torch.Tensor, rate: float = 1.0) -> torch.Tensor:
    model = Tabular(10, 3)
    SizeControl(model)(gram, rayleigh * gram.diagonal(), rate=rate)
    return model.output_gain.double()


def test_the_optimum_is_a_fixed_point():
    """At f_l = √λ_l φ_l (Gram diag(λ), quotients λ) every factor is exactly 1."""
    assert torch.equal(_gains(torch.diag(LAM), LAM), torch.ones(3, dtype=torch.float64))


def test_a_wrong_size_moves_part_of_the_way_to_the_best_size():
    """Mode 0 at 1.5× its best squared norm, mode 2 at 0.1× (clipped to a factor 2 before damping): each
    gain is ``(ρ̃ / ‖f‖²)^(GAIN / 2)``, mode 1 (right size, no overlap) untouched."""
    norms = LAM * torch.tensor([1.5, 1.0, 0.1], dtype=torch.float64)
    gains = _gains(torch.diag(norms), LAM)
    expected = torch.tensor([(1 / 1.5) ** (sizing.GAIN / 2), 1.0, 2.0 ** (sizing.GAIN / 2)], dtype=torch.float64)
    assert gains == pytest.approx(expected, rel=1e-6)
    assert _gains(torch.diag(norms), LAM, rate=0.0) == pytest.approx(torch.ones(3), abs=0)  # the schedule's end


def test_the_best_size_is_the_deflated_quotient():
    """Mode 1 overlaps mode 0 (cosine² 0.25): its best size is ρ_1 − ρ_0 · 0.25 (sequential NestedLoRA with
    mode 0 fixed), not its plain quotient; a gain that reaches it in one undamped step proves the target."""
    norms = torch.tensor([5.0, 3.0, 2.0], dtype=torch.float64)
    gram = torch.diag(norms)
    gram[0, 1] = gram[1, 0] = 0.5 * (5.0 * 3.0) ** 0.5
    rho = torch.tensor([5.0, 4.0, 2.0], dtype=torch.float64)
    model = Tabular(10, 3)
    old = sizing.GAIN
    try:
        sizing.GAIN = 1.0  # undamped: ‖f‖² goes to the target in one call
        SizeControl(model)(gram, rho * gram.diagonal())
    finally:
        sizing.GAIN = old
    best = 4.0 - 5.0 * 0.25
    assert float(model.output_gain[1]) ** 2 * 3.0 == pytest.approx(best, rel=1e-6)


def test_copies_and_dead_modes_are_left_to_the_other_rules():
    """Mode 2 copies mode 0 (deflated quotient 0): not scaled, while the healthy mode 1 is. A mode of zero
    norm (the revival's case) is not scaled either, nor are the modes after it (their deflation by it is
    undefined until it is revived)."""
    gram = torch.diag(torch.tensor([5.0, 6.0, 1.0], dtype=torch.float64))
    gram[0, 2] = gram[2, 0] = (5.0 * 1.0) ** 0.5
    gains = _gains(gram, torch.tensor([5.0, 3.0, 5.0], dtype=torch.float64))
    assert gains[2] == 1.0 and gains[1] < 1.0
    dead = _gains(torch.diag(torch.tensor([5.0, 0.0, 4.0], dtype=torch.float64)),
                  torch.tensor([5.0, float("nan"), 2.0], dtype=torch.float64))
    assert dead[1] == 1.0 and dead[2] == 1.0


def test_a_model_without_output_gain_is_left_alone():
    net = torch.nn.Linear(2, 3)
    control = SizeControl(net)
    assert not control.enabled
    control(torch.diag(LAM), LAM * LAM)  # no error, nothing to scale


def test_fit_ends_with_every_mode_near_its_best_size():
    """A dense matrix with the library's defaults: the trained sizes are the eigenvalues (numpy eigh)."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(40, 40)))
    spectrum = np.concatenate([[5.0, 4.0, 3.0], rng.uniform(-1, 1, 37)])
    a = (q * spectrum) @ q.T
    torch.manual_seed(0)
    result = nsvd.fit(Tabular(40, 3), DenseOperator(torch.tensor(a)), nsvd.NestedLoRA(3), steps=1500,
                      batch_size=40, progress=False)
    assert result.eigenvalues.numpy() == pytest.approx([5.0, 4.0, 3.0], rel=1e-3)
    assert np.asarray(result.extras["norm_ratio"]) == pytest.approx(1.0, abs=1e-2)

"""A mode started at f ≈ 0 recovers under the library defaults (not hydrogen: a user's 2D potential)."""

from __future__ import annotations

import warnings

import pytest
import torch

import neuralsvd as nsvd


@pytest.mark.parametrize("nesting", ["sequential", "joint"])
def test_mode_started_near_zero_recovers(nesting):
    """``V = x0² + 2.25 x1²`` through ``Schrodinger`` with its default sampler, ``shift=10``; mode 1's network
    starts with its output layer scaled by 1e-4 (``‖f_1‖²`` about 1e-8 of the others). With the default
    loss, model and optimizer it must end at the second level, not leave it to mode 2 (closed form:
    E = (2 n0 + 1) + 1.5 (2 n1 + 1) = 2.5, 4.5, 5.5)."""
    op = nsvd.operators.Schrodinger(lambda x: x[:, 0] ** 2 + 2.25 * x[:, 1] ** 2, dim=2, shift=10.0)
    torch.manual_seed(0)
    model = nsvd.models.ParallelMLP(2, 3)
    with torch.no_grad():
        model.out_weight[1].mul_(1e-4)
        model.out_bias[1].mul_(1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "unconverged mode" warning either
        result = nsvd.fit(model, op, nsvd.NestedLoRA(3, nesting=nesting), steps=2000, seed=0, progress=False)
    torch.testing.assert_close(result.eigenvalues.double(), torch.tensor([2.5, 4.5, 5.5], dtype=torch.float64),
                               rtol=2e-2, atol=0)
    assert all(0.8 < r < 1.25 for r in result.extras["norm_ratio"])


def _zeroed_mode_run(nesting: str, revive: bool, steps: int = 2000) -> nsvd.FitResult:
    """The problem above with mode 1 *exactly* zero (output weights and bias 0): a stationary point."""
    op = nsvd.operators.Schrodinger(lambda x: x[:, 0] ** 2 + 2.25 * x[:, 1] ** 2, dim=2, shift=10.0)
    torch.manual_seed(0)
    model = nsvd.models.ParallelMLP(2, 3)
    with torch.no_grad():
        model.out_weight[1].zero_()
        model.out_bias[1].zero_()
    return nsvd.fit(model, op, nsvd.NestedLoRA(3, nesting=nesting), steps=steps, seed=0, progress=False,
                    revive=revive)


@pytest.mark.parametrize("nesting", ["sequential", "joint"])
def test_mode_at_exactly_zero_is_revived_by_default(nesting):
    """``f_1 ≡ 0`` exactly: the defaults re-initialize it at the first check (one warning naming mode 1) and
    the run ends at the closed-form levels 2.5, 4.5, 5.5 with norm ratios near 1."""
    with pytest.warns(RuntimeWarning, match="mode 1 collapsed") as record:
        result = _zeroed_mode_run(nesting, revive=True)
    assert sum("collapsed" in str(w.message) for w in record) == 1
    torch.testing.assert_close(result.eigenvalues.double(), torch.tensor([2.5, 4.5, 5.5], dtype=torch.float64),
                               rtol=2e-2, atol=0)
    assert all(0.8 < r < 1.25 for r in result.extras["norm_ratio"])


def test_mode_at_exactly_zero_stays_without_revival():
    """The control: without the rule the zero mode never moves (every gradient of it vanishes), so the
    final read-out is 0/0 and the run fails."""
    with pytest.raises(nsvd.DivergenceError, match="non-finite final eigenvalue"):
        _zeroed_mode_run("sequential", revive=False, steps=300)


def test_revival_never_fires_at_the_optimum():
    """Near the optimum ``‖f_l‖² = λ_l`` (also for tiny eigenvalues); a mode at ``f ≈ 0`` with a Rayleigh
    quotient of either sign is collapsed, a small mode whose norm is within 1e-5 of its quotient is not."""
    from neuralsvd.training.revival import collapsed_modes

    norms = torch.tensor([4.0, 1e-9, 0.0, 1e-9, 1e-12, 1e-3])
    rayleigh = torch.tensor([4.0, 1e-9, float("nan"), 2.0, -3.0, -3.0])
    assert collapsed_modes(norms, rayleigh).tolist() == [False, False, True, True, True, False]

"""The Gaussian over the classically allowed region (Schrödinger's default sampler) against hand-derived
regions, and the default sampler end to end on a potential N(0, I) cannot handle."""

import math

import pytest
import torch
from scipy.stats import chi2

import neuralsvd as nsvd
from neuralsvd.numerics.allowed_region import INSIDE, allowed_region_gaussian, chi2_quantile


def _cover(dim: int) -> float:
    """σ_a / s_a of the rule (a uniform interval of std s has half-width √3 s)."""
    return math.sqrt(3 / chi2.ppf(INSIDE, dim))


@pytest.mark.parametrize("dim", [1, 2, 4, 10])
def test_chi2_quantile_matches_scipy(dim):
    assert chi2_quantile(INSIDE, dim) == pytest.approx(chi2.ppf(INSIDE, dim), rel=1e-9)


def test_an_ellipsoidal_region_holds_the_fraction_of_the_gaussian():
    """A 3D harmonic well: the fraction of draws with V < E is INSIDE (Monte Carlo, 2e5 draws)."""
    potential = lambda x: x[:, 0] ** 2 + 4 * x[:, 1] ** 2 + 0.25 * x[:, 2] ** 2
    g = allowed_region_gaussian(potential, 3, 6.0)
    x = g.sample(200_000, torch.Generator().manual_seed(0), torch.float64)
    assert float((potential(x) < 6.0).double().mean()) == pytest.approx(INSIDE, abs=5e-3)


def test_separable_offset_region_is_measured_per_axis():
    # x² + 4 (y - 1)² < 4: |x| < 2 and |y - 1| < 1 on the slices through the minimum (0, 1)
    g = allowed_region_gaussian(lambda x: x[:, 0] ** 2 + 4 * (x[:, 1] - 1) ** 2, 2, 4.0)
    assert g.mean.tolist() == pytest.approx([0.0, 1.0], abs=2e-3)
    assert g.std.tolist() == pytest.approx([_cover(2) * 2 / math.sqrt(3), _cover(2) * 1 / math.sqrt(3)], rel=2e-3)


def test_two_separate_wells_are_both_covered():
    # 10 (x² - 1)² < 5: two intervals 1 - 1/√2 < x² < 1 + 1/√2 around ±1, below the barrier at x = 0
    g = allowed_region_gaussian(lambda x: 10 * (x[:, 0] ** 2 - 1) ** 2, 1, 5.0)
    lo, hi = math.sqrt(1 - 0.5**0.5), math.sqrt(1 + 0.5**0.5)
    second_moment = (hi**3 - lo**3) / (3 * (hi - lo))  # of the uniform measure on both intervals; mean 0
    assert float(g.mean) == pytest.approx(0.0, abs=2e-3)
    assert float(g.std) == pytest.approx(_cover(1) * math.sqrt(second_moment), rel=2e-3)


def test_wide_regions_widen_the_slice():
    g = allowed_region_gaussian(lambda x: 1e-4 * x[:, 0] ** 2, 1, 1.0)  # |x| < 100
    assert float(g.std) == pytest.approx(_cover(1) * 100 / math.sqrt(3), rel=2e-3)


@pytest.mark.parametrize("potential, dim, energy", [
    (lambda x: -1 / x.norm(dim=1), 3, 0.0),  # unbounded at E = 0
    (lambda x: (x * x).sum(1) + 1.0, 2, 0.5),  # empty: E below the potential
])
def test_no_region_gives_none(potential, dim, energy):
    assert allowed_region_gaussian(potential, dim, energy) is None


def test_schrodinger_default_sampler_and_its_fallback():
    op = nsvd.operators.Schrodinger(lambda x: 0.04 * x[:, 0] ** 2, dim=1, shift=2.0)
    assert float(op.sampler.std) == pytest.approx(_cover(1) * math.sqrt(50) / math.sqrt(3), rel=2e-3)
    with pytest.warns(UserWarning, match="empty or unbounded"):
        op = nsvd.operators.Schrodinger(lambda x: -1 / x.norm(dim=1), dim=2, shift=0.0)
    assert op.sampler.std.tolist() == [1.0, 1.0]


def test_wide_oscillator_with_defaults():
    """V = 0.04 x² (ω = 0.2, levels 0.2 (2n + 1)) the way a newcomer calls it: under N(0, 1) the ratio
    model's E_p[f⁴] is infinite; the default sampler covers the states."""
    op = nsvd.operators.Schrodinger(lambda x: 0.04 * x[:, 0] ** 2, dim=1, shift=2.0)
    torch.manual_seed(0)
    model = nsvd.models.ParallelMLP(in_features=1, num_modes=3, hidden=(64, 64))
    result = nsvd.fit(model, op, nsvd.NestedLoRA(3), steps=1500, batch_size=256, seed=0, progress=False)
    assert result.eigenvalues.tolist() == pytest.approx([0.2, 0.6, 1.0], rel=2e-2)

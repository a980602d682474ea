"""The finite-difference reference solver against closed forms: its energies are within its own
estimated error (and the estimate is not wildly pessimistic), its functions orthonormal on its grid."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from neuralsvd.numerics.potential_expr import parse_potential
from neuralsvd.numerics.reference_grid import GridReference, auto_box, solve_grid, solve_reference
from neuralsvd.operators import HarmonicOscillator, Hydrogen2D

ROOT = Path(__file__).resolve().parents[2]


def _solve(potential, dim, modes, points):
    box, _ = auto_box(potential, dim, modes)
    return solve_reference(potential, dim, box.half_width, points, modes)


def _assert_within_estimate(sol, exact, low=0.3, high=3.0):
    """The fine grid's true error within ``[low, high]`` times the estimate; the extrapolated energies
    within the estimate."""
    true_fine = np.abs(sol.energies - exact)
    ratio = true_fine / sol.error_estimate
    assert ((low <= ratio) & (ratio <= high)).all(), ratio
    assert (np.abs(sol.extrapolated - exact) <= sol.error_estimate).all()


def test_isotropic_oscillator_2d():
    """Smooth potential: second order observed, the O(h²) extrapolation removes > 95% of the error."""
    op = HarmonicOscillator(dim=2)
    exact = op.exact_eigenvalues(6).numpy()  # 2, 4, 4, 6, 6, 6
    sol = _solve(op.potential, 2, 6, 48)
    assert (sol.order == 2).all()
    _assert_within_estimate(sol, exact, low=0.9, high=1.1)
    assert (np.abs(sol.extrapolated - exact) < 0.05 * sol.error_estimate).all()
    assert (sol.error_estimate / exact < 1e-2).all()


def test_hydrogen_2d():
    """Coulomb singularity: the s-states converge at about first order, and the estimate (with the
    observed order) still brackets the true error."""
    op = Hydrogen2D()
    exact = op.exact_eigenvalues(4).numpy()  # -1, -1/9 (×3)
    sol = _solve(op.potential, 2, 4, 64)
    assert sol.order[0] < 1.5 and (sol.order[1:3] == 2).all()  # 1s singular, 2p smooth
    _assert_within_estimate(sol, exact, low=0.3, high=3.0)
    assert (np.abs(sol.energies - exact) / np.abs(exact) < 0.4).all()
    assert np.abs(sol.energies[0] - exact[0]) > 0.1  # a uniform grid resolves the cusp poorly: known, stated


def test_separable_poschl_teller_and_oscillator():
    """``-12 sech²(x0) + x1²``: Pöschl–Teller ``-(3 - n)²`` (n = 0, 1, 2) plus oscillator ``2m + 1``."""
    potential = parse_potential("-12/cosh(x0)**2 + x1**2", 2)
    exact = np.sort([-(3 - n) ** 2 + 2 * m + 1 for n in range(3) for m in range(6)])[:5]  # -8, -6, -4, -3, -2
    sol = solve_reference(potential, 2, 8.0, 64, 5)  # the box holds these states to e^-30
    assert (sol.order == 2).all()
    _assert_within_estimate(sol, exact, low=0.9, high=1.1)
    assert (sol.error_estimate < 0.05).all()


@pytest.mark.parametrize(("dim", "omega", "points"), [
    (1, [1.0], 200),
    (3, [1.0, 1.5, 2.0], 16),
])
def test_anisotropic_oscillator_1d_and_3d(dim, omega, points):
    op = HarmonicOscillator(dim=dim, omega=omega)
    exact = op.exact_eigenvalues(4).numpy()  # 3D: 4.5, 6.5, 7.5, 8.5
    sol = solve_reference(op.potential, dim, 5.0 if dim == 3 else 8.0, points, 4)
    if dim == 1:
        assert (sol.order == 2).all()
        _assert_within_estimate(sol, exact, low=0.8, high=1.25)
    else:  # 8³ .. 32³ nodes: not yet O(h²) for the ground state; the estimate stays conservative
        _assert_within_estimate(sol, exact, low=0.1, high=1.0)
        assert (sol.error_estimate / exact < 0.1).all()


def test_grid_reference_is_orthonormal_and_merges_split_levels():
    op = HarmonicOscillator(dim=2)
    ref = GridReference(solve_reference(op.potential, 2, 6.0, 16, 4))
    quad = ref.quadrature()
    psi = ref.exact_eigenfunctions(quad.points, 4)  # (N, 4): the eigenvectors at the nodes
    torch.testing.assert_close(quad.inner(psi, psi), torch.eye(4, dtype=torch.float64), atol=1e-10, rtol=0)
    levels = ref.exact_eigenvalues(4)
    assert levels[1] == levels[2]  # the (1, 0) / (0, 1) pair: one level
    assert ref.exact_eigenfunctions(torch.full((1, 2), 1e3), 4).abs().max() == 0  # outside the box
    with pytest.raises(ValueError, match="holds 4 modes, 5 requested"):
        ref.exact_eigenvalues(5)


def test_grid_errors():
    with pytest.raises(ValueError, match="dimensions 1..3, got dim = 4"):
        solve_grid(parse_potential("r**2", 4), 4, 5.0, 8, 2)
    with pytest.raises(ValueError, match="not finite at .* grid nodes"):
        solve_grid(parse_potential("log(x0)", 2), 2, 5.0, 8, 2)
    with pytest.raises(ValueError, match="multiple of 4"):
        solve_reference(parse_potential("r**2", 2), 2, 5.0, 10, 2)


def test_benchmark_smoke(capsys):
    spec = importlib.util.spec_from_file_location("reference_grid_bench", ROOT / "benchmarks" / "reference_grid.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--points", "8", "--problems", "oscillator2d"]) == 0
    out = capsys.readouterr().out
    assert "oscillator2d" in out and "command: python benchmarks/reference_grid.py --points 8" in out


"""3D hydrogen: closed-form eigenfunctions orthonormal on the spherical rule, Hψ = Eψ through the library's
operator, energies and degeneracies, against scipy's special functions."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import special

from neuralsvd.numerics.quadrature import spherical
from neuralsvd.numerics.sampling import RadialExponential
from neuralsvd.operators import Hydrogen3D
from neuralsvd.operators.hydrogen3d import hydrogen_states

F64 = torch.float64


def test_states_and_energies():
    states = hydrogen_states(14)
    assert [s[0] for s in states] == [1] + [2] * 4 + [3] * 9
    assert len(set(states)) == 14
    ev = Hydrogen3D().exact_eigenvalues(14)
    torch.testing.assert_close(ev, torch.tensor([-0.5] + [-1 / 8] * 4 + [-1 / 18] * 9, dtype=F64))
    # the paper's 2D convention H = -Δ - Z/r in 3D, and a charge: E = -Z² / (4 kinetic n²)
    assert Hydrogen3D(charge=2.0, kinetic=1.0).exact_eigenvalues(2).tolist() == [-1.0, -0.25]


@pytest.mark.parametrize("charge,kinetic", [(1.0, 0.5), (2.0, 1.0)])
def test_orthonormal_on_spherical_rule(charge, kinetic):
    op = Hydrogen3D(charge=charge, kinetic=kinetic)
    q = op.quadrature()
    psi = op.exact_eigenfunctions(q.points, 14)
    torch.testing.assert_close(q.inner(psi, psi), torch.eye(14, dtype=F64), rtol=0, atol=1e-8)


def test_spherical_rule_integrates_known_integrals():
    q = spherical([0.0, 1.0, 3.0, 10.0, 40.0], radial_nodes=20, polar_nodes=6, azimuths=12)
    r = q.points.norm(dim=1)
    assert float((q.weights * torch.exp(-r)).sum()) == pytest.approx(8 * math.pi, rel=1e-10)  # ∫ e^{-r} = 8π
    assert float((q.weights * q.points[:, 2] ** 2 * torch.exp(-r)).sum()) == pytest.approx(32 * math.pi, rel=1e-10)


def test_against_scipy_special_functions():
    """R_nl from scipy's genlaguerre and Y_lm from scipy's sph_harm (real combinations, up to sign)."""
    op = Hydrogen3D()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3, dtype=F64, generator=g) * 3
    r = x.norm(dim=1).numpy()
    theta = torch.arccos(x[:, 2] / x.norm(dim=1)).numpy()
    phi = torch.atan2(x[:, 1], x[:, 0]).numpy()
    ours = op.exact_eigenfunctions(x, 14).numpy()
    for j, (n, l, m) in enumerate(hydrogen_states(14)):
        rho = 2 * r / n
        radial = (math.sqrt((2 / n) ** 3 * math.factorial(n - l - 1) / (2 * n * math.factorial(n + l)))
                  * special.eval_genlaguerre(n - l - 1, 2 * l + 1, rho) * rho**l * torch.exp(torch.tensor(-rho / 2)).numpy())
        y = special.sph_harm_y(l, abs(m), theta, phi)
        real = y.real if m == 0 else math.sqrt(2) * (y.real if m > 0 else y.imag)
        ref = radial * real
        sign = 1.0 if (ours[:, j] * ref).sum() >= 0 else -1.0
        assert abs(ours[:, j] - sign * ref).max() < 1e-12


@pytest.mark.parametrize("model_output", ["psi", "ratio"])
def test_h_psi_equals_e_psi_through_operator(model_output):
    """T ψ = scale (shift - E) ψ by the operator's own Laplacian (nested jvp), away from the nucleus."""
    op = Hydrogen3D(scale=100.0, shift=0.1, sampler=RadialExponential(3, 2.0), model_output=model_output)
    g = torch.Generator().manual_seed(1)
    x = op.sample(100, g, F64)
    x = x[x.norm(dim=1) > 0.1]

    def f(y):  # the model of the exact states: ψ over the operator's map to ψ (sqrt(p) and the cusp factor)
        return op.exact_eigenfunctions(y, 14) / op.eigenfunctions_from_model(torch.ones(y.shape[0], 1, dtype=y.dtype), y)

    fx, tfx = op.apply(f, x)
    lam = op.scale * (op.shift - op.exact_eigenvalues(14))
    resid = (tfx - lam * fx).abs().amax(0) / (lam.abs() * fx.abs().amax(0))
    assert resid.max() < 1e-10  # measured ~1e-15
    assert torch.allclose(op.eigenvalues_from_learned(op.scale * (op.shift - op.exact_eigenvalues(3))),
                          op.exact_eigenvalues(3))

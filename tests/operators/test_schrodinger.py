"""Schrödinger operators (closed-form spectra, eigenfunctions, importance-sampled Tf) and samplers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from neuralsvd.numerics.quadrature import Quadrature, box, gauss_legendre, polar
from neuralsvd.numerics.sampling import (
    Gaussian,
    Index,
    Mixture,
    RadialExponential,
    Sampler,
    TruncatedGaussian,
    UniformBox,
)
from neuralsvd.operators import HarmonicOscillator, Hydrogen2D, Schrodinger

F64 = torch.float64


# --- helpers ------------------------------------------------------------------------------------------

def _importance_function(op, num_modes):
    """The model of the exact states: ``ψ / sqrt(p)`` (the ratio output), divided by the cusp factor
    ``J`` where the operator found charges (``eigenfunctions_from_model`` maps it back to ``ψ``)."""
    def f(x):
        weight = op.eigenfunctions_from_model(torch.ones(x.shape[0], 1, dtype=x.dtype), x)  # (n, 1)
        return op.exact_eigenfunctions(x, num_modes) / weight
    return f


def _hydrogen_points(n, charge, seed=0, rmin=0.2, rmax=15.0):
    g = torch.Generator().manual_seed(seed)
    r = rmin + (rmax - rmin) * torch.rand(n, dtype=F64, generator=g)
    th = 2 * math.pi * torch.rand(n, dtype=F64, generator=g)
    return torch.stack([r * th.cos(), r * th.sin()], 1) / charge


def _oscillator_points(n, dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 2 * torch.randn(n, dim, dtype=F64, generator=g)


def _relative_residual(op, f, x, lam):
    fx, tfx = op.apply(f, x)
    assert not tfx.requires_grad
    return ((tfx - lam * fx).norm(dim=0) / (lam * fx).norm(dim=0)).max().item()


def _brute_force_energies(omega, count, nmax=12):
    energies = sorted(sum(w * (2 * k + 1) for w, k in zip(omega, idx))
                      for idx in itertools.product(range(nmax), repeat=len(omega)))
    return torch.tensor(energies[:count], dtype=F64)


OSCILLATORS = [
    pytest.param({"dim": 1}, 6, id="1d"),
    pytest.param({"dim": 2}, 10, id="2d"),
    pytest.param({"dim": 3, "omega": [1.0, 1.5, 2.0]}, 8, id="3d-aniso"),
]


# --- hydrogen -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("charge", [1.0, 2.0])
def test_hydrogen_energies_and_degeneracy(charge):
    op = Hydrogen2D(charge=charge)
    expected = [-charge**2 / (2 * n + 1) ** 2 for n in range(4) for _ in range(2 * n + 1)]
    torch.testing.assert_close(op.exact_eigenvalues(16), torch.tensor(expected, dtype=F64), rtol=1e-15, atol=0)
    torch.testing.assert_close(op.exact_eigenvalues(9), torch.tensor(expected[:9], dtype=F64), rtol=1e-15, atol=0)


@pytest.mark.parametrize("charge", [1.0, 2.0])
def test_hydrogen_eigenfunctions_orthonormal_under_quadrature(charge):
    op = Hydrogen2D(charge=charge)
    q = op.quadrature()
    psi = op.exact_eigenfunctions(q.points, 16)
    torch.testing.assert_close(q.inner(psi, psi), torch.eye(16, dtype=F64), rtol=0, atol=1e-6)


def test_hydrogen_ground_state_closed_form():
    """n = 0 solves -Δψ - Z/r ψ = -Z² ψ with ψ = c e^{-Zr}; ∫ c² e^{-2Zr} 2πr dr = 1 gives c = Z sqrt(2/π)."""
    op = Hydrogen2D(charge=1.5)
    x = _hydrogen_points(20, 1.0, seed=3, rmin=0.1, rmax=6.0)
    r = x.norm(dim=1)
    psi0 = op.exact_eigenfunctions(x, 1)[:, 0]
    z = 1.5
    expected = z * math.sqrt(2 / math.pi) * torch.exp(-z * r)
    torch.testing.assert_close(psi0.abs(), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("charge,scale,shift", [(1.0, 100.0, 0.0), (2.0, 3.0, 0.5)])
def test_hydrogen_eigen_equation(charge, scale, shift):
    op = Hydrogen2D(charge=charge, scale=scale, shift=shift)
    L = 16
    energies = op.exact_eigenvalues(L)
    lam = scale * (shift - energies)
    torch.testing.assert_close(op.eigenvalues_from_learned(lam), energies, rtol=1e-13, atol=1e-13)
    x = _hydrogen_points(24, charge)
    assert bool((x.norm(dim=1) > 0.1 / charge).all())
    assert _relative_residual(op, _importance_function(op, L), x, lam) < 1e-8


@pytest.mark.parametrize("charge", [1.0, 2.0])
def test_hydrogen_finite_difference_laplacian_agrees_loosely(charge):
    op_exact = Hydrogen2D(charge=charge)
    op_fd = Hydrogen2D(charge=charge, laplacian="fd", fd_eps=1e-2)
    f = _importance_function(op_exact, 16)
    x = _hydrogen_points(40, charge, seed=1, rmin=0.5)
    _, t_exact = op_exact.apply(f, x)
    _, t_fd = op_fd.apply(f, x)
    rel = ((t_fd - t_exact).norm(dim=0) / t_exact.norm(dim=0)).max().item()
    assert rel < 2e-2
    assert rel > 1e-9  # it really is a different (approximate) method


# --- harmonic oscillator ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,L", OSCILLATORS)
def test_oscillator_energies_match_enumeration(kwargs, L):
    op = HarmonicOscillator(**kwargs)
    omega = kwargs.get("omega", [1.0] * kwargs["dim"])
    torch.testing.assert_close(op.exact_eigenvalues(L), _brute_force_energies(omega, L), rtol=1e-15, atol=0)
    # every quantum-number tuple has the energy Σ ω_i (2 n_i + 1), and they are distinct
    idx = op.quantum_numbers(L)
    assert len(set(idx)) == L
    for i, e in zip(idx, op.exact_eigenvalues(L).tolist()):
        assert e == pytest.approx(sum(w * (2 * k + 1) for w, k in zip(omega, i)), rel=1e-15)


def test_oscillator_2d_spectrum_and_default_shift():
    op = HarmonicOscillator(2)
    assert op.exact_eigenvalues(10).tolist() == [2.0, 4.0, 4.0, 6.0, 6.0, 6.0, 8.0, 8.0, 8.0, 8.0]
    assert op.shift == 16.0  # the authors' T = -H + 16


@pytest.mark.parametrize("kwargs,L", [
    OSCILLATORS[0], OSCILLATORS[1],
    pytest.param({"dim": 3, "omega": [1.0, 1.5, 2.0]}, 8, id="3d-aniso"),
    pytest.param({"dim": 3}, 8, id="3d-iso"),
])
def test_oscillator_eigenfunctions_orthonormal_under_quadrature(kwargs, L):
    op = HarmonicOscillator(**kwargs)
    q = op.quadrature()
    psi = op.exact_eigenfunctions(q.points, L)
    torch.testing.assert_close(q.inner(psi, psi), torch.eye(L, dtype=F64), rtol=0, atol=1e-6)


def test_oscillator_3d_anisotropic_eigenfunctions_orthonormal_under_fine_rule():
    """The closed forms themselves are right: a per-axis rule scaled by 1/sqrt(ω_i) integrates them."""
    op = HarmonicOscillator(3, omega=[1.0, 1.5, 2.0])
    ts, ws = zip(*[gauss_legendre([-8 / math.sqrt(w), 0.0, 8 / math.sqrt(w)], 24) for w in op.omega])
    grids, weights = torch.meshgrid(*ts, indexing="ij"), torch.meshgrid(*ws, indexing="ij")
    q = Quadrature(torch.stack([g.reshape(-1) for g in grids], 1), torch.stack([w.reshape(-1) for w in weights], 1).prod(1))
    psi = op.exact_eigenfunctions(q.points, 8)
    torch.testing.assert_close(q.inner(psi, psi), torch.eye(8, dtype=F64), rtol=0, atol=1e-9)


@pytest.mark.parametrize("dim,omega,tol", [(10, 1.0, 5e-4), (6, [1.0, 1.2, 1.4, 1.6, 1.8, 2.0], 5e-4),
                                            (32, 1.0, 3e-3)])
def test_oscillator_qmc_rule_above_3d(dim, omega, tol):
    """d > 3: scrambled Sobol points from |ψ_0|²; the ground state and first shell are orthonormal to the
    rule's stated accuracy (measured: 1.3e-4 – 2e-4 in d = 10, ~1e-3 in d = 32), unbiased over scramblings."""
    op = HarmonicOscillator(dim, omega)
    q = op.quadrature()
    assert len(q) == HarmonicOscillator.QMC_POINTS and q.points.shape[1] == dim
    psi = op.exact_eigenfunctions(q.points, dim + 1)
    torch.testing.assert_close(q.inner(psi, psi), torch.eye(dim + 1, dtype=F64), rtol=0, atol=tol)


def test_gaussian_qmc_integrates_gaussian_moments():
    """∫ x_0² x_1² e^{-|x|²} dx over R^5 = π^{5/2} / 4, at five scramblings: mean and spread."""
    from neuralsvd.numerics.quadrature import gaussian_qmc

    values = []
    for seed in range(5):
        q = gaussian_qmc([0.8] * 5, 2**12, seed)
        x = q.points
        values.append(float((q.weights * x[:, 0] ** 2 * x[:, 1] ** 2 * torch.exp(-(x * x).sum(1))).sum()))
    exact = math.pi**2.5 / 4
    assert max(abs(v - exact) for v in values) < 1e-2 * exact
    assert len(set(values)) == 5  # independent scramblings


@pytest.mark.parametrize("kwargs,L", OSCILLATORS + [pytest.param({"dim": 2, "scale": 2.5, "shift": 11.0}, 10, id="2d-scaled")])
def test_oscillator_eigen_equation(kwargs, L):
    op = HarmonicOscillator(**kwargs)
    lam = op.scale * (op.shift - op.exact_eigenvalues(L))
    torch.testing.assert_close(op.eigenvalues_from_learned(lam), op.exact_eigenvalues(L), rtol=1e-13, atol=1e-13)
    x = _oscillator_points(30, op.dim)
    assert _relative_residual(op, _importance_function(op, L), x, lam) < 1e-8


@pytest.mark.parametrize("kwargs,L", OSCILLATORS)
def test_oscillator_finite_difference_laplacian_agrees_loosely(kwargs, L):
    op_exact = HarmonicOscillator(**kwargs)
    op_fd = HarmonicOscillator(**kwargs, laplacian="fd", fd_eps=1e-2)
    f = _importance_function(op_exact, L)
    x = _oscillator_points(30, op_exact.dim, seed=2)
    _, t_exact = op_exact.apply(f, x)
    _, t_fd = op_fd.apply(f, x)
    rel = ((t_fd - t_exact).norm(dim=0) / t_exact.norm(dim=0)).max().item()
    assert 1e-9 < rel < 1e-3


def _psi_function(op, num_modes):
    """The model of a ``model_output="psi"`` operator: the exact ``ψ`` itself (over the cusp factor, if any)."""
    return _importance_function(op, num_modes)


@pytest.mark.parametrize("sampler", [None, Mixture([Gaussian(2, 1.0), RadialExponential(2, 3.0)])],
                         ids=["default", "gauss+exp-mixture"])
def test_hydrogen_eigen_equation_psi_output(sampler):
    """``model_output="psi"``: the operator returns ``(ψ/√q, Tψ/√q)`` (``q`` its draws' density), so Tf = λ f for
    the exact ψ, and the model maps back to ψ."""
    op = Hydrogen2D(sampler=sampler, model_output="psi")
    L = 16
    lam = op.scale * (op.shift - op.exact_eigenvalues(L))
    x = _hydrogen_points(24, 1.0)
    assert _relative_residual(op, _psi_function(op, L), x, lam) < 1e-8
    fx, _ = op.apply(_psi_function(op, L), x)
    psi = op.exact_eigenfunctions(x, L)
    torch.testing.assert_close(fx, psi * torch.exp(-0.5 * op.draws.log_prob(x)).unsqueeze(-1), rtol=1e-12, atol=0)
    torch.testing.assert_close(op.eigenfunctions_from_model(_psi_function(op, L)(x), x), psi)


@pytest.mark.parametrize("kwargs,L", OSCILLATORS)
def test_oscillator_eigen_equation_psi_output(kwargs, L):
    op = HarmonicOscillator(**kwargs, model_output="psi")
    lam = op.scale * (op.shift - op.exact_eigenvalues(L))
    assert _relative_residual(op, _psi_function(op, L), _oscillator_points(30, op.dim), lam) < 1e-8


def test_psi_and_ratio_outputs_give_the_same_estimates():
    """For the same ψ (a model in each parametrization) both return identical (f, Tf) batches."""
    sampler = Mixture([Gaussian(2, 1.0), Gaussian(2, 3.0)], [0.4, 0.6])
    kw = {"potential": lambda x: (x * x).sum(1) + 0.3 * x[:, 0], "dim": 2, "kinetic": 0.5, "scale": 2.0, "shift": 1.5,
              "sampler": sampler}
    ratio, psi_op = Schrodinger(**kw), Schrodinger(**kw, model_output="psi")

    def psi(x):
        return torch.stack([torch.exp(-0.5 * (x * x).sum(1)) * x[:, 0], torch.exp(-0.3 * (x * x).sum(1))], 1)

    x = _oscillator_points(7, 2, seed=3)
    f_psi, t_psi = psi_op.apply(psi, x)
    f_ratio, t_ratio = ratio.apply(lambda y: psi(y) / torch.exp(0.5 * sampler.log_prob(y)).unsqueeze(-1), x)
    torch.testing.assert_close(f_psi, f_ratio, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(t_psi, t_ratio, rtol=1e-9, atol=1e-11)


def test_psi_output_keeps_the_graph():
    op = Hydrogen2D(model_output="psi")
    w = torch.tensor(2.0, dtype=F64, requires_grad=True)
    fx, _ = op.apply(lambda x: w * op.exact_eigenfunctions(x, 3), _hydrogen_points(5, 1.0))
    assert fx.requires_grad
    (g,) = torch.autograd.grad(fx.sum(), w)
    assert g.item() == pytest.approx((fx / w).sum().item(), rel=1e-12)


def test_schrodinger_custom_sampler_importance_identity():
    """Tf with a non-default sampler equals scale(shift f + Δ(√p f)/√p - V f) computed by autograd."""
    sampler = Mixture([Gaussian(2, 1.0), Gaussian(2, 3.0)], [0.4, 0.6])
    op = Schrodinger(lambda x: (x * x).sum(1) + 0.3 * x[:, 0], 2, kinetic=0.5, scale=2.0, shift=1.5, sampler=sampler)

    def f(x):  # arbitrary smooth (n, 2) function
        return torch.stack([torch.sin(x[:, 0]) * torch.exp(-0.1 * x[:, 1] ** 2), x[:, 0] * x[:, 1] + 1.0], 1)

    x = _oscillator_points(6, 2, seed=5)
    _, tfx = op.apply(f, x)
    expected = torch.empty(6, 2, dtype=F64)
    for i in range(6):
        for l in range(2):
            def psi(xi, l=l):
                return torch.exp(0.5 * sampler.log_prob(xi[None]))[0] * f(xi[None])[0, l]
            lap = torch.trace(torch.autograd.functional.hessian(psi, x[i]))
            sqrt_p = torch.exp(0.5 * sampler.log_prob(x[i : i + 1]))[0]
            v = (x[i] ** 2).sum() + 0.3 * x[i, 0]
            fi = f(x[i : i + 1])[0, l]
            expected[i, l] = 2.0 * (1.5 * fi + 0.5 * lap / sqrt_p - v * fi)
    torch.testing.assert_close(tfx, expected, rtol=1e-10, atol=1e-10)


# --- samplers: densities ---------------------------------------------------------------------------------

def _integral(sampler, quad):
    return (quad.weights * torch.exp(sampler.log_prob(quad.points))).sum().item()


def test_gaussian_log_prob_matches_scipy_and_integrates_to_one():
    s = Gaussian(2, std=[1.5, 0.7], mean=0.3)
    x = torch.randn(10, 2, dtype=F64)
    ref = stats.multivariate_normal(mean=[0.3, 0.3], cov=np.diag([1.5**2, 0.7**2])).logpdf(x.numpy())
    np.testing.assert_allclose(s.log_prob(x).numpy(), ref, rtol=1e-12)
    assert _integral(s, box([12.0] * 2, 8, 16)) == pytest.approx(1.0, abs=1e-10)


def test_truncated_gaussian_log_prob_matches_scipy_and_integrates_to_one():
    s = TruncatedGaussian(2, std=2.0, bound=1.5)
    x = 3 * torch.rand(10, 2, dtype=F64) - 1.5
    ref = stats.truncnorm(-0.75, 0.75, scale=2.0).logpdf(x.numpy()).sum(1)
    np.testing.assert_allclose(s.log_prob(x).numpy(), ref, rtol=1e-12)
    assert _integral(s, box([1.5] * 2, 4, 16)) == pytest.approx(1.0, abs=1e-12)
    outside = torch.tensor([[1.6, 0.0], [0.0, -2.0]], dtype=F64)
    assert bool(torch.isneginf(s.log_prob(outside)).all())


def test_uniform_box_log_prob_integrates_to_one():
    s = UniformBox(3, 2.5)
    assert _integral(s, box([2.5] * 3, 2, 4)) == pytest.approx(1.0, abs=1e-12)
    assert s.log_prob(torch.zeros(1, 3, dtype=F64)).item() == pytest.approx(-3 * math.log(5.0), rel=1e-14)
    assert bool(torch.isneginf(s.log_prob(torch.tensor([[0.0, 2.6, 0.0]], dtype=F64))).all())


def test_mixture_log_prob_matches_scipy_and_integrates_to_one():
    s = Mixture([Gaussian(2, 2.0), Gaussian(2, 16.0)], weights=[1.0, 3.0])
    x = 10 * torch.randn(10, 2, dtype=F64)
    ref = np.log(0.25 * stats.multivariate_normal(cov=4 * np.eye(2)).pdf(x.numpy())
                 + 0.75 * stats.multivariate_normal(cov=256 * np.eye(2)).pdf(x.numpy()))
    np.testing.assert_allclose(s.log_prob(x).numpy(), ref, rtol=1e-12)
    assert _integral(s, box([130.0] * 2, 26, 16)) == pytest.approx(1.0, abs=1e-8)


@pytest.mark.parametrize("dim,scale", [(1, 0.7), (2, 3.0), (3, 1.5)])
def test_radial_exponential_log_prob_integrates_to_one(dim, scale):
    s = RadialExponential(dim, scale)
    # radial integral ∫ p(r) |S^{d-1}| r^{d-1} dr on Gauss–Legendre panels
    t, w = gauss_legendre([scale * e for e in (0, 1, 4, 10, 25, 60)], 32)
    surface = 2 * math.pi ** (dim / 2) / math.gamma(dim / 2)
    x = torch.zeros(t.shape[0], dim, dtype=F64)
    x[:, 0] = t
    total = (w * surface * t ** (dim - 1) * torch.exp(s.log_prob(x))).sum().item()
    assert total == pytest.approx(1.0, abs=1e-10)
    if dim == 2:
        assert _integral(s, polar([0, 1, 5, 20, 60, 200], radial_nodes=24, angles=8)) == pytest.approx(1.0, abs=1e-10)


def test_radial_exponential_samples_follow_gamma_radius(gen):
    s = RadialExponential(2, 2.5)
    x = s.sample(20000, gen, F64)
    r = x.norm(dim=1).numpy()
    assert stats.kstest(r, stats.gamma(a=2, scale=2.5).cdf).pvalue > 1e-3
    angle = np.arctan2(x[:, 1].numpy(), x[:, 0].numpy())
    assert stats.kstest(angle, stats.uniform(-math.pi, 2 * math.pi).cdf).pvalue > 1e-3


# --- samplers: derivatives of u = ½ log p ----------------------------------------------------------------

def _autograd_half_log_density(sampler, x):
    return Sampler.half_log_density_derivatives(sampler, x)  # the generic autograd path


def test_gaussian_half_log_density_closed_form():
    std = torch.tensor([1.5, 0.7, 2.0], dtype=F64)
    mean = torch.tensor([-0.4, 0.0, 1.3], dtype=F64)
    s = Gaussian(3, std=std.tolist(), mean=mean.tolist())
    x = torch.randn(8, 3, dtype=F64)
    u, du, lap = s.half_log_density_derivatives(x)
    torch.testing.assert_close(u, 0.5 * s.log_prob(x))
    torch.testing.assert_close(du, -(x - mean) / (2 * std**2), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(lap, torch.full((8,), -(1 / (2 * std**2)).sum().item(), dtype=F64), rtol=1e-14, atol=0)
    for a, b in zip((u, du, lap), _autograd_half_log_density(s, x)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_truncated_gaussian_half_log_density_inside_box():
    s = TruncatedGaussian(2, std=2.0, bound=3.0)
    x = 5.8 * torch.rand(8, 2, dtype=F64) - 2.9
    u, du, lap = s.half_log_density_derivatives(x)
    torch.testing.assert_close(u, 0.5 * s.log_prob(x))
    torch.testing.assert_close(du, -x / 8.0, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(lap, torch.full((8,), -0.25, dtype=F64))
    for a, b in zip((u, du, lap), _autograd_half_log_density(s, x)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_radial_exponential_half_log_density_matches_autograd():
    s = RadialExponential(3, 1.7)
    x = 3 * torch.randn(8, 3, dtype=F64)
    for a, b in zip(s.half_log_density_derivatives(x), _autograd_half_log_density(s, x)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_uniform_box_half_log_density():
    s = UniformBox(2, 1.0)
    x = 2 * torch.rand(5, 2, dtype=F64) - 1
    u, du, lap = s.half_log_density_derivatives(x)
    torch.testing.assert_close(u, torch.full((5,), -0.5 * math.log(4.0), dtype=F64))
    assert du.abs().max().item() == 0 and lap.abs().max().item() == 0


def _mixture_closed_form(weights, stds, x):
    """u, ∇u, Δu of ½ log Σ π_k N(0, σ_k² I) from the component densities (float64)."""
    d = x.shape[1]
    r2 = (x * x).sum(1)
    p = torch.zeros_like(r2)
    gp = torch.zeros_like(x)
    lp = torch.zeros_like(r2)
    for w, s in zip(weights, stds):
        nk = w * torch.exp(-0.5 * r2 / s**2) / (2 * math.pi * s**2) ** (d / 2)
        p = p + nk
        gp = gp - x / s**2 * nk[:, None]
        lp = lp + (r2 / s**4 - d / s**2) * nk
    return 0.5 * torch.log(p), 0.5 * gp / p[:, None], 0.5 * (lp / p - (gp * gp).sum(1) / p**2)


def test_mixture_half_log_density_matches_closed_form():
    s = Mixture([Gaussian(2, 1.0), Gaussian(2, 4.0)], [0.3, 0.7])
    x = 3 * torch.randn(12, 2, dtype=F64)
    for a, b in zip(s.half_log_density_derivatives(x), _mixture_closed_form([0.3, 0.7], [1.0, 4.0], x)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_mixture_float32_far_tail_is_finite_and_accurate():
    s = Mixture([Gaussian(2, 2.0), Gaussian(2, 16.0)])
    ang = torch.tensor([0.0, 0.7, 2.0, 4.0])
    x64 = 200 * torch.stack([ang.cos(), ang.sin()], 1).double()
    u, du, lap = s.half_log_density_derivatives(x64.float())
    for t in (u, du, lap):
        assert t.dtype == torch.float32 and bool(torch.isfinite(t).all())
    # far out the wide component dominates completely: ∇u = -x/(2·256), Δu = -2/(2·256)
    torch.testing.assert_close(du.double(), -x64 / 512, rtol=1e-5, atol=0)
    torch.testing.assert_close(lap.double(), torch.full((4,), -1 / 256, dtype=F64), rtol=1e-4, atol=0)
    ref_u = 0.5 * (math.log(0.5) - math.log(2 * math.pi * 256) - 0.5 * 200**2 / 256)
    torch.testing.assert_close(u.double(), torch.full((4,), ref_u, dtype=F64), rtol=1e-6, atol=0)


def test_mixture_float32_tail_through_schrodinger_operator_is_finite():
    op = Hydrogen2D(sampler=Mixture([Gaussian(2, 2.0), Gaussian(2, 16.0)]))
    x = torch.tensor([[200.0, 0.0], [0.0, -150.0], [1.0, 1.0]], dtype=torch.float32)

    def f(y):
        return torch.stack([torch.exp(-0.01 * (y * y).sum(1)), torch.ones(y.shape[0], dtype=y.dtype)], 1)

    _fx, tfx = op.apply(f, x)
    assert bool(torch.isfinite(tfx).all())


# --- samplers: draws ------------------------------------------------------------------------------------

def _assert_moments(x, mean, std, k=4.0):
    n = x.shape[0]
    mean, std = torch.as_tensor(mean, dtype=F64), torch.as_tensor(std, dtype=F64)
    assert bool(((x.mean(0) - mean).abs() < k * std / math.sqrt(n)).all()), (x.mean(0), mean)
    # var of the sample std ≈ σ²(κ - 1)/(4n); use the sample fourth moment for κ
    kurt = (((x - x.mean(0)) / x.std(0)) ** 4).mean(0)
    se_std = std * torch.sqrt((kurt - 1) / (4 * n))
    assert bool(((x.std(0) - std).abs() < k * se_std).all()), (x.std(0), std)


def test_gaussian_samples(gen):
    s = Gaussian(3, std=[1.0, 2.0, 3.0], mean=0.5)
    x = s.sample(20000, gen, dtype=F64)
    assert x.shape == (20000, 3) and x.dtype == F64
    _assert_moments(x, [0.5] * 3, [1.0, 2.0, 3.0])


def test_truncated_gaussian_samples(gen):
    s = TruncatedGaussian(2, std=2.0, bound=1.5)
    x = s.sample(20000, gen, dtype=F64)
    assert x.abs().max().item() <= 1.5
    _assert_moments(x, [0.0, 0.0], [stats.truncnorm(-0.75, 0.75, scale=2.0).std()] * 2)


def test_uniform_box_samples(gen):
    s = UniformBox(2, 3.0)
    x = s.sample(20000, gen, dtype=F64)
    assert x.abs().max().item() <= 3.0
    _assert_moments(x, [0.0, 0.0], [3.0 / math.sqrt(3)] * 2)


def test_mixture_samples(gen):
    s = Mixture([Gaussian(1, 1.0), Gaussian(1, 5.0)], weights=[0.75, 0.25])
    x = s.sample(40000, gen, dtype=F64)
    _assert_moments(x, [0.0], [math.sqrt(0.75 * 1 + 0.25 * 25)])
    # fraction beyond |x| > 4 against the closed form
    frac = (x.abs() > 4).double().mean().item()
    expected = 0.75 * 2 * stats.norm.sf(4.0) + 0.25 * 2 * stats.norm.sf(4.0 / 5.0)
    assert abs(frac - expected) < 4 * math.sqrt(expected * (1 - expected) / 40000)


def test_sampler_reproducible_with_generator():
    s = Gaussian(2)
    a = s.sample(5, torch.Generator().manual_seed(3), dtype=F64)
    b = s.sample(5, torch.Generator().manual_seed(3), dtype=F64)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert s.sample(5).dtype == torch.get_default_dtype()


def test_index_sampler(gen):
    s = Index(10)
    x = s.sample(25, gen)
    assert x.dtype == torch.int64 and sorted(x.tolist()) == list(range(10))  # the whole population
    assert len(set(s.sample(6, gen).tolist())) == 6
    y = Index(10, replacement=True).sample(1000, gen)
    assert y.shape == (1000,) and 0 <= y.min().item() and y.max().item() <= 9
    counts = torch.bincount(y, minlength=10).double()
    assert stats.chisquare(counts.numpy()).pvalue > 1e-4

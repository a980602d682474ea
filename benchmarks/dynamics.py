"""Slow modes from trajectories: NeuralSVD (``NeuralKoopman``) against deeptime and kooplearn.

One command trains every method on every system, scores them against references that do not come from
any of the methods, and prints one row per (system, method) plus the command that made the table::

    python benchmarks/dynamics.py --seeds 0 1 2 3 4 --seeds-for contrastive=1 neuralsvd-default=1 \\
        --json docs/figures/dynamics.json --plot docs/figures/dynamics.png

Systems (generated on the fly, nothing is downloaded; the data of a system is the same for every seed,
the seed changes the network initialization and the minibatches):

* ``ou``: 2D Ornstein–Uhlenbeck ``dX = -diag(θ) X dt + √2 dW``, θ = (1, 1.3), stationary N(0, I), sampled
  exactly (AR(1)); eigenvalues ``exp(-τ Σ k_i θ_i)``, eigenfunctions products of normalized Hermite
  polynomials ``He_k / √k!`` (orthonormal in L²(μ)), 5 modes.
* ``quadruple-well``: deeptime's ``quadruple_well`` (``V = Σ (x_i² - 1)²``, β = 4); separable, so its
  generator eigenvalues are sums ``λ_i + λ_j`` of the 1D double well's, computed here by
  :func:`generator_1d_eigenvalues`; 3 slow modes, the first two exactly degenerate.
* ``prinz``: deeptime's ``prinz_potential`` (1D, kT = 1); reference from :func:`generator_1d_eigenvalues`
  (cross-checked against kooplearn's Galerkin ``compute_prinz_potential_eig`` when kooplearn is
  installed); 3 modes.
* ``double-well``: the library preset ``langevin-double-well`` (2D overdamped Langevin) with its own
  generator reference; 3 modes.
* ``sqrt-model``: deeptime's ``sqrt_model`` (hidden 2-state chain, ``P = [[.95, .05], [.05, .95]]``,
  emissions not linearly separable), lag 1, 1 mode. Its only non-trivial singular value is
  ``σ₁ = 0.9 · E_μ[q²]`` with ``q(y) = P(s=0|y) - P(s=1|y)`` (computed here by Monte Carlo from the
  emission model), so VAMP-2 ≤ 1 + σ₁² ≈ 1.81.
* ``logistic``: kooplearn's noisy logistic map ``x ↦ (4x(1-x) + ξ) mod 1``, ξ ∝ cos^{2M}(πξ) on
  [-½, ½], M = 10 (kooplearn ≥ 2 names it M; the DPNets paper, kooplearn 1.x and the NeuralKoopmanSVD
  repository call the same noise N = 2M = 20). The transfer operator has rank 2M + 1 and is not normal;
  its eigenvalues are those of the (2M+1)² matrix :func:`logistic_transition_matrix`. Inputs are
  embedded as (sin 2πx, cos 2πx) for every method (the notebook's network); 8 learned functions (the
  notebook's 8 latent dimensions) beyond the constant. Scored by the directed
  Hausdorff distance from the top-3 estimated to the top-3 true eigenvalues (kooplearn's
  ``directed_hausdorff_distance``), with the eigenvalues of the least-squares operator on the learned
  features plus the constant, from exact (population) or held-out sample (empirical) covariances.

Methods (``--methods``): ``neuralsvd`` (``neuralsvd.estimators.NeuralKoopman`` with the shared budget),
``neuralsvd-default`` (``NeuralKoopman`` with its defaults), ``vampnet`` (deeptime's
``VAMPNet``, one MLP with L outputs), ``contrastive`` (kooplearn's ``SpectralContrastiveLoss`` on two
MLPs with L + 1 outputs), ``tica`` and ``vamp`` (deeptime, on a fixed Gaussian RBF basis). Neural methods
get the same hidden widths, data, batch size and number of passes over the training pairs. Peers whose
package is missing are skipped with a note.

Metrics per run: the method's own timescales (frames) against the reference, "right modes" (every one
of the L timescales, both lists sorted slowest first, within ``--tolerance`` of the reference: a missed
or swapped mode breaks the sorted match; sqrt-model: σ₁ within 2%; logistic: population Hausdorff
distance below 0.079), VAMP-2 of the learned features on held-out trajectories (covariances re-estimated
there, mean-free, the constant's +1 included as deeptime does; a method's second map, if it has one, at
``x_{t+τ}``), the subspace distance ``1 - tr(P̂P)/L`` to the true (left) singular functions (OU, double
well, logistic), eigenvalue Hausdorff distances (logistic), and the wall time of ``fit``. Study and
results: docs/dynamics-comparisons.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import scipy.integrate
import scipy.linalg
import scipy.special

Array = np.ndarray
FeatureMap = Callable[[Array], Array]  # x (n, d) -> (n, L)


def has(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


# --------------------------------------------------------------------------------------------------------
# Reference solvers
# --------------------------------------------------------------------------------------------------------


def _sqra_eigenvalues(potential: Callable[[Array], Array], diffusion: float, lo: float, hi: float, n: int,
                      k: int) -> Array:
    x = np.linspace(lo, hi, n)
    h = x[1] - x[0]
    u = potential(x) / diffusion
    up = diffusion / h**2 * np.exp(-(u[1:] - u[:-1]) / 2)  # rate i -> i+1
    down = diffusion / h**2 * np.exp((u[1:] - u[:-1]) / 2)  # rate i+1 -> i
    diag = -np.concatenate([up, [0.0]]) - np.concatenate([[0.0], down])
    # detailed balance makes D^{1/2} Q D^{-1/2} symmetric, with off-diagonal sqrt(up * down)
    vals = scipy.linalg.eigh_tridiagonal(diag, np.sqrt(up * down), eigvals_only=True, select="i",
                                         select_range=(n - k, n - 1))
    return vals[::-1].copy()


def generator_1d_eigenvalues(potential: Callable[[Array], Array], diffusion: float, lo: float, hi: float,
                             k: int, n: int = 4000) -> Array:
    """The ``k`` leading eigenvalues (0 first, then descending) of the generator
    ``L = -V'(x) d/dx + D d²/dx²`` of ``dX = -V'(X) dt + √(2D) dW`` on ``[lo, hi]`` (reflecting ends).

    Square-root approximation (reversible finite-volume rates ``D/h² exp(-ΔV/2D)``, second order in h)
    on ``n`` and ``2n`` points, Richardson-extrapolated. The Koopman eigenvalue at time t is ``exp(λ t)``.
    """
    coarse = _sqra_eigenvalues(potential, diffusion, lo, hi, n, k)
    fine = _sqra_eigenvalues(potential, diffusion, lo, hi, 2 * n, k)
    return (4 * fine - coarse) / 3


def timescales_from_rates(rates: Array, frame: float) -> Array:
    """Implied timescales in frames ``1 / (|λ| Δt)`` of generator eigenvalues ``λ < 0``, slowest first."""
    return np.sort(1.0 / (np.abs(np.asarray(rates)) * frame))[::-1]


def logistic_noise_feature(x: Array, i: int, m: int) -> Array:
    """``β_i(x) = c_i sin^{2M-i}(πx) cos^i(πx)``, normalized so that the noise density
    ``ρ(y - z) = Σ_i β_i(y) β_i(z)`` (binomial expansion of cos^{2M}(π(y - z)))."""
    c = np.sqrt(np.pi * scipy.special.binom(2 * m, i) / scipy.special.beta(m + 0.5, 0.5))
    return c * np.sin(np.pi * x) ** (2 * m - i) * np.cos(np.pi * x) ** i


def logistic_map(x: Array) -> Array:
    return 4.0 * x * (1.0 - x)


def _gauss_legendre_01(n: int) -> tuple[Array, Array]:
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return (nodes + 1) / 2, weights / 2


def logistic_transition_matrix(m: int, nodes: int = 400) -> Array:
    """``P_ij = ∫₀¹ β_i(x) β_j(4x(1-x)) dx``, (2M+1, 2M+1). The Koopman operator maps ``α_j = β_j∘T`` to
    ``Σ_i P_ij α_i``, so its non-zero eigenvalues are those of ``P``; the invariant density is
    ``Σ_i c_i β_i`` with ``c = Pᵀc``."""
    x, w = _gauss_legendre_01(nodes)
    beta = np.stack([logistic_noise_feature(x, i, m) for i in range(2 * m + 1)])  # (2M+1, n)
    alpha = np.stack([logistic_noise_feature(logistic_map(x), i, m) for i in range(2 * m + 1)])
    return (beta * w) @ alpha.T


def logistic_eigenvalues(m: int) -> Array:
    """Eigenvalues of the noisy logistic map's transfer operator, largest modulus first."""
    vals = np.linalg.eigvals(logistic_transition_matrix(m))
    return vals[np.argsort(-np.abs(vals), kind="stable")]


def logistic_invariant_density(m: int, x: Array) -> Array:
    p = logistic_transition_matrix(m)
    vals, vecs = np.linalg.eig(p.T)
    c = np.real(vecs[:, np.argmax(np.abs(vals))])
    dens = sum(ci * logistic_noise_feature(x, i, m) for i, ci in enumerate(c))
    xg, wg = _gauss_legendre_01(400)
    mass = sum(ci * (wg @ logistic_noise_feature(xg, i, m)) for i, ci in enumerate(c))
    return dens / mass


def logistic_left_singular_functions(m: int, count: int, points: int = 2000) -> tuple[Array, Array, Array]:
    """The transfer operator's leading singular values ``(count,)`` (the constant's 1 first) and left singular
    functions (orthonormal in L²(π)) on the midpoint grid ``x`` ``(points,)``: ``(sigma, x, functions
    (points, count))``, from the SVD of the kernel ``ρ(y - T(x))`` in π-weighted coordinates."""
    x = (np.arange(points) + 0.5) / points
    w = np.full(points, 1.0 / points)
    pi = logistic_invariant_density(m, x)
    z = (x[None, :] - logistic_map(x)[:, None] + 0.5) % 1 - 0.5
    kernel = np.cos(np.pi * z) ** (2 * m) * np.pi / scipy.special.beta(m + 0.5, 0.5)
    u, sigma, _ = np.linalg.svd(np.sqrt(w * pi)[:, None] * kernel * np.sqrt(w / pi)[None, :])
    return sigma[:count], x, u[:, :count] / np.sqrt(w * pi)[:, None]


def logistic_truncation_hausdorff(m: int, ranks: list[int], points: int = 1500) -> list[float]:
    """Directed Hausdorff distance (top 3) of the eigenvalues of the exact rank-``r`` SVD truncation
    ``Σ_{i<r} σ_i f_i ⊗ g_i`` (the constant is ``i = 0``): what a perfect rank-``r`` singular-function
    learner reaches with a read-out in its span."""
    x = (np.arange(points) + 0.5) / points
    w = np.full(points, 1.0 / points)
    pi = logistic_invariant_density(m, x)
    z = (x[None, :] - logistic_map(x)[:, None] + 0.5) % 1 - 0.5
    kernel = np.cos(np.pi * z) ** (2 * m) * np.pi / scipy.special.beta(m + 0.5, 0.5)
    a = np.sqrt(w * pi)[:, None] * kernel * np.sqrt(w / pi)[None, :]
    u = np.linalg.svd(a)[0]
    true = logistic_eigenvalues(m)[:3]
    out = []
    for r in ranks:
        vals = np.linalg.eigvals(u[:, :r].T @ a @ u[:, :r])
        out.append(directed_hausdorff(vals[np.argsort(-np.abs(vals))[:3]], true))
    return out


def sample_logistic_noise(m: int, size: int, rng: np.random.Generator, grid: int = 20001) -> Array:
    """ξ ∝ cos^{2M}(πξ) on [-½, ½] by inverting the tabulated CDF."""
    z = np.linspace(-0.5, 0.5, grid)
    pdf = np.cos(np.pi * z) ** (2 * m)
    cdf = np.concatenate([[0.0], np.cumsum((pdf[1:] + pdf[:-1]) / 2)])
    return np.interp(rng.uniform(size=size), cdf / cdf[-1], z)


def simulate_logistic(m: int, steps: int, rng: np.random.Generator, x0: float = 0.5) -> Array:
    noise = sample_logistic_noise(m, steps, rng)
    x = np.empty(steps + 1)
    x[0] = x0
    for t in range(steps):
        x[t + 1] = (logistic_map(x[t]) + noise[t]) % 1.0
    return x


def hermite_functions(x: Array, indices: list[tuple[int, ...]]) -> Array:
    """``Π_i He_{k_i}(x_i) / √(k_i!)`` for each multi-index, (n, len(indices)); orthonormal under N(0, I)."""
    out = np.ones((x.shape[0], len(indices)))
    for col, ks in enumerate(indices):
        for i, k in enumerate(ks):
            coef = np.zeros(k + 1)
            coef[k] = 1.0
            out[:, col] *= np.polynomial.hermite_e.hermeval(x[:, i], coef) / math.sqrt(math.factorial(k))
    return out


def ou_modes(theta: tuple[float, ...], count: int) -> tuple[list[tuple[int, ...]], Array]:
    """The ``count`` slowest non-constant multi-indices of an OU process with rates ``theta`` and their
    generator eigenvalues ``-Σ k_i θ_i``."""
    grid = np.array(np.meshgrid(*[np.arange(count + 1)] * len(theta), indexing="ij")).reshape(len(theta), -1).T
    rates = grid @ np.asarray(theta)
    order = np.argsort(rates, kind="stable")[1:count + 1]
    return [tuple(int(k) for k in grid[i]) for i in order], -rates[order]


def sqrt_model_sigma(samples: int = 1_000_000, seed: int = 12345) -> float:
    """``σ₁ = 0.9 E_μ[q²]`` of deeptime's sqrt_model at lag 1 (see the module docstring)."""
    rng = np.random.default_rng(seed)
    s = rng.integers(0, 2, samples)
    x = rng.normal(0.0, math.sqrt(30.0), samples)
    y = np.where(s == 0, 1.0, -1.0) + rng.normal(0.0, math.sqrt(0.015), samples) + np.sqrt(np.abs(x))
    z = y - np.sqrt(np.abs(x))
    q = np.tanh(((z + 1) ** 2 - (z - 1) ** 2) / (4 * 0.015))  # (L0 - L1)/(L0 + L1) with Gaussian likelihoods
    return 0.9 * float(np.mean(q**2))


# --------------------------------------------------------------------------------------------------------
# Scores shared by every method
# --------------------------------------------------------------------------------------------------------


def _inv_sqrt_psd(c: Array, rtol: float = 1e-10) -> Array:
    w, v = np.linalg.eigh(c)
    keep = w > rtol * w.max()
    return (v[:, keep] / np.sqrt(w[keep])) @ v[:, keep].T


def vamp2(features: FeatureMap, trajectories: list[Array], lag: int, lagged: FeatureMap | None = None) -> float:
    """VAMP-2 of feature maps on trajectories: ``1 + ‖C₀₀^{-½} C₀₁ C₁₁^{-½}‖²_F`` with mean-free
    covariances of the time-lagged pairs, ``features`` at ``x_t`` and ``lagged`` (default: the same map) at
    ``x_{t+τ}`` (the constant's +1 included, as deeptime's ``VAMP.score``)."""
    lagged = features if lagged is None else lagged
    x = np.concatenate([features(t[:-lag]) for t in trajectories]).astype(np.float64)
    y = np.concatenate([lagged(t[lag:]) for t in trajectories]).astype(np.float64)
    x -= x.mean(0)
    y -= y.mean(0)
    n = len(x)
    k = _inv_sqrt_psd(x.T @ x / n) @ (x.T @ y / n) @ _inv_sqrt_psd(y.T @ y / n)
    return 1.0 + float(np.sum(k**2))


def directed_hausdorff(pred: Array, reference: Array) -> float:
    """``max_a min_b |a - b|`` from the predicted to the reference points (kooplearn's definition)."""
    return float(np.max(np.min(np.abs(np.asarray(pred)[:, None] - np.asarray(reference)[None, :]), axis=1)))


def top_eigenvalues(c0: Array, c1: Array, k: int) -> Array:
    """The ``k`` largest-modulus eigenvalues of the least-squares operator ``C₀⁺ C₁``."""
    vals = np.linalg.eigvals(np.linalg.pinv(c0, hermitian=True) @ c1)
    return vals[np.argsort(-np.abs(vals), kind="stable")[:k]]


def _with_constant(f: Array) -> Array:
    return np.concatenate([np.ones((len(f), 1)), f], axis=1)


def logistic_population_covariances(features: FeatureMap, m: int, points: int = 2**12 + 1) -> tuple[Array, Array]:
    """Exact covariances ``C₀ = E_π[φφᵀ]`` and ``C₁ = E[φ(x_t) φ(x_{t+1})ᵀ]`` of ``φ = (1, features)`` for
    the noisy logistic map, by Romberg quadrature on [0, 1] (features see the raw x in [0, 1]).
    ``C₁`` factorizes through the separable noise kernel: ``(∫ π φ αᵀ)(∫ φ βᵀ)ᵀ``."""
    x = np.linspace(0.0, 1.0, points)
    dx = x[1] - x[0]
    pi = logistic_invariant_density(m, x)
    phi = _with_constant(features(x[:, None]).astype(np.float64))  # (n, L+1)
    alpha = np.stack([logistic_noise_feature(logistic_map(x), i, m) for i in range(2 * m + 1)], axis=1)
    beta = np.stack([logistic_noise_feature(x, i, m) for i in range(2 * m + 1)], axis=1)
    integ = lambda f: scipy.integrate.romb(f, dx=dx, axis=0)
    c0 = integ(phi[:, :, None] * phi[:, None, :] * pi[:, None, None])
    c1 = integ(phi[:, :, None] * alpha[:, None, :] * pi[:, None, None]) @ integ(phi[:, :, None] * beta[:, None, :]).T
    return c0, c1


def logistic_empirical_covariances(features: FeatureMap, trajectories: list[Array]) -> tuple[Array, Array]:
    x = _with_constant(np.concatenate([features(t[:-1]) for t in trajectories]).astype(np.float64))
    y = _with_constant(np.concatenate([features(t[1:]) for t in trajectories]).astype(np.float64))
    return x.T @ x / len(x), x.T @ y / len(x)


def subspace_distance(features: FeatureMap, truth: FeatureMap, rule: Array | tuple[Array, Array]) -> float:
    """``1 - tr(P̂P)/L`` between the spans of the (mean-free) learned functions and the true
    eigenfunctions in L²(μ) (neuralsvd.metrics' definition), on a quadrature ``(points, weights)`` of μ or
    on samples of μ (equal weights)."""
    points, weights = rule if isinstance(rule, tuple) else (rule, np.full(len(rule), 1.0 / len(rule)))
    f = features(points).astype(np.float64)
    f -= weights @ f
    t = truth(points)
    gram, cross = (f * weights[:, None]).T @ f, (f * weights[:, None]).T @ t
    overlap = np.trace(np.linalg.pinv(gram, hermitian=True) @ cross @ cross.T)
    return float(np.clip(1 - overlap / t.shape[1], 0.0, 1.0))


# --------------------------------------------------------------------------------------------------------
# Systems
# --------------------------------------------------------------------------------------------------------


@dataclass
class System:
    name: str
    train: list[Array]  # trajectories (T, d) seen by the methods (already embedded)
    test: list[Array]  # held-out trajectories
    lag: int  # frames
    modes: int  # L, beyond the constant
    reversible: bool
    timescales: Array | None = None  # (L,) reference, frames, slowest first
    eigenfunctions: FeatureMap | None = None  # orthonormal in L²(μ), same order as timescales
    stationary: Array | tuple[Array, Array] | None = None  # samples or a quadrature (points, weights) of μ
    embed: FeatureMap | None = None  # raw state -> method input (applied to train/test already)
    logistic_m: int | None = None
    true_eigenvalues: Array | None = None  # (k,) top eigenvalues by modulus (logistic)
    sigma: Array | None = None  # reference singular values (L,) when known
    right_by: str = "timescales"  # what "right modes" checks: "timescales", "sigma" or "hausdorff"
    hidden: tuple[int, ...] = (64, 64)
    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    peer_activation: str = "elu"  # the peers' MLP activation (NeuralKoopman keeps its own default, sin)
    notes: list[str] = field(default_factory=list)


def make_ou(scale: float) -> System:
    theta, frame, lag, modes = (1.0, 1.3), 0.5, 1, 5
    rng = np.random.default_rng(0)

    def simulate(count: int, frames: int) -> list[Array]:
        """``count`` trajectories started from the stationary law, exact transitions."""
        a = np.exp(-np.asarray(theta) * frame)
        x = np.empty((count, frames, 2))
        x[:, 0] = rng.standard_normal((count, 2))
        noise = rng.standard_normal((count, frames, 2)) * np.sqrt(1 - a**2)
        for t in range(1, frames):
            x[:, t] = a * x[:, t - 1] + noise[:, t]
        return list(x)

    count = max(int(100 * scale), 1)
    indices, rates = ou_modes(theta, modes)
    return System("ou", simulate(count, 500), simulate(count, 500), lag, modes, True,
                  timescales=timescales_from_rates(rates, frame),
                  eigenfunctions=lambda x: hermite_functions(x, indices),
                  stationary=rng.standard_normal((100_000, 2)), sigma=np.exp(rates * frame * lag),
                  hidden=(64, 64), epochs=10)


def make_quadruple_well(scale: float) -> System:
    from deeptime.data import quadruple_well

    frame, lag, modes = 1.0, 5, 3
    model = quadruple_well(h=1e-3, n_steps=1000)  # frame = 1 time unit; slowest timescale ≈ 34 frames
    count = max(int(20 * scale), 1)
    starts = np.random.default_rng(0).uniform(-1.5, 1.5, (2 * count, 2))
    train = list(model.trajectory(starts[:count], 5000, seed=1, n_jobs=1))
    test = list(model.trajectory(starts[count:], 5000, seed=2, n_jobs=1))
    lam = generator_1d_eigenvalues(lambda x: (x**2 - 1) ** 2, 0.25, -3.0, 3.0, 4)
    rates = np.sort((lam[:, None] + lam[None, :]).ravel())[::-1][1:modes + 1]
    return System("quadruple-well", train, test, lag, modes, True,
                  timescales=timescales_from_rates(rates, frame), sigma=np.exp(rates * frame * lag),
                  hidden=(64, 64), epochs=5)


PRINZ = lambda x: 4 * (x**8 + 0.8 * np.exp(-80 * x**2) + 0.2 * np.exp(-80 * (x - 0.5) ** 2)
                       + 0.5 * np.exp(-40 * (x + 0.5) ** 2))


def make_prinz(scale: float) -> System:
    from deeptime.data import prinz_potential

    frame, lag, modes = 5e-3, 10, 3
    model = prinz_potential(h=1e-5, n_steps=500)
    frames = max(int(50_000 * scale), 4 * lag)
    train = model.trajectory(np.zeros((1, 1)), frames, seed=1, n_jobs=1)
    test = model.trajectory(np.zeros((1, 1)), frames, seed=2, n_jobs=1)
    rates = generator_1d_eigenvalues(PRINZ, 1.0, -1.5, 1.5, modes + 1)[1:]
    notes = []
    if has("kooplearn"):
        from kooplearn.datasets import compute_prinz_potential_eig

        galerkin = np.log(np.abs(compute_prinz_potential_eig(1.0, math.sqrt(2.0), 1.0, num_components=modes + 1)))
        notes.append("kooplearn Galerkin generator eigenvalues / ours - 1: "
                     + " ".join(f"{g / r - 1:+.1e}" for g, r in zip(galerkin[1:], rates)))
    return System("prinz", [train], [test], lag, modes, True, timescales=timescales_from_rates(rates, frame),
                  sigma=np.exp(rates * frame * lag), hidden=(64, 64), epochs=10, notes=notes)


def make_double_well(scale: float) -> System:
    """The library's ``langevin-double-well`` system and generator reference (its preset's parameters) on
    10 + 10 trajectories of 10 000 frames (the preset trains on 100 of 40 000)."""
    import torch

    from neuralsvd.operators.dynamics import LangevinDoubleWell

    lag, modes, frames = 10, 3, max(int(10_000 * scale), 100)
    system = LangevinDoubleWell(barrier=1.0, stiffness=2.0, curvature=0.5, beta=1.0, dt=0.05, substeps=20)
    train = list(system.simulate(frames, 10, seed=0).astype(np.float64))
    test = list(system.simulate(frames, 10, seed=1).astype(np.float64))
    ref = system.reference(lag, modes + 1, points=128, half_width=4.0)
    rates = -np.asarray(ref.rates[1:modes + 1])
    rule = ref.rule()

    def truth(x: Array) -> Array:
        return ref.functions(torch.as_tensor(x, dtype=torch.float64), modes + 1)[:, 1:].numpy()

    return System("double-well", train, test, lag, modes, True, timescales=timescales_from_rates(rates, system.dt),
                  sigma=np.exp(rates * system.dt * lag), eigenfunctions=truth,
                  stationary=(rule.points.numpy(), rule.weights.numpy()), hidden=(64, 64), epochs=5,
                  notes=[(f"reference generator eigenvalues {np.round(-rates, 4).tolist()} "
                          f"(stated error {np.asarray(ref.error_estimate[1:modes + 1]).max():.1e})")])


def make_sqrt_model(scale: float) -> System:
    from deeptime.data import sqrt_model

    samples = max(int(10_000 * scale), 100)
    _, train = sqrt_model(samples, seed=0)
    _, test = sqrt_model(samples, seed=1)
    sigma = sqrt_model_sigma()
    return System("sqrt-model", [train], [test], 1, 1, True, sigma=np.array([sigma]),
                  timescales=np.array([-1.0 / math.log(sigma)]), right_by="sigma", hidden=(32, 32), epochs=20,
                  batch_size=64, lr=5e-3, notes=[f"reference sigma_1 = {sigma:.4f}, VAMP-2 ceiling = {1 + sigma**2:.4f}"])


def _sin_cos(x: Array) -> Array:
    return np.concatenate([np.sin(2 * np.pi * x), np.cos(2 * np.pi * x)], axis=1)


def make_logistic(scale: float) -> System:
    m, modes = 10, 8  # 8 learned functions (the notebook's 8 latent dimensions) and the constant
    rng = np.random.default_rng(0)
    samples = max(int(10_000 * scale), 100)
    train = simulate_logistic(m, samples, rng)[:, None]
    test = simulate_logistic(m, samples, rng)[:, None]
    sigma, grid, left = logistic_left_singular_functions(m, modes + 1)
    weights = logistic_invariant_density(m, grid) / len(grid)

    def truth(x: Array) -> Array:  # the left singular functions 1..L, interpolated from the grid
        return np.stack([np.interp(x[:, 0], grid, left[:, i]) for i in range(1, modes + 1)], axis=1)

    ranks = [modes - 1, modes, modes + 1, modes + 3]
    cut = logistic_truncation_hausdorff(m, [r + 1 for r in ranks])
    notes = [f"true sigma {np.round(sigma[1:], 4).tolist()}",
             "exact rank truncation, Hausdorff: " + ", ".join(f"L={r}: {h:.4f}" for r, h in zip(ranks, cut))]
    return System("logistic", [_sin_cos(train)], [_sin_cos(test)], 1, modes, False, embed=_sin_cos,
                  eigenfunctions=truth, stationary=(grid[:, None], weights), sigma=sigma[1:], notes=notes,
                  logistic_m=m, true_eigenvalues=logistic_eigenvalues(m)[:3], right_by="hausdorff",
                  hidden=(64, 128, 64),
                  epochs=50, batch_size=256, lr=1e-3)


SYSTEMS: dict[str, tuple[Callable[[float], System], tuple[str, ...]]] = {
    "ou": (make_ou, ()),
    "quadruple-well": (make_quadruple_well, ("deeptime",)),
    "prinz": (make_prinz, ("deeptime",)),
    "double-well": (make_double_well, ()),
    "sqrt-model": (make_sqrt_model, ("deeptime",)),
    "logistic": (make_logistic, ()),
}


# --------------------------------------------------------------------------------------------------------
# Methods: each returns a Fit with the learned feature map (raw method input -> (n, L)) and timescales
# --------------------------------------------------------------------------------------------------------


@dataclass
class Fit:
    features: FeatureMap  # on x_t (left singular functions for an SVD)
    timescales: Array  # frames, slowest first, (L,)
    seconds: float
    lagged_features: FeatureMap | None = None  # on x_{t+τ} when the method learns a second map (None: same)
    eigenvalues: Array | None = None  # the method's own eigenvalue read-out, if any
    extra: dict = field(default_factory=dict)


def _steps(system: System) -> int:
    pairs = sum(len(t) - system.lag for t in system.train)
    return system.epochs * math.ceil(pairs / system.batch_size)


def _vamp_readout(features: FeatureMap, system: System) -> Array:
    from deeptime.decomposition import VAMP

    model = VAMP(lagtime=system.lag, dim=system.modes, observable_transform=features).fit(
        [t.astype(np.float32) for t in system.train]).fetch_model()
    return np.sort(model.timescales())[::-1][: system.modes]


def fit_neuralsvd(system: System, seed: int, defaults: bool = False) -> Fit:
    """``NeuralKoopman`` with the benchmark's shared budget, or (``defaults``) with nothing but
    ``n_components``, ``lagtime``, ``reversible`` and ``seed`` set: what a user gets."""
    from neuralsvd.estimators import NeuralKoopman

    budget = {} if defaults else {"hidden": system.hidden, "steps": _steps(system), "batch_size": system.batch_size,
                                  "lr": system.lr}
    est = NeuralKoopman(n_components=system.modes, lagtime=system.lag, reversible=system.reversible, seed=seed,
                        progress=False, **budget)
    t0 = time.perf_counter()
    est.fit(system.train)
    seconds = time.perf_counter() - t0
    model = est.fetch_model()
    eig = getattr(est, "eigenvalues_", None)
    return Fit(model.transform, np.asarray(est.timescales_, dtype=float), seconds,
               lagged_features=None if system.reversible else (lambda x: model.transform(x, lagged=True)),
               eigenvalues=None if eig is None else np.asarray(eig),
               extra={"singular_values": np.asarray(est.singular_values_).tolist(),
                      "own_score": float(est.score(system.test))})


def _mlp(system: System, d_out: int):
    """The peers' network: inputs standardized with the training frames' mean and std (as NeuralKoopman
    does), then ``system.hidden`` layers with ``system.peer_activation``, then ``d_out`` linear outputs."""
    import torch

    class Standardize(torch.nn.Module):
        def __init__(self, data: Array):
            super().__init__()
            self.register_buffer("mean", torch.as_tensor(data.mean(0), dtype=torch.float32))
            self.register_buffer("std", torch.as_tensor(data.std(0) + 1e-12, dtype=torch.float32))

        def forward(self, x):
            return (x - self.mean) / self.std

    class Sin(torch.nn.Module):
        def forward(self, x):
            return torch.sin(x)

    act = {"elu": torch.nn.ELU, "sin": Sin, "tanh": torch.nn.Tanh, "silu": torch.nn.SiLU,
           "softplus": torch.nn.Softplus}[system.peer_activation]
    data = np.concatenate(system.train)
    layers, width = [Standardize(data)], data.shape[1]
    for h in system.hidden:
        layers += [torch.nn.Linear(width, h), act()]
        width = h
    return torch.nn.Sequential(*layers, torch.nn.Linear(width, d_out))


def _loader(system: System, seed: int):
    import torch
    from deeptime.util.data import TrajectoriesDataset

    data = TrajectoriesDataset.from_numpy(system.lag, [t.astype(np.float32) for t in system.train])
    gen = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(data, batch_size=system.batch_size, shuffle=True, generator=gen)


def _numpy_map(module) -> FeatureMap:
    import torch

    def apply(x: Array) -> Array:
        with torch.no_grad():
            return module(torch.as_tensor(np.asarray(x), dtype=torch.float32)).numpy()

    return apply


def fit_vampnet(system: System, seed: int) -> Fit:
    import torch
    from deeptime.decomposition.deep import VAMPNet

    torch.manual_seed(seed)
    lobe = _mlp(system, system.modes)
    net = VAMPNet(lobe, learning_rate=system.lr, device="cpu")
    t0 = time.perf_counter()
    net.fit(_loader(system, seed), n_epochs=system.epochs)
    seconds = time.perf_counter() - t0
    features = _numpy_map(net.fetch_model().lobe.eval())
    return Fit(features, _vamp_readout(features, system), seconds)


def fit_contrastive(system: System, seed: int) -> Fit:
    import torch
    from kooplearn.torch.nn import SpectralContrastiveLoss

    torch.manual_seed(seed)
    encoder = _mlp(system, system.modes + 1)
    lagged = _mlp(system, system.modes + 1)
    opt = torch.optim.Adam([*encoder.parameters(), *lagged.parameters()], lr=system.lr)
    loss_fn = SpectralContrastiveLoss()
    t0 = time.perf_counter()
    for _ in range(system.epochs):
        for x, y in _loader(system, seed):
            opt.zero_grad()
            loss_fn(encoder(x), lagged(y)).backward()
            opt.step()
    seconds = time.perf_counter() - t0
    features = _numpy_map(encoder.eval())
    return Fit(features, _vamp_readout(features, system), seconds, lagged_features=_numpy_map(lagged.eval()))


def rbf_basis(system: System, per_dim: int = 10) -> FeatureMap:
    """Gaussian RBFs on a tensor grid over the training data's central 99% (width = grid spacing)."""
    data = np.concatenate(system.train)
    lo, hi = np.quantile(data, 0.005, axis=0), np.quantile(data, 0.995, axis=0)
    axes = [np.linspace(a, b, per_dim) for a, b in zip(lo, hi)]
    centers = np.array(np.meshgrid(*axes, indexing="ij")).reshape(len(axes), -1).T  # (K, d)
    width = (hi - lo) / (per_dim - 1)

    def apply(x: Array) -> Array:
        z = (np.asarray(x, dtype=np.float64)[:, None, :] - centers[None]) / width
        return np.exp(-0.5 * np.sum(z**2, axis=-1))

    return apply


def _fit_linear(system: System, kind: str) -> Fit:
    from deeptime.decomposition import TICA, VAMP

    basis = rbf_basis(system)
    cls = TICA if kind == "tica" else VAMP
    t0 = time.perf_counter()
    model = cls(lagtime=system.lag, dim=system.modes, observable_transform=basis).fit(system.train).fetch_model()
    seconds = time.perf_counter() - t0
    lagged = None if system.reversible else model.timelagged_obs  # VAMP's right singular functions
    return Fit(lambda x: model.transform(x), np.sort(model.timescales())[::-1][: system.modes], seconds,
               lagged_features=lagged)


METHODS: dict[str, tuple[Callable[[System, int], Fit], tuple[str, ...], bool]] = {
    # name: (fit, packages needed, trained network: runs once per seed)
    "neuralsvd": (fit_neuralsvd, ("torch",), True),
    "neuralsvd-default": (lambda s, seed: fit_neuralsvd(s, seed, defaults=True), ("torch",), True),
    "vampnet": (fit_vampnet, ("deeptime", "torch"), True),
    "contrastive": (fit_contrastive, ("kooplearn", "deeptime", "torch"), True),
    "tica": (lambda s, _seed: _fit_linear(s, "tica"), ("deeptime",), False),
    "vamp": (lambda s, _seed: _fit_linear(s, "vamp"), ("deeptime",), False),
}


# --------------------------------------------------------------------------------------------------------
# Scoring and the table
# --------------------------------------------------------------------------------------------------------


def score(system: System, fit: Fit, tolerance: float) -> dict:
    row: dict = {"seconds": fit.seconds, "timescales": [float(t) for t in fit.timescales],
                 "vamp2": vamp2(fit.features, system.test, system.lag, fit.lagged_features), **fit.extra}
    if system.timescales is not None:
        est = np.sort(np.asarray(fit.timescales, dtype=float))[::-1]
        ref = system.timescales
        err = np.abs(est[: len(ref)] - ref) / ref if len(est) >= len(ref) else np.full(len(ref), np.inf)
        row["timescale_rel_error"] = [float(e) for e in err]
        row["right_modes"] = bool(np.all(err <= tolerance))
    if system.right_by == "sigma":  # 1 mode near σ = 1: its timescale moves 10x faster than σ
        sig = np.exp(-system.lag / np.asarray(fit.timescales[:1], dtype=float))
        row["sigma"] = float(sig[0])
        row["right_modes"] = bool(abs(sig[0] - system.sigma[0]) <= SIGMA_TOLERANCE * system.sigma[0])
    if system.eigenfunctions is not None:  # the learned (left) functions against the true ones
        raw = fit.features if system.embed is None else (lambda x: fit.features(system.embed(x)))
        row["subspace_distance"] = subspace_distance(raw, system.eigenfunctions, system.stationary)
    if system.logistic_m is not None:
        raw = (lambda x: fit.features(system.embed(x)))
        pop = top_eigenvalues(*logistic_population_covariances(raw, system.logistic_m), 3)
        emp = top_eigenvalues(*logistic_empirical_covariances(fit.features, system.test), 3)
        row["hausdorff_population"] = directed_hausdorff(pop, system.true_eigenvalues)
        row["hausdorff_empirical"] = directed_hausdorff(emp, system.true_eigenvalues)
        row["eigenvalues_population"] = [[float(v.real), float(v.imag)] for v in pop]
        if fit.lagged_features is not None:  # the same read-out on the union of left and right functions
            both = lambda x: np.concatenate([fit.features(x), fit.lagged_features(x)], axis=1)
            pop2 = top_eigenvalues(*logistic_population_covariances(lambda x: both(system.embed(x)),
                                                                    system.logistic_m), 3)
            emp2 = top_eigenvalues(*logistic_empirical_covariances(both, system.test), 3)
            row["hausdorff_population_left_right"] = directed_hausdorff(pop2, system.true_eigenvalues)
            row["hausdorff_empirical_left_right"] = directed_hausdorff(emp2, system.true_eigenvalues)
        if fit.eigenvalues is not None:
            own = np.asarray(fit.eigenvalues)
            own = own[np.argsort(-np.abs(own), kind="stable")[:3]]
            row["hausdorff_own_readout"] = directed_hausdorff(own, system.true_eigenvalues)
        row["right_modes"] = bool(row["hausdorff_population"] < LOGISTIC_RIGHT)
    return row


SIGMA_TOLERANCE = 0.02  # sqrt-model: σ₁ within 2% of the reference
LOGISTIC_RIGHT = 0.079  # Chebyshev features' population Hausdorff distance in kooplearn's notebook


def _mean(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(vals)) if vals else None


def summarize(rows: list[dict]) -> dict:
    out = {"seeds": len(rows), "vamp2_mean": _mean(rows, "vamp2"), "vamp2_std": float(np.std([r["vamp2"] for r in rows])),
           "seconds_mean": _mean(rows, "seconds")}
    if "right_modes" in rows[0]:
        out["right_fraction"] = float(np.mean([r["right_modes"] for r in rows]))
    if "timescale_rel_error" in rows[0]:
        out["max_timescale_error_median"] = float(np.median([max(r["timescale_rel_error"]) for r in rows]))
    for key in ("subspace_distance", "hausdorff_population", "hausdorff_empirical", "hausdorff_own_readout",
                "hausdorff_population_left_right", "hausdorff_empirical_left_right"):
        if key in rows[0]:
            out[key + "_mean"] = _mean(rows, key)
    return out


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_row(system: str, method: str, s: dict) -> None:
    extra = []
    if s.get("subspace_distance_mean") is not None:
        extra.append(f"subspace {s['subspace_distance_mean']:.1e}")
    if s.get("hausdorff_population_mean") is not None:
        extra.append(f"H pop {s['hausdorff_population_mean']:.3f} emp {s['hausdorff_empirical_mean']:.3f}")
    if s.get("hausdorff_own_readout_mean") is not None:
        extra.append(f"own {s['hausdorff_own_readout_mean']:.3f}")
    if s.get("hausdorff_population_left_right_mean") is not None:
        extra.append(f"[1, f, g]: pop {s['hausdorff_population_left_right_mean']:.3f} "
                     f"emp {s['hausdorff_empirical_left_right_mean']:.3f}")
    print(f"{system:15s} {method:17s} {s['seeds']:>5d} {_fmt(s['vamp2_mean'], '.4f'):>8} ±{s['vamp2_std']:.4f} "
          f"{_fmt(s.get('max_timescale_error_median'), '.3f'):>9} {_fmt(s.get('right_fraction'), '.2f'):>6} "
          f"{s['seconds_mean']:>7.1f}  {'; '.join(extra)}", flush=True)


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        res = results[name]
        methods = list(res["methods"])
        if res.get("true_eigenvalues") is not None:
            ref = np.array(res["true_eigenvalues"])
            ax.scatter(ref[:, 0], ref[:, 1], marker="x", s=80, c="k", label="true", zorder=3)
            for i, method in enumerate(methods):
                pts = np.array([e for r in res["methods"][method]["runs"] for e in r["eigenvalues_population"]])
                ax.scatter(pts[:, 0], pts[:, 1], s=12, alpha=0.6, label=method, c=f"C{i}")
            ax.set_xlabel("Re λ")
            ax.set_ylabel("Im λ")
        else:
            for i, method in enumerate(methods):
                for r in res["methods"][method]["runs"]:
                    ax.scatter([i] * len(r["timescales"]), r["timescales"], s=12, c=f"C{i}", alpha=0.6)
            for t in res.get("reference_timescales") or []:
                ax.axhline(t, color="k", lw=0.8, ls="--")
            ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right")
            ax.set_yscale("log")
            ax.set_ylabel("timescale (frames)")
        ax.set_title(name)
    for ax, name in zip(axes[0], names):
        if results[name].get("true_eigenvalues") is not None:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--seeds-for", nargs="*", default=[], metavar="METHOD=K",
                        help="run METHOD on only the first K seeds (e.g. contrastive=2)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies trajectory lengths")
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="multiplies every system's epochs")
    parser.add_argument("--tolerance", type=float, default=0.10, help="relative timescale error of a right mode")
    parser.add_argument("--peer-activation", default="elu", choices=["elu", "sin", "tanh", "silu", "softplus"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    parser.add_argument("--plot", default=None)
    args = parser.parse_args(argv)
    unknown = [s for s in args.systems.split(",") if s not in SYSTEMS] + \
              [m for m in args.methods.split(",") if m not in METHODS]
    if unknown:
        parser.error(f"unknown system/method {unknown}; systems {list(SYSTEMS)}, methods {list(METHODS)}")
    try:
        seeds_for = {m: int(k) for m, k in (item.split("=") for item in args.seeds_for)}
    except ValueError:
        parser.error(f"--seeds-for takes METHOD=K items, got {args.seeds_for}")
    if has("torch"):
        import torch

        torch.set_num_threads(args.threads)
    print("command: python benchmarks/dynamics.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                                          else sys.argv[1:])))
    print(f"{'system':15s} {'method':17s} {'seeds':>5} {'VAMP-2':>8} {'± std':>7} {'max t err':>9} {'right':>6} "
          f"{'fit s':>7}  other")
    results: dict = {}
    for name in args.systems.split(","):
        build, needs = SYSTEMS[name]
        missing = [p for p in needs if not has(p)]
        if missing:
            print(f"{name:15s} skipped: {', '.join(missing)} not installed")
            continue
        try:
            system = build(args.scale)
        except NotImplementedError as exc:
            print(f"{name:15s} skipped: {exc}")
            continue
        system.epochs = max(1, round(system.epochs * args.epochs_scale))
        if system.eigenfunctions is not None and system.reversible:  # what the held-out data itself allows
            system.notes.append(f"VAMP-2 of the true eigenfunctions on the held-out data "
                                f"{vamp2(system.eigenfunctions, system.test, system.lag):.4f}, on the training "
                                f"data {vamp2(system.eigenfunctions, system.train, system.lag):.4f} (ceiling "
                                f"1 + sum sigma^2 = {1 + np.sum(system.sigma**2):.4f})")
        system.peer_activation = args.peer_activation
        for note in system.notes:
            print(f"{name:15s} note: {note}")
        res = {"lag": system.lag, "modes": system.modes, "epochs": system.epochs, "batch_size": system.batch_size,
               "hidden": list(system.hidden), "lr": system.lr, "steps": _steps(system),
               "peer_activation": system.peer_activation,
               "reference_timescales": None if system.timescales is None else system.timescales.tolist(),
               "reference_sigma": None if system.sigma is None else system.sigma.tolist(),
               "true_eigenvalues": None if system.true_eigenvalues is None else
               [[float(v.real), float(v.imag)] for v in system.true_eigenvalues],
               "notes": system.notes, "methods": {}}
        for method in args.methods.split(","):
            fit, needs, per_seed = METHODS[method]
            missing = [p for p in needs if not has(p)]
            if missing:
                print(f"{name:15s} {method:17s} skipped: {', '.join(missing)} not installed")
                continue
            runs = []
            for seed in (args.seeds[: seeds_for.get(method, len(args.seeds))] if per_seed else args.seeds[:1]):
                row = score(system, fit(system, seed), args.tolerance)
                row["seed"] = seed
                runs.append(row)
            summary = summarize(runs)
            res["methods"][method] = {"summary": summary, "runs": runs}
            print_row(name, method, summary)
        results[name] = res
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"command": "python benchmarks/dynamics.py " + " ".join(argv or sys.argv[1:]),
                       "tolerance": args.tolerance, "systems": results}, fh, indent=1)
    if args.plot and results:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())

r"""Stochastic dynamics with known transfer-operator spectra: simulators and references for
:class:`~neuralsvd.operators.TrajectoryOperator`.

Both systems are reversible diffusions ``dX = -∇V(X) dt + sqrt(2/β) dW`` with stationary law
``μ ∝ e^{-βV}``; the transfer (Koopman) operator at physical lag ``s`` is ``e^{s 𝓛}``, ``𝓛`` the generator
``𝓛 f = β⁻¹ Δf - ∇V·∇f``, so its singular values are ``σ_k = e^{-s E_k}`` for the eigenvalues ``0 = E_0 <
E_1 ≤ ...`` of ``-𝓛``, and the singular functions are the eigenfunctions (orthonormal in ``L²(μ)``). A
trajectory has frames ``dt`` apart; a lag of ``τ`` frames is ``s = τ dt``, and implied timescales in frames
are ``t_k = -τ / ln σ_k = 1 / (dt E_k)``.

* :class:`OrnsteinUhlenbeck`: ``dX_i = -θ_i X_i dt + sqrt(2θ_i) dW_i`` (``μ = N(0, I)``), simulated with its
  exact Gaussian transitions; ``E_k = Σ_i k_i θ_i`` and products of normalized Hermite polynomials
  ``He_{k_i}(x_i)/sqrt(k_i!)`` for multi-indices ``k``.
* :class:`LangevinDoubleWell`: a 2D double well simulated with a fine Euler–Maruyama step; its reference
  spectrum comes from the Schrödinger form of the generator, ``-𝓛 ≅ H = -β⁻¹Δ + U``,
  ``U = (β/4)|∇V|² - ½ΔV`` (``f = e^{βV/2} ψ``), solved by finite differences on three grids with
  Richardson extrapolation (:mod:`neuralsvd.reference_grid`).

:class:`SpectralReference` presents either as the ``reference`` of a trajectory operator (singular values
with the constant first, functions orthonormal in ``L²(μ)``, a quadrature for ``L²(μ)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .operators.kernel import gaussian_quadrature, normalized_hermite_e
from .operators.multi_index import top_multi_indices
from .quadrature import Quadrature
from .reference_grid import GridReference, solve_reference

__all__ = ["LangevinDoubleWell", "OrnsteinUhlenbeck", "SpectralReference", "implied_timescales"]


def implied_timescales(singular_values: Tensor | np.ndarray, lag: int) -> np.ndarray:
    """``t_k = -lag / ln σ_k`` (in the lag's unit; ``inf`` for ``σ ≥ 1``, 0 for ``σ ≤ 0``)."""
    s = np.asarray(torch.as_tensor(singular_values, dtype=torch.float64).cpu(), dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(s >= 1, np.inf, np.where(s <= 0, 0.0, -lag / np.log(np.clip(s, 1e-300, 1))))


@dataclass
class SpectralReference:
    """A transfer operator's spectrum at one lag, for :func:`neuralsvd.evaluate`: ``rates`` ``(K,)`` the
    ``E_k`` (ascending, ``E_0 = 0``), ``functions(x, L) -> (n, L)`` orthonormal in ``L²(μ)``, ``rule`` a
    quadrature for ``L²(μ)``, and the physical lag ``lag_time``."""

    rates: np.ndarray
    functions: Callable[[Tensor, int], Tensor]
    rule: Callable[[], Quadrature]
    lag_time: float

    def exact_eigenvalues(self, num_modes: int) -> Tensor:
        """Singular values ``e^{-s E_k}``, the constant's 1 first, ``(L,)``."""
        if num_modes > self.rates.shape[0]:
            raise ValueError(f"the reference holds {self.rates.shape[0]} modes, {num_modes} requested")
        return torch.from_numpy(np.exp(-self.lag_time * self.rates[:num_modes]))

    def exact_eigenfunctions(self, x: Tensor, num_modes: int) -> Tensor:
        return self.functions(x, num_modes)

    def quadrature(self) -> Quadrature:
        return self.rule()

    def exact_right_functions(self, y: Tensor, num_modes: int) -> Tensor:
        """Reversible: the right singular functions are the left ones."""
        return self.functions(y, num_modes)

    def right_quadrature(self) -> Quadrature:
        return self.rule()


class OrnsteinUhlenbeck:
    """``dX_i = -θ_i X_i dt + sqrt(2 θ_i) dW_i`` with ``rates = θ`` (module docstring); frames ``dt`` apart."""

    def __init__(self, rates: Sequence[float], dt: float = 1.0):
        self.rates = np.asarray(rates, dtype=np.float64).reshape(-1)
        if self.rates.size == 0 or not (np.isfinite(self.rates).all() and (self.rates > 0).all()):
            raise ValueError(f"rates must be positive finite numbers, one per dimension, got {rates!r}")
        if not (dt > 0 and math.isfinite(dt)):
            raise ValueError(f"dt must be positive, got {dt!r}")
        self.dim, self.dt = self.rates.size, float(dt)

    def simulate(self, num_frames: int, num_trajectories: int = 1, seed: int = 0,
                 dtype: np.dtype = np.float32) -> np.ndarray:
        """``(N, T, d)`` trajectories started from ``μ = N(0, I)`` with exact transitions (stationary)."""
        rng = np.random.default_rng(seed)
        a = np.exp(-self.rates * self.dt)  # (d,)
        b = np.sqrt(1 - a**2)
        out = np.empty((num_trajectories, num_frames, self.dim), dtype=dtype)
        x = rng.standard_normal((num_trajectories, self.dim))
        for t in range(num_frames):
            out[:, t] = x
            x = a * x + b * rng.standard_normal(x.shape)
        return out

    def _indices(self, num_modes: int) -> list[tuple[int, ...]]:
        return top_multi_indices(self.rates.tolist(), num_modes)

    def generator_eigenvalues(self, num_modes: int) -> np.ndarray:
        """``E_k = Σ_i k_i θ_i``, ascending, ``E_0 = 0``."""
        return np.array([float(np.dot(k, self.rates)) for k in self._indices(num_modes)])

    def eigenfunctions(self, x: Tensor, num_modes: int) -> Tensor:
        """``Π_i He_{k_i}(x_i)/sqrt(k_i!)`` at ``x (n, d)``, ``(n, L)``, orthonormal in ``L²(N(0, I))``."""
        idx = self._indices(num_modes)
        kmax = max(max(k) for k in idx)
        x = x.double()
        per_axis = [normalized_hermite_e(x[:, i], max(kmax, 1)) for i in range(self.dim)]  # (n, kmax+1) each
        return torch.stack([torch.stack([per_axis[i][:, k] for i, k in enumerate(m)]).prod(0) for m in idx], 1)

    def reference(self, lag: int, num_modes: int = 64) -> SpectralReference:
        """The closed form at ``lag`` frames (``num_modes`` at most)."""
        dim = self.dim

        def rule() -> Quadrature:
            return gaussian_quadrature(torch.zeros(dim, dtype=torch.float64), torch.eye(dim, dtype=torch.float64))

        return SpectralReference(self.generator_eigenvalues(num_modes), self.eigenfunctions, rule, lag * self.dt)


class LangevinDoubleWell:
    r"""Overdamped Langevin dynamics in the 2D double well
    ``V(x, y) = h (x² - 1)² + (κ/2) (y - c (x² - 1))²`` (minima at ``(±1, 0)``, barrier ``h`` at ``(0, -c)``,
    a curved channel for ``c ≠ 0``) at inverse temperature ``β``; frames ``dt`` apart, each made of
    ``substeps`` Euler–Maruyama steps (module docstring)."""

    dim = 2

    def __init__(self, barrier: float = 1.0, stiffness: float = 2.0, curvature: float = 0.5, beta: float = 1.0,
                 dt: float = 0.05, substeps: int = 10):
        for name, value in (("barrier", barrier), ("stiffness", stiffness), ("beta", beta), ("dt", dt)):
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be positive, got {value!r}")
        if not (isinstance(substeps, int) and substeps >= 1):
            raise ValueError(f"substeps must be a positive integer, got {substeps!r}")
        self.h, self.k, self.c, self.beta = float(barrier), float(stiffness), float(curvature), float(beta)
        self.dt, self.substeps = float(dt), substeps

    def potential(self, p: Tensor) -> Tensor:
        """``V`` at ``p (n, 2)``, ``(n,)``."""
        x, y = p[:, 0], p[:, 1]
        return self.h * (x**2 - 1) ** 2 + 0.5 * self.k * (y - self.c * (x**2 - 1)) ** 2

    def _gradient(self, p: np.ndarray) -> np.ndarray:
        x, y = p[..., 0], p[..., 1]
        r = y - self.c * (x**2 - 1)
        return np.stack([4 * self.h * x * (x**2 - 1) - 2 * self.k * self.c * x * r, self.k * r], -1)

    def effective_potential(self, p: Tensor) -> Tensor:
        """``U = (β/4)|∇V|² - ½ΔV`` at ``p (n, 2)`` (the Schrödinger form of the generator)."""
        x, y = p[:, 0], p[:, 1]
        r = y - self.c * (x**2 - 1)
        gx = 4 * self.h * x * (x**2 - 1) - 2 * self.k * self.c * x * r
        gy = self.k * r
        lap = self.h * (12 * x**2 - 4) + self.k * (4 * self.c**2 * x**2 - 2 * self.c * r) + self.k
        return 0.25 * self.beta * (gx**2 + gy**2) - 0.5 * lap

    def simulate(self, num_frames: int, num_trajectories: int = 1, seed: int = 0,
                 dtype: np.dtype = np.float32) -> np.ndarray:
        """``(N, T, 2)`` trajectories, each started in a well at random and run for 1000 frames before the first
        kept frame (equilibration)."""
        rng = np.random.default_rng(seed)
        step = self.dt / self.substeps
        noise = math.sqrt(2 * step / self.beta)
        x = np.stack([rng.choice([-1.0, 1.0], num_trajectories), np.zeros(num_trajectories)], 1)
        out = np.empty((num_trajectories, num_frames, 2), dtype=dtype)
        for t in range(-1000, num_frames):
            for _ in range(self.substeps):
                x = x - step * self._gradient(x) + noise * rng.standard_normal(x.shape)
            if t >= 0:
                out[:, t] = x
        return out

    def reference(self, lag: int, num_modes: int, points: int = 128, half_width: float = 4.0) -> DoubleWellReference:
        """The generator's lowest ``num_modes`` eigenpairs by finite differences on ``[-half_width, half_width]²``
        (``points/2``, ``points``, ``2 points`` nodes per axis, Richardson; module docstring). The box must hold
        ``e^{-βV/2}`` (the Dirichlet faces would otherwise lift ``E_0`` above 0)."""
        solution = solve_reference(self.effective_potential, 2, half_width, points, num_modes, 1 / self.beta)
        return DoubleWellReference(self, GridReference(solution), lag * self.dt)


class DoubleWellReference(SpectralReference):
    """:class:`SpectralReference` of a :class:`LangevinDoubleWell` from its grid solution ``grid``: functions
    ``f = ψ / sqrt(μ)`` (``ψ`` the grid eigenvectors, orthonormal in ``L²(dx)``) and the fine grid with weights
    ``μ h²`` as the ``L²(μ)`` rule."""

    def __init__(self, system: LangevinDoubleWell, grid: GridReference, lag_time: float):
        self.system, self.grid = system, grid
        rule = grid.quadrature()
        with torch.no_grad():
            log_w = -system.beta * system.potential(rule.points)
        self.log_z = float(torch.logsumexp(log_w + rule.weights.log(), 0))  # log ∫ e^{-βV}
        super().__init__(np.asarray(grid.levels, dtype=np.float64), self._functions, self._rule, lag_time)

    def log_density(self, x: Tensor) -> Tensor:
        return -self.system.beta * self.system.potential(x.double()) - self.log_z

    def _functions(self, x: Tensor, num_modes: int) -> Tensor:
        psi = self.grid.exact_eigenfunctions(x.double(), num_modes)  # (n, L)
        return psi * torch.exp(-0.5 * self.log_density(x)).unsqueeze(1).to(psi)

    def _rule(self) -> Quadrature:
        rule = self.grid.quadrature()
        return Quadrature(rule.points, rule.weights * torch.exp(self.log_density(rule.points)))

    @property
    def error_estimate(self) -> np.ndarray:
        return self.grid.solution.error_estimate

"""A finite-difference reference solver for ``H = -kinetic Δ + V`` in dimension ``d ≤ 3``.

Conventions: the box ``[-L, L]^d`` holds ``n`` interior points per axis, ``x_i = -L + i h``,
``i = 1..n``, ``h = 2L / (n + 1)``, with ``ψ = 0`` on the box's faces (Dirichlet); ``-Δ`` is the second-order
``(2d+1)``-point stencil, so energies converge as ``E_h = E + c h² + O(h⁴)`` for smooth potentials.
Eigenvectors are normalized on the grid, ``h^d Σ ψ² = 1`` (``∫ ψ² dx = 1``). The lowest eigenpairs come
from :func:`scipy.sparse.linalg.eigsh`: in shift-invert mode around a point below ``min V`` for d ≤ 2, plain
Lanczos (smallest algebraic) for d = 3.

:func:`solve_reference` solves on three grids (``n/2``, ``n``, ``2n`` points per axis, spacings about
halving; even counts avoid the origin, where a Coulomb potential is singular) and extrapolates the last
two (Richardson, ``E* = E_{2n} + (E_{2n} - E_n) / (ρ^p - 1)``, ``ρ = h_n / h_{2n}``, ``p = 2`` when the
observed order agrees); the estimated error of the fine energies is ``|E_{2n} - E*|``.
:class:`GridReference` offers the result through the operator interface
(``exact_eigenvalues``, ``exact_eigenfunctions``, ``quadrature``) so that :func:`neuralsvd.evaluate`
and the figures compare a learned result against it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from scipy.interpolate import RegularGridInterpolator
from scipy.sparse.linalg import eigsh
from torch import Tensor

from .quadrature import Quadrature

__all__ = ["GridReference", "GridSolution", "auto_box", "grid_axis", "solve_grid", "solve_reference"]

Potential = Callable[[Tensor], Tensor]
#: the largest dimension the grid solver accepts
MAX_DIM = 3


@dataclass(frozen=True)
class GridSolution:
    """The lowest eigenpairs on one grid: ``energies (k,)``, ``vectors (n^d, k)`` (C order over
    ``(x0, x1, ...)``, ``h^d Σ ψ² = 1``), ``half_width`` ``L`` and ``points`` ``n`` per axis."""

    energies: np.ndarray
    vectors: np.ndarray
    half_width: float
    points: int
    dim: int

    @property
    def spacing(self) -> float:
        return 2 * self.half_width / (self.points + 1)

    def axis(self) -> np.ndarray:
        return grid_axis(self.half_width, self.points)


def grid_axis(half_width: float, points: int) -> np.ndarray:
    """The ``points`` interior nodes of ``[-L, L]``, ``(n,)``."""
    h = 2 * half_width / (points + 1)
    return -half_width + h * np.arange(1, points + 1)


def _grid_points(half_width: float, points: int, dim: int) -> np.ndarray:
    """All nodes, ``(n^d, d)`` in C order (the last coordinate fastest)."""
    axis = grid_axis(half_width, points)
    mesh = np.meshgrid(*([axis] * dim), indexing="ij")
    return np.stack([m.reshape(-1) for m in mesh], 1)


def _laplacian(points: int, h: float, dim: int) -> sp.csr_matrix:
    """The Dirichlet ``(2d+1)``-point ``Δ``, a Kronecker sum of the 1D ``[1, -2, 1] / h²``."""
    d1 = sp.diags([np.ones(points - 1), -2 * np.ones(points), np.ones(points - 1)], [-1, 0, 1]) / h**2
    eye = sp.identity(points, format="csr")
    lap = sp.csr_matrix((points**dim, points**dim))
    for a in range(dim):
        factors = [eye] * dim
        factors[a] = d1
        term = factors[0]
        for f in factors[1:]:
            term = sp.kron(term, f, format="csr")
        lap = lap + term
    return lap.tocsr()


def _check_dim(dim: int) -> None:
    if not (isinstance(dim, int) and 1 <= dim <= MAX_DIM):
        raise ValueError(f"the grid reference solves dimensions 1..{MAX_DIM}, got dim = {dim!r}")


def solve_grid(potential: Potential, dim: int, half_width: float, points: int, num_modes: int,
               kinetic: float = 1.0, below: float | None = None) -> GridSolution:
    """The ``num_modes`` lowest eigenpairs of the finite-difference ``H`` on ``[-L, L]^d`` (see the module
    docstring); raises ``ValueError`` if ``V`` is not finite on a node (naming one).

    ``below``: a value below the lowest eigenvalue, the shift-invert point for d ≤ 2 (default ``min V - 1``,
    always below; a closer one, e.g. from a coarser grid, converges faster).
    """
    _check_dim(dim)
    if points**dim <= num_modes + 3:
        raise ValueError(f"a grid of {points}^{dim} points is too small for {num_modes} modes")
    x = _grid_points(half_width, points, dim)  # (N, d)
    with torch.no_grad():
        v = potential(torch.from_numpy(x)).double().numpy()  # (N,)
    bad = ~np.isfinite(v)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"the potential is not finite at {int(bad.sum())} grid nodes, e.g. V({x[i].tolist()}) = {v[i]}")
    h = 2 * half_width / (points + 1)
    ham = (-kinetic * _laplacian(points, h, dim) + sp.diags(v)).tocsc()
    # a fixed generic start vector: repeated solves agree, and no symmetry of V hides a state from the
    # Krylov space (a symmetric start vector would see only the states of its own parity)
    v0 = np.random.default_rng(0).standard_normal(points**dim)
    # two extra pairs: a degenerate level cut at num_modes converges as a whole
    if dim == 3:  # plain Lanczos: the sparse LU of a 3D grid fills in (minutes at 48³ against seconds)
        energies, vectors = eigsh(ham, k=num_modes + 2, which="SA", v0=v0)
    else:
        sigma = float(v.min()) - 1.0 if below is None else max(below, float(v.min()) - 1.0)
        energies, vectors = eigsh(ham, k=num_modes + 2, sigma=sigma, which="LM", v0=v0)
    order = np.argsort(energies)[:num_modes]
    vectors = vectors[:, order] / math.sqrt(h**dim)  # h^d Σ ψ² = 1
    return GridSolution(energies[order], vectors, float(half_width), int(points), dim)


def _below(sol: GridSolution) -> float:
    """A shift-invert point for a finer grid: below ``sol``'s lowest energy by its spread (at least
    ``|E_0|`` and the box's kinetic scale ``1/L²``)."""
    e = sol.energies
    return float(e[0] - max(e[-1] - e[0], abs(e[0]), 1.0 / sol.half_width**2))


def _extent(sol: GridSolution) -> float:
    """``max_{l, a} (|⟨x_a⟩_l| + sqrt(Var_l x_a))``: how far the modes reach along any axis."""
    x = _grid_points(sol.half_width, sol.points, sol.dim)  # (N, d)
    density = sol.vectors**2 * sol.spacing**sol.dim  # (N, k), columns sum to 1
    mean = density.T @ x  # (k, d)
    var = density.T @ x**2 - mean**2  # (k, d)
    return float((np.abs(mean) + np.sqrt(np.clip(var, 0, None))).max())


def auto_box(potential: Potential, dim: int, num_modes: int, kinetic: float = 1.0, points: int | None = None,
             start: float = 5.0, factor: float = 7.0, max_iterations: int = 8) -> tuple[GridSolution, float]:
    """A box that holds the ``num_modes`` lowest states: ``(coarse solution, modes' extent)``.

    Starting from ``L = start``, solves on a coarse grid (``points`` per axis; default 400, 48, 20 for
    d = 1, 2, 3) and sets ``L = factor · extent`` (the extent of :func:`_extent`) until ``L`` changes by
    less than 20% (at most ``max_iterations`` solves). For a Gaussian-like state the faces then lie 7
    standard deviations out.
    """
    _check_dim(dim)
    points = points or {1: 400, 2: 48, 3: 20}[dim]
    half_width = start
    for _ in range(max_iterations):
        sol = solve_grid(potential, dim, half_width, points, num_modes, kinetic)
        extent = _extent(sol)
        new = factor * extent
        if abs(new - half_width) < 0.2 * half_width:
            return sol, extent
        half_width = new
    raise ValueError(f"the grid reference found no box holding the {num_modes} lowest states: the box half-width "
                     f"went to {half_width:.3g} without settling (is the potential confining?)")


@dataclass(frozen=True)
class ReferenceSolution:
    """Three-grid result (``n/2``, ``n``, ``2n`` points per axis), per mode: ``energies`` (finest grid),
    ``extrapolated`` (Richardson), ``error_estimate`` (``|energies - extrapolated|``) and ``order`` (the
    order used: 2, or the observed one, NaN where convergence is not monotone); the three
    :class:`GridSolution` in ``grids``, finest last."""

    energies: np.ndarray
    extrapolated: np.ndarray
    error_estimate: np.ndarray
    order: np.ndarray
    grids: tuple[GridSolution, ...]

    @property
    def fine(self) -> GridSolution:
        return self.grids[-1]


def solve_reference(potential: Potential, dim: int, half_width: float, points: int, num_modes: int,
                    kinetic: float = 1.0) -> ReferenceSolution:
    """Solve on ``points/2``, ``points`` and ``2 points`` nodes per axis (``points`` a multiple of 4: every
    grid avoids the origin) and extrapolate from the last two.

    The scheme is second order for smooth potentials: where the observed order
    ``p = log(|E_{n/2} - E_n| / |E_n - E_{2n}|) / log 2`` is within 0.4 of 2, ``E* = E_{2n} + (E_{2n} - E_n) /
    (ρ² - 1)`` (``ρ = h_n / h_{2n}``). Elsewhere (e.g. a Coulomb singularity, about first order) ``p``
    clipped to ``[0.5, 2]`` replaces 2; where the differences change sign, ``E* = E_{2n}`` and the error
    estimate is the larger difference. The estimated error is ``|E_{2n} - E*|``.
    """
    if points % 4:
        raise ValueError(f"points must be a multiple of 4 (the grids then avoid the origin), got {points}")
    grids = [solve_grid(potential, dim, half_width, points // 2, num_modes, kinetic)]
    for n in (points, 2 * points):
        grids.append(solve_grid(potential, dim, half_width, n, num_modes, kinetic, below=_below(grids[-1])))
    e0, e1, e2 = (g.energies for g in grids)
    d1, d2 = e1 - e0, e2 - e1
    rho = grids[1].spacing / grids[2].spacing
    monotone = d1 * d2 > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        observed = np.where(monotone, np.log(np.abs(d1) / np.abs(d2)) / math.log(rho), np.nan)
    order = np.where(np.abs(observed - 2) <= 0.4, 2.0, np.clip(observed, 0.5, 2.0))
    with np.errstate(invalid="ignore"):
        correction = np.where(monotone, d2 / (rho**order - 1), 0.0)
    extrapolated = e2 + correction
    error = np.where(monotone, np.abs(correction), np.maximum(np.abs(d1), np.abs(d2)))
    return ReferenceSolution(e2, extrapolated, error, np.where(monotone, order, np.nan), tuple(grids))


def _merge_levels(energies: np.ndarray, errors: np.ndarray) -> np.ndarray:
    """``energies (k,)`` (ascending) with each run of levels closer than twice their largest estimated
    error replaced by its mean."""
    out, start = energies.copy(), 0
    for i in range(1, energies.shape[0] + 1):
        block_error = errors[start:i + 1].max() if i < energies.shape[0] else 0.0
        if i == energies.shape[0] or energies[i] - energies[i - 1] > 2 * block_error:
            out[start:i] = energies[start:i].mean()
            start = i
    return out


class GridReference:
    """A :class:`ReferenceSolution` seen as an operator with a closed form, for :func:`neuralsvd.evaluate`
    and the figures: ``exact_eigenvalues`` are the extrapolated energies, where levels closer than twice
    their estimated errors are merged into one degenerate level (their mean: the grid splits e.g. the
    ``cos 2θ`` / ``sin 2θ`` pair of a rotation-invariant problem); ``exact_eigenfunctions`` the
    fine-grid eigenvectors interpolated (multilinearly, zero outside the box); ``quadrature`` the fine
    grid nodes with weight ``h^d``."""

    def __init__(self, solution: ReferenceSolution):
        self.solution = solution
        self.levels = _merge_levels(solution.extrapolated, solution.error_estimate)
        fine = solution.fine
        self.dim = fine.dim
        axis = np.concatenate([[-fine.half_width], fine.axis(), [fine.half_width]])  # the faces, where ψ = 0
        shape = (fine.points,) * fine.dim
        values = np.zeros((*(s + 2 for s in shape), fine.vectors.shape[1]))
        values[(slice(1, -1),) * fine.dim] = fine.vectors.reshape(*shape, -1)
        self._interpolate = RegularGridInterpolator([axis] * fine.dim, values, bounds_error=False, fill_value=0.0)

    def exact_eigenvalues(self, num_modes: int) -> Tensor:
        energies = self.levels
        if num_modes > energies.shape[0]:
            raise ValueError(f"the reference holds {energies.shape[0]} modes, {num_modes} requested")
        return torch.from_numpy(energies[:num_modes].copy())

    def exact_eigenfunctions(self, x: Tensor, num_modes: int) -> Tensor:
        out = self._interpolate(x.detach().cpu().double().numpy())[:, :num_modes]  # (n, L)
        return torch.from_numpy(np.ascontiguousarray(out)).to(x.device)

    def quadrature(self) -> Quadrature:
        fine = self.solution.fine
        points = torch.from_numpy(_grid_points(fine.half_width, fine.points, fine.dim))  # (N, d)
        return Quadrature(points, torch.full((points.shape[0],), fine.spacing**fine.dim, dtype=torch.float64))

    def describe(self) -> dict[str, object]:
        """The grids, for metrics.json."""
        s = self.solution
        return {"half_width": s.fine.half_width, "points_per_axis": [g.points for g in s.grids],
                "spacing": [g.spacing for g in s.grids], "order": [None if math.isnan(p) else float(p) for p in s.order]}


"""Reference spectra for the robustness benchmark, from solvers independent of neuralsvd (numpy/scipy only).

Convention: Schrödinger operators are ``H = -Δ + V`` (kinetic coefficient 1, no ½), as
:class:`neuralsvd.operators.Schrodinger` with its defaults; levels are energies, ascending. Finite operators
(kernel on data, graph, dense matrix) give their top eigenvalues, descending.

Solvers:

* closed forms: harmonic oscillators ``E = Σ ω_i (2 n_i + 1)`` for ``V = Σ ω_i² x_i²`` (and for coupled
  quadratic ``xᵀ A x`` through its normal modes, ``ω_k² = eig(A)``), Pöschl–Teller ``-λ(λ+1) sech² x``:
  ``E_n = -(λ - n)²``, Morse ``D (1 - e^{-a x})²``: ``E_n = D - a² (√D / a - n - ½)²``, hydrogen-like
  ``-Z/|x|`` in 3D: ``E_n = -Z² / (4 n²)`` with multiplicity ``n²``;
* :func:`fd_levels_1d`: 3-point finite differences on ``[c - a, c + a]`` (Dirichlet), tridiagonal
  eigensolver, Richardson-extrapolated between steps ``h`` and ``h/2`` (error ``O(h⁴)``);
* :func:`tensor_sum_levels`: separable potentials from their 1D levels;
* :func:`fd_levels_2d`: 5-point finite differences on a square (Dirichlet), ``scipy.sparse.linalg.eigsh`` in
  shift-invert mode, Richardson-extrapolated between ``h`` and ``h/2``;
* :func:`top_eigenvalues`: ``numpy.linalg.eigvalsh`` of a symmetric matrix (kernel matrix over ``N``, the
  normalized adjacency, a dense matrix).

Each finite-difference solver returns ``(levels, error)`` where ``error`` is the per-level difference between
the extrapolated value and the finer grid's plain value: a bound on the extrapolated value's error, checked
against closed forms in ``tests/test_robustness_benchmark.py``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy.linalg import eigh_tridiagonal

__all__ = [
    "fd_levels_1d",
    "fd_levels_2d",
    "hydrogen3d_levels",
    "morse_levels",
    "normal_mode_levels",
    "oscillator_levels",
    "poschl_teller_levels",
    "tensor_sum_levels",
    "top_eigenvalues",
]

Potential1D = Callable[[np.ndarray], np.ndarray]  # t (n,) -> V (n,)
Potential2D = Callable[[np.ndarray], np.ndarray]  # x (n, 2) -> V (n,)


# ---------------------------------------------------------------- closed forms

def oscillator_levels(omegas: Sequence[float], num_levels: int) -> np.ndarray:
    """Lowest ``num_levels`` energies of ``-Δ + Σ ω_i² x_i²``: ``Σ ω_i (2 n_i + 1)``, ascending."""
    axes = [np.array([w * (2 * n + 1) for n in range(num_levels)]) for w in omegas]
    return tensor_sum_levels(axes, num_levels)


def normal_mode_levels(matrix: np.ndarray, num_levels: int) -> np.ndarray:
    """Lowest levels of ``-Δ + xᵀ A x`` (A symmetric positive definite): oscillators at ``ω_k = sqrt(eig A)``."""
    eig = np.linalg.eigvalsh(np.asarray(matrix, dtype=float))
    if eig.min() <= 0:
        raise ValueError(f"A must be positive definite, eigenvalues {eig}")
    return oscillator_levels(np.sqrt(eig), num_levels)


def poschl_teller_levels(lam: float, num_levels: int) -> np.ndarray:
    """Bound levels of ``-d²/dx² - λ(λ+1) sech²(x)``: ``-(λ - n)²`` for ``n < λ``, ascending."""
    levels = [-(lam - n) ** 2 for n in range(num_levels) if n < lam]
    if len(levels) < num_levels:
        raise ValueError(f"Pöschl–Teller with λ = {lam} has only {len(levels)} bound levels")
    return np.array(levels)


def morse_levels(depth: float, a: float, num_levels: int) -> np.ndarray:
    """Bound levels of ``-d²/dx² + D (1 - e^{-a x})²``: ``D - a² (√D/a - n - ½)²`` for ``n < √D/a - ½``."""
    lam = math.sqrt(depth) / a
    levels = [depth - a**2 * (lam - n - 0.5) ** 2 for n in range(num_levels) if n < lam - 0.5]
    if len(levels) < num_levels:
        raise ValueError(f"Morse (D={depth}, a={a}) has only {len(levels)} bound levels")
    return np.array(levels)


def hydrogen3d_levels(charge: float, num_levels: int) -> np.ndarray:
    """Lowest levels of ``-Δ - Z/|x|`` in 3D: ``-Z²/(4 n²)``, each ``n²`` times, ascending."""
    levels = [-(charge**2) / (4 * n**2) for n in range(1, num_levels + 1) for _ in range(n * n)]
    return np.array(levels[:num_levels])


def radial_levels(potential: Potential1D, dim: int, ang: int, num_levels: int, radius: float = 80.0,
                  points: int = 20000) -> np.ndarray:
    """Lowest levels of ``-R'' - (d-1)/r R' + (l(l+d-2)/r² + V(r)) R = E R`` (``-Δ + V(|x|)`` at angular
    momentum ``l`` in ``d`` dimensions) on ``(0, radius)``, ``R(radius) = 0``: the flux form
    ``-(r^{d-1} R')' / r^{d-1}`` on a cell-centred grid (no boundary condition needed at 0, also for 2D
    ``l = 0``), symmetrized with the weights ``r^{d-1}``; second order, Richardson-extrapolated from ``points``
    and ``2 points`` cells."""
    def solve(n: int) -> np.ndarray:
        h = radius / n
        r, faces = (np.arange(n) + 0.5) * h, np.arange(1, n + 1) * h
        w, wf = r ** (dim - 1), faces ** (dim - 1)
        diag = (np.r_[0.0, wf[:-1]] + wf) / h**2 / w + potential(r) + ang * (ang + dim - 2) / r**2
        off = -wf[:-1] / h**2 / np.sqrt(w[:-1] * w[1:])
        return eigh_tridiagonal(diag, off, select="i", select_range=(0, num_levels - 1))[0]

    return (4 * solve(2 * points) - solve(points)) / 3


def hydrogen2d_levels(charge: float, num_levels: int) -> np.ndarray:
    """Lowest levels of ``-Δ - Z/|x|`` in 2D: ``-Z²/(2n + 1)²``, each ``2n + 1`` times (n = 0, 1, ...), ascending."""
    levels = [-(charge**2) / (2 * n + 1) ** 2 for n in range(num_levels) for _ in range(2 * n + 1)]
    return np.array(levels[:num_levels])


def tensor_sum_levels(axis_levels: Sequence[np.ndarray], num_levels: int) -> np.ndarray:
    """Lowest ``num_levels`` sums ``Σ_i E_i[n_i]`` of per-axis levels (a separable potential), ascending.

    Each axis must hold at least ``num_levels`` levels (or all its bound levels)."""
    sums = [sum(c) for c in itertools.product(*[np.asarray(a)[:num_levels] for a in axis_levels])]
    if len(sums) < num_levels:
        raise ValueError(f"only {len(sums)} combined levels, {num_levels} asked")
    return np.sort(np.array(sums))[:num_levels]


# ---------------------------------------------------------------- finite differences

def _fd_1d(potential: Potential1D, num_levels: int, center: float, half_width: float, points: int) -> np.ndarray:
    h = 2 * half_width / (points + 1)
    t = center - half_width + h * np.arange(1, points + 1)
    diag = 2 / h**2 + potential(t)
    off = np.full(points - 1, -1 / h**2)
    return eigh_tridiagonal(diag, off, select="i", select_range=(0, num_levels - 1), eigvals_only=True)


def fd_levels_1d(potential: Potential1D, num_levels: int, half_width: float, points: int = 4000,
                 center: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Lowest levels of ``-d²/dx² + V`` on ``[center ± half_width]`` (Dirichlet): ``(levels, error)``.

    ``points`` interior points (step ``h``) and ``2 points + 1`` (step ``h/2``), Richardson-combined."""
    coarse = _fd_1d(potential, num_levels, center, half_width, points)
    fine = _fd_1d(potential, num_levels, center, half_width, 2 * points + 1)
    extrapolated = (4 * fine - coarse) / 3
    return extrapolated, np.abs(extrapolated - fine)


def _fd_2d(potential: Potential2D, num_levels: int, half_width: float, points: int) -> np.ndarray:
    h = 2 * half_width / (points + 1)
    t = -half_width + h * np.arange(1, points + 1)
    second = sp.diags_array([np.full(points - 1, -1.0), np.full(points, 2.0), np.full(points - 1, -1.0)],
                            offsets=[-1, 0, 1]) / h**2
    eye = sp.eye_array(points)
    x0, x1 = np.meshgrid(t, t, indexing="ij")
    v = potential(np.stack([x0.ravel(), x1.ravel()], axis=1))  # (points², )
    matrix = sp.csc_array(sp.kron(second, eye) + sp.kron(eye, second) + sp.diags_array(v))
    values = spla.eigsh(matrix, k=num_levels, sigma=float(v.min()) - 1.0, which="LM", return_eigenvectors=False)
    return np.sort(values)


def fd_levels_2d(potential: Potential2D, num_levels: int, half_width: float,
                 points: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """Lowest levels of ``-Δ + V`` on ``[-half_width, half_width]²`` (Dirichlet): ``(levels, error)``.

    ``points`` interior points per axis (step ``h``) and ``2 points + 1`` (step ``h/2``), Richardson-combined."""
    coarse = _fd_2d(potential, num_levels, half_width, points)
    fine = _fd_2d(potential, num_levels, half_width, 2 * points + 1)
    extrapolated = (4 * fine - coarse) / 3
    return extrapolated, np.abs(extrapolated - fine)


# ---------------------------------------------------------------- finite operators

def top_eigenvalues(matrix: np.ndarray, num_levels: int) -> np.ndarray:
    """The ``num_levels`` largest eigenvalues of a symmetric matrix, descending (``numpy.linalg.eigvalsh``)."""
    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or not np.allclose(m, m.T):
        raise ValueError(f"matrix must be square and symmetric, got shape {m.shape}")
    return np.linalg.eigvalsh(m)[::-1][:num_levels].copy()

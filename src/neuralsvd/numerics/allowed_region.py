"""The classically allowed region ``{x : V(x) < E}`` of a potential, and the Gaussian that covers it.

A Schrödinger state of energy below ``E`` lives in that region (and decays outside it), so a sampler
matched to it puts its points where the wanted states are, whatever the potential's scale:
:class:`~neuralsvd.operators.Schrodinger` uses :func:`allowed_region_gaussian` with its ``shift`` as its
default sampler. A potential-blind ``N(0, I)`` is wrong both ways: too narrow for a wide potential (for
``V = ω² x²`` with ``ω < 1/4`` the ground state's ``f = ψ / sqrt(p)`` has ``E_p[f⁴] = ∞``, so every
estimate has infinite variance) and too wide for a steep one (most points where the wanted states vanish).

The region is measured along one line per axis through the potential's lowest point found (the origin or one
of :data:`CANDIDATES` draws of ``N(0, 4² I)``), on :data:`GRID_POINTS` points of ``[-R, R]`` with ``R``
growing from 4 by factors of 4 until the region no longer reaches the line's ends: per axis, the allowed
points' mean ``m_a`` and standard deviation ``s_a`` (a uniform measure on them; ``w_a = √3 s_a`` is the
half-width of one interval). The Gaussian is ``N(m, diag(σ²))`` with ``σ_a = w_a / sqrt(q_d)``, ``q_d`` the
:data:`INSIDE` quantile of ``χ²_d``: when the region is the ellipsoid of semi-axes ``w_a`` (a harmonic well)
the Gaussian puts that fraction of its points inside it, in any dimension (``σ = 0.73 w`` in 1D, ``0.53 w``
in 2D, ``0.39 w`` in 4D: per-axis widths that ignore the dimension put most points of a 4D Gaussian where
the potential is far above the shift). Exact for separable potentials; for coupled ones the axis slices
approximate the region's shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .sampling import Gaussian

__all__ = ["INSIDE", "allowed_region_gaussian", "chi2_quantile"]

#: the fraction of the Gaussian's points inside an ellipsoidal allowed region
INSIDE = 0.83
#: random candidates (besides the origin) for the potential's lowest point
CANDIDATES = 4096
#: points of each axis slice
GRID_POINTS = 4001
#: the slices' half-widths tried: 4, 16, ..., 4**MAX_WIDENINGS
MAX_WIDENINGS = 6


def _values(potential: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``V(x)`` ``(n,)`` with every non-finite value as ``+inf`` (outside any region)."""
    with torch.no_grad():
        v = potential(x)
    if not isinstance(v, Tensor) or v.shape != (x.shape[0],):
        shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
        raise ValueError(f"potential must map x of shape (n, {x.shape[1]}) to (n,) = ({x.shape[0]},); got {shape}")
    v = v.to(torch.float64)
    return torch.where(torch.isfinite(v) | (v < 0), v, torch.full_like(v, torch.inf))


def chi2_quantile(probability: float, dim: int) -> float:
    """The ``probability`` quantile of ``χ²_dim`` (bisection on the regularized incomplete gamma function)."""
    half_dim = torch.tensor(0.5 * dim, dtype=torch.float64)
    lo, hi = 0.0, 10.0 * dim + 100.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        below = float(torch.special.gammainc(half_dim, torch.tensor(0.5 * mid, dtype=torch.float64))) < probability
        lo, hi = (mid, hi) if below else (lo, mid)
    return 0.5 * (lo + hi)


def allowed_region_gaussian(potential: Callable[[Tensor], Tensor], dim: int, energy: float) -> Gaussian | None:
    """The Gaussian ``N(m, diag(s²))`` over ``{x : V(x) < energy}`` (module docstring), or None when the
    region is empty at the lowest point found (``energy`` below the potential) or reaches beyond
    ``4**MAX_WIDENINGS`` along an axis (unbounded, e.g. a Coulomb potential at ``energy ≥ 0``).

    ``potential``: ``x (n, dim) -> V (n,)``, called on float64 tensors (ValueError for another shape).
    Deterministic (a fixed seed).
    """
    generator = torch.Generator().manual_seed(0)
    candidates = torch.cat([torch.zeros(1, dim, dtype=torch.float64),
                            4.0 * torch.randn(CANDIDATES, dim, generator=generator, dtype=torch.float64)])
    v = _values(potential, candidates)  # (n,)
    lowest = int(torch.argmin(torch.where(torch.isfinite(v), v, torch.full_like(v, torch.inf))))
    if not bool(v[lowest] < energy):
        return None
    center = candidates[lowest]  # (d,)
    means, stds = [], []
    for axis in range(dim):
        half_width = 4.0
        for _ in range(MAX_WIDENINGS):
            t = torch.linspace(-half_width, half_width, GRID_POINTS, dtype=torch.float64)  # (m,)
            x = center.expand(GRID_POINTS, dim).clone()
            x[:, axis] += t
            inside = _values(potential, x) < energy  # (m,)
            if not bool(inside[0] or inside[-1]):
                break
            half_width *= 4.0
        else:
            return None
        allowed = x[inside, axis]  # (k,), k ≥ 1: the lowest point is inside
        means.append(float(allowed.mean()))
        stds.append(max(float(allowed.std(correction=0)), float(t[1] - t[0])))
    cover = math.sqrt(3.0 / chi2_quantile(INSIDE, dim))  # σ_a = cover · s_a = w_a / sqrt(q_d)
    return Gaussian(dim, std=[cover * s for s in stds], mean=means)

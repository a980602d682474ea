"""Quadrature rules for accurate inner products of eigenfunctions (evaluation, not training).

All rules are built in float64. A :class:`Quadrature` holds points ``(N, d)`` and weights ``(N,)``
with ``Σ_i w_i a(x_i) b(x_i) ≈ ∫ a b dμ`` for the measure of the function space.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["Quadrature", "gauss_legendre", "box", "polar", "spherical", "sobol_cube", "monte_carlo", "gaussian_qmc"]


class Quadrature:
    """Points ``(N, d)`` and weights ``(N,)``."""

    def __init__(self, points: Tensor, weights: Tensor):
        if weights.ndim != 1 or points.shape[0] != weights.shape[0]:
            raise ValueError(f"points (N, d) and weights (N,) disagree: {tuple(points.shape)} vs {tuple(weights.shape)}")
        self.points, self.weights = points, weights

    def __len__(self) -> int:
        return self.points.shape[0]

    def inner(self, a: Tensor, b: Tensor) -> Tensor:
        """Gram matrix ``⟨a_l, b_m⟩`` of function values ``a (N, L)``, ``b (N, M)`` -> ``(L, M)``."""
        return a.T @ (self.weights.to(a).unsqueeze(1) * b)


def gauss_legendre(edges: Sequence[float], nodes: int) -> tuple[Tensor, Tensor]:
    """Composite Gauss–Legendre rule on the panels between consecutive ``edges``: ``(t (N,), w (N,))``."""
    z, w = np.polynomial.legendre.leggauss(nodes)
    ts, ws = [], []
    for a, b in zip(edges[:-1], edges[1:]):
        ts.append(0.5 * (b - a) * z + 0.5 * (b + a))
        ws.append(0.5 * (b - a) * w)
    return torch.from_numpy(np.concatenate(ts)), torch.from_numpy(np.concatenate(ws))


def box(bounds: Sequence[float], panels: int = 8, nodes: int = 16) -> Quadrature:
    """Tensor-product composite Gauss–Legendre rule on ``Π_i [-bounds_i, bounds_i]`` (Lebesgue measure)."""
    rules = [gauss_legendre(np.linspace(-b, b, panels + 1).tolist(), nodes) for b in bounds]
    grids = torch.meshgrid(*(t for t, _ in rules), indexing="ij")
    weights = torch.meshgrid(*(w for _, w in rules), indexing="ij")
    points = torch.stack([g.reshape(-1) for g in grids], 1)
    return Quadrature(points, torch.stack([g.reshape(-1) for g in weights], 1).prod(1))


def polar(radial_edges: Sequence[float], radial_nodes: int = 24, angles: int = 64) -> Quadrature:
    """2D rule in polar coordinates: composite Gauss–Legendre in ``r`` times the trapezoid rule in
    ``θ`` (spectrally accurate for periodic integrands), with the Jacobian ``r``."""
    r, wr = gauss_legendre(radial_edges, radial_nodes)
    theta = torch.arange(angles, dtype=torch.float64) * (2 * math.pi / angles)
    rr, tt = torch.meshgrid(r, theta, indexing="ij")
    points = torch.stack([rr * torch.cos(tt), rr * torch.sin(tt)], -1).reshape(-1, 2)
    weights = (wr * r).unsqueeze(1).expand(-1, angles).reshape(-1) * (2 * math.pi / angles)
    return Quadrature(points, weights)


def spherical(radial_edges: Sequence[float], radial_nodes: int = 16, polar_nodes: int = 12, azimuths: int = 24
              ) -> Quadrature:
    """3D rule in spherical coordinates: composite Gauss–Legendre in ``r`` (Jacobian ``r²``) times
    Gauss–Legendre in ``cos θ`` times the trapezoid rule in ``φ``. The angular part integrates spherical
    harmonics of degree ``< 2 polar_nodes`` in ``cos θ`` and ``< azimuths`` in ``φ`` exactly."""
    r, wr = gauss_legendre(radial_edges, radial_nodes)
    c, wc = gauss_legendre([-1.0, 1.0], polar_nodes)
    phi = torch.arange(azimuths, dtype=torch.float64) * (2 * math.pi / azimuths)
    rr, cc, pp = torch.meshgrid(r, c, phi, indexing="ij")
    s = torch.sqrt(1 - cc * cc)
    points = torch.stack([rr * s * torch.cos(pp), rr * s * torch.sin(pp), rr * cc], -1).reshape(-1, 3)
    weights = ((wr * r * r)[:, None, None] * wc[None, :, None] * (2 * math.pi / azimuths)).expand(rr.shape)
    return Quadrature(points, weights.reshape(-1))


def sobol_cube(dim: int, n: int, seed: int = 0) -> Quadrature:
    """Quasi-Monte Carlo rule on ``[0, 1]^dim``: ``n`` scrambled Sobol points, weights ``1 / n``.

    For smooth integrands the error decays roughly like ``1 / n`` (Monte Carlo: ``n^{-1/2}``); take ``n`` a
    power of two."""
    engine = torch.quasirandom.SobolEngine(dim, scramble=True, seed=seed)
    points = engine.draw(n, dtype=torch.float64)
    return Quadrature(points, torch.full((n,), 1.0 / n, dtype=torch.float64))


def monte_carlo(sampler, n: int, seed: int = 0) -> Quadrature:
    """Importance-sampled rule for the Lebesgue measure: ``x ~ p``, ``w = 1 / (n p(x))`` (error ~ n^-½)."""
    gen = torch.Generator().manual_seed(seed)
    x = sampler.sample(n, gen, dtype=torch.float64)
    return Quadrature(x, torch.exp(-sampler.log_prob(x)) / n)


def gaussian_qmc(std: Sequence[float], n: int, seed: int = 0) -> Quadrature:
    """Randomized quasi-Monte Carlo rule for the Lebesgue measure on ``R^d``, ``d = len(std)``: scrambled
    Sobol points mapped through the normal quantile to ``q = N(0, diag(std²))``, weights ``1 / (n q(x))``.

    Unbiased over the scrambling for ``∫ a b`` with ``a² b² / q`` integrable (integrands decaying faster
    than ``q``); for smooth ones the error falls faster than Monte Carlo's ``n^-½``. Independent ``seed``
    values give independent replicates, whose spread estimates the error.
    """
    s = torch.as_tensor(std, dtype=torch.float64).flatten()  # (d,)
    engine = torch.quasirandom.SobolEngine(s.shape[0], scramble=True, seed=seed)
    u = engine.draw(n, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)  # (n, d)
    z = torch.special.ndtri(u)
    log_q = -0.5 * (z * z).sum(1) - torch.log(s).sum() - 0.5 * s.shape[0] * math.log(2 * math.pi)  # (n,)
    return Quadrature(z * s, torch.exp(-log_q) / n)

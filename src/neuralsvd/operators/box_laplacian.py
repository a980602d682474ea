r"""The Dirichlet Laplacian on the unit hypercube ``[0, 1]^d``: ``-Δ`` with zero boundary values.

Exact spectrum: ``λ_k = π² Σ_i k_i²`` for multi-indices ``k_i ≥ 1``, eigenfunctions
``Π_i sqrt(2) sin(k_i π x_i)`` (orthonormal in ``L²([0, 1]^d)``). The lowest are the ground state
``k = (1, ..., 1)`` (``λ = d π²``), then a ``d``-fold shell (one ``k_i = 2``, ``λ = (d + 3) π²``), then the
shells ``(d + 6) π²`` (``d (d - 1) / 2``-fold, two indices 2) and ``(d + 8) π²`` (``d``-fold, one index 3).

Learned as ``T = scale * (shift - (-Δ))`` on ``L²(U[0, 1]^d)`` (the uniform density is 1, so model
outputs are the eigenfunctions themselves). The boundary condition is the model's job: a factor that
vanishes on the faces, e.g. ``ParallelMLP(..., box=(0.0, 1.0))``; ``-Δ`` is self-adjoint only on such
functions.
"""

from __future__ import annotations

import heapq
import math

import torch
from torch import Tensor

from .._validation import check_positive_int
from ..numerics import quadrature as quad
from ..numerics.sampling import UniformBox
from .schrodinger import Schrodinger

__all__ = ["BoxLaplacian", "box_multi_indices"]


def box_multi_indices(dim: int, num_modes: int) -> list[tuple[int, ...]]:
    """The ``num_modes`` multi-indices ``k`` (``k_i ≥ 1``) with the smallest ``Σ k_i²`` (ties: lexicographic)."""
    start = (1,) * dim
    heap, seen, out = [(dim, start)], {start}, []
    while len(out) < num_modes:
        cost, idx = heapq.heappop(heap)
        out.append(idx)
        for i in range(dim):
            nxt = idx[:i] + (idx[i] + 1,) + idx[i + 1 :]
            if nxt not in seen:
                seen.add(nxt)
                heapq.heappush(heap, (cost + 2 * idx[i] + 1, nxt))
    return out


class BoxLaplacian(Schrodinger):
    r"""``-Δ`` on ``[0, 1]^dim`` with Dirichlet conditions, learned as ``T = scale (shift + Δ)``.

    Args:
        dim: dimension ``d``.
        shift: ``T``'s offset; modes with ``λ < shift`` have positive ``T``-eigenvalues and can be learned.
            Default ``(d + 6) π²``, the third shell: the ground state and the first shell (``1 + d`` modes).
        scale: positive factor of ``T``.
        laplacian: ``"exact"`` or ``"fd"`` (see :class:`~neuralsvd.operators.Schrodinger`).
        quadrature_points: size of the scrambled Sobol rule used for metrics and eigenvalue read-outs
            when ``d > 5``; its error on the exact functions' inner products is reported by ``evaluate`` as
            ``quadrature_error`` (about 1e-2 - 5e-2 in 10D at 2¹⁶ points, like Monte Carlo: products of
            ``2 sin²`` have a large variance) and removed from the distances to first order. ``d ≤ 5``
            uses a tensor Gauss–Legendre rule (at most 10⁵ points, error ≤ 1e-8).
        quadrature_seed: seed of the Sobol scrambling.

    Eigenvalues are reported as those of ``-Δ`` (ascending).
    """

    def __init__(self, dim: int = 5, shift: float | None = None, scale: float = 1.0, laplacian: str = "exact",
                 fd_eps: float = 1e-2, quadrature_points: int = 2**16, quadrature_seed: int = 0):
        check_positive_int("dim", dim)
        check_positive_int("quadrature_points", quadrature_points)
        shift = (dim + 6) * math.pi**2 if shift is None else shift
        super().__init__(self._zero, dim, 1.0, scale, shift, UniformBox(dim, 0.5, center=0.5), laplacian, fd_eps)
        self.quadrature_points, self.quadrature_seed = int(quadrature_points), int(quadrature_seed)

    @staticmethod
    def _zero(x: Tensor) -> Tensor:
        return torch.zeros_like(x[:, 0])

    def quantum_numbers(self, num_modes: int) -> list[tuple[int, ...]]:
        """The multi-indices ``k`` of the ``num_modes`` lowest modes (see :func:`box_multi_indices`)."""
        return box_multi_indices(self.dim, num_modes)

    def exact_eigenvalues(self, num_modes: int) -> Tensor:
        return math.pi**2 * torch.tensor([sum(k * k for k in idx) for idx in self.quantum_numbers(num_modes)],
                                         dtype=torch.float64)

    def exact_eigenfunctions(self, x: Tensor, num_modes: int) -> Tensor:
        idx = torch.tensor(self.quantum_numbers(num_modes), dtype=x.dtype, device=x.device)  # (L, d)
        waves = math.sqrt(2) * torch.sin(math.pi * x.unsqueeze(1) * idx)  # (n, L, d)
        return waves.prod(-1)  # (n, L)

    def quadrature(self) -> quad.Quadrature:
        """Tensor Gauss–Legendre on ``[0, 1]^d`` for ``d ≤ 5``; else a scrambled Sobol set (weights ``1/N``)."""
        if self.dim <= 5:
            rule = quad.box([0.5] * self.dim, 1, {1: 64, 2: 64, 3: 40, 4: 16, 5: 10}[self.dim])
            return quad.Quadrature(rule.points + 0.5, rule.weights)
        return quad.sobol_cube(self.dim, self.quadrature_points, self.quadrature_seed)

    def evaluation_quadrature(self) -> quad.Quadrature:
        """The same rule (the uniform density is 1 on the cube): deterministic eigenvalue read-outs."""
        return self.quadrature()

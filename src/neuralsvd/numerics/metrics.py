"""Accuracy metrics of learned eigenfunctions against the truth, aware of degenerate eigenspaces.

Every metric works on inner-product matrices computed by an accurate quadrature (see
:func:`neuralsvd.evaluate`): ``gram[l, m] = ⟨ψ̂_l, ψ̂_m⟩`` among learned functions and
``cross[l, m] = ⟨ψ̂_l, ψ_m⟩`` between learned and true (orthonormal) functions, both ``(L, L)``, with
learned and true modes in the same order (leading first). True modes are grouped into *blocks* of equal
eigenvalue; inside a block any rotation of the learned functions is equally correct.

Definitions (experiment-facts §3):

* relative eigenvalue error ``|λ̂_l - λ_l| / |λ_l|``;
* orthogonality error: mean over ``l ≠ m`` of ``C_lm²`` with ``C`` the normalized gram;
* subspace distance of a block of size ``k``: ``1 - tr(P̂ P) / k ∈ [0, 1]`` (``P̂``, ``P`` orthogonal
  projections onto the learned and true spans); "avg" is the mean over blocks, "all" the same over all
  ``L`` modes at once;
* angle distance: normalize, align each learned block to its true block by orthogonal Procrustes, then
  ``1 - |cos∠(ψ̂_l, ψ_l)|`` averaged over modes.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "degenerate_blocks",
    "eigenvalue_relative_error",
    "orthogonality_error",
    "subspace_distance",
    "subspace_distances",
    "angle_distance",
    "procrustes_alignment",
]


def degenerate_blocks(eigenvalues: Tensor, rtol: float = 1e-8) -> list[list[int]]:
    """Group consecutive (sorted) eigenvalues that agree to ``rtol`` into blocks of indices."""
    ev = torch.as_tensor(eigenvalues, dtype=torch.float64).flatten()
    blocks: list[list[int]] = []
    for i, value in enumerate(ev.tolist()):
        if blocks and abs(value - ev[blocks[-1][0]].item()) <= rtol * max(abs(value), 1e-300):
            blocks[-1].append(i)
        else:
            blocks.append([i])
    return blocks


def eigenvalue_relative_error(estimates: Tensor, exact: Tensor) -> Tensor:
    """``|λ̂ - λ| / |λ|`` per mode, ``(L,)``."""
    estimates, exact = torch.as_tensor(estimates, dtype=torch.float64), torch.as_tensor(exact, dtype=torch.float64)
    if estimates.shape != exact.shape:
        raise ValueError(f"estimates {tuple(estimates.shape)} and exact {tuple(exact.shape)} differ in shape")
    return (estimates - exact).abs() / exact.abs()


def _normalized(gram: Tensor) -> Tensor:
    d = gram.diagonal().clamp_min(torch.finfo(gram.dtype).tiny).rsqrt()
    return d[:, None] * gram * d[None, :]


def orthogonality_error(gram: Tensor) -> float:
    """Mean of squared normalized off-diagonal inner products (0 for orthogonal functions)."""
    L = gram.shape[0]
    if L < 2:
        return 0.0
    c = _normalized(gram.double())
    off = c - torch.diag(c.diagonal())
    return float((off**2).sum() / (L * (L - 1)))


def _pinv_psd(g: Tensor, rtol: float = 1e-12) -> Tensor:
    w, v = torch.linalg.eigh(g)
    inv = torch.where(w > rtol * w.max().clamp_min(0), 1.0 / w, torch.zeros_like(w))
    return (v * inv) @ v.T


def subspace_distance(gram: Tensor, cross: Tensor, indices: list[int] | None = None) -> float:
    """``1 - tr(P̂ P) / k`` between the learned and true spans of the modes ``indices`` (default: all).

    With ``X = cross[S, S]`` and ``G = gram[S, S]``: ``tr(P̂ P) = tr(G⁺ X Xᵀ)``.
    """
    idx = list(range(gram.shape[0])) if indices is None else list(indices)
    g = gram.double()[idx][:, idx]
    x = cross.double()[idx][:, idx]
    overlap = torch.trace(_pinv_psd(g) @ x @ x.T)
    return float((1 - overlap / len(idx)).clamp(0.0, 1.0))


def subspace_distances(gram: Tensor, cross: Tensor, blocks: list[list[int]]) -> list[float]:
    """:func:`subspace_distance` of each block."""
    return [subspace_distance(gram, cross, b) for b in blocks]


def procrustes_alignment(gram: Tensor, cross: Tensor, indices: list[int]) -> tuple[Tensor, Tensor]:
    """Orthogonal ``R`` aligning the normalized learned functions of a block to the true ones, and the
    resulting cosines ``(k,)``: aligned mode ``j`` is ``Σ_i ψ̂_i R_ij / ‖ψ̂_i‖``."""
    g = _normalized(gram.double())[indices][:, indices]
    d = gram.double().diagonal()[indices].clamp_min(torch.finfo(torch.float64).tiny).rsqrt()
    x = d[:, None] * cross.double()[indices][:, indices]
    u, _, vh = torch.linalg.svd(x)
    r = u @ vh
    cos = (r.T @ x).diagonal() / (r.T @ g @ r).diagonal().clamp_min(torch.finfo(torch.float64).tiny).sqrt()
    return r, cos


def angle_distance(gram: Tensor, cross: Tensor, blocks: list[list[int]]) -> float:
    """Mean over modes of ``1 - |cos|`` after Procrustes alignment inside each block."""
    cosines = torch.cat([procrustes_alignment(gram, cross, b)[1] for b in blocks])
    return float((1 - cosines.abs().clamp(max=1.0)).mean())

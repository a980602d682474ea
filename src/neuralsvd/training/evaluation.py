"""Evaluate a :class:`~neuralsvd.FitResult` against the operator's closed form (metrics.json fields)."""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from typing import Any

import torch
from torch import Tensor

from ..numerics import metrics
from ..numerics.quadrature import Quadrature
from ..operators.base import Operator
from .result import FitResult

__all__ = ["evaluate", "inner_products"]


def _chunked(fn, points: Tensor, chunk: int) -> Tensor:
    return torch.cat([fn(points[i : i + chunk]) for i in range(0, points.shape[0], chunk)], 0)


def inner_products(learned: Any, exact: Any, quad: Quadrature, num_modes: int, chunk: int = 8192
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """``(gram, cross, true_gram)``: ``⟨ψ̂, ψ̂⟩``, ``⟨ψ̂, ψ⟩`` and ``⟨ψ, ψ⟩`` under ``quad``, each (L, L)."""
    psi_hat = _chunked(learned, quad.points, chunk).double()
    psi = _chunked(lambda p: exact(p, num_modes), quad.points, chunk).double()
    return quad.inner(psi_hat, psi_hat), quad.inner(psi_hat, psi), quad.inner(psi, psi)


def _float64_copy(result: FitResult) -> FitResult:
    model = result.decomposition.convert(result.model, lambda m: copy.deepcopy(m).double())
    return dataclasses.replace(result, model=model)


def _orthonormalized_cross(cross: Tensor, true_gram: Tensor, blocks: list[list[int]]) -> Tensor:
    """``⟨ψ̂, ψ̃⟩`` with ``ψ̃_b = ψ_b G_bb^{-1/2}`` the true functions of each degenerate block ``b`` made
    orthonormal under the rule (``G`` their gram there, (L, L)). A rule that integrates the true functions'
    products with error ``ε`` (Monte Carlo; quasi-Monte Carlo in high dimension) would otherwise put a floor
    ``~ε`` under every distance; with it, the exact functions (in any basis of each block) are at distance 0
    under any rule. A no-op for accurate rules."""
    out = cross.clone()
    for b in blocks:
        w, v = torch.linalg.eigh(true_gram[b][:, b])
        out[:, b] = cross[:, b] @ ((v * w.clamp_min(torch.finfo(w.dtype).tiny).rsqrt()) @ v.T)
    return out


def _function_metrics(gram: Tensor, cross: Tensor, blocks: list[list[int]], prefix: str = "") -> dict[str, Any]:
    per_block = metrics.subspace_distances(gram, cross, blocks)
    return {
        f"{prefix}angle_distance": metrics.angle_distance(gram, cross, blocks),
        f"{prefix}subspace_distance_avg": sum(per_block) / len(per_block),
        f"{prefix}subspace_distance_all": metrics.subspace_distance(gram, cross),
        f"{prefix}subspace_distance_blocks": per_block,
        f"{prefix}orthogonality_error": metrics.orthogonality_error(gram),
    }


def evaluate(result: FitResult, operator: Operator | None = None, quadrature: Quadrature | None = None
             ) -> dict[str, Any]:
    """Metrics of ``result`` against ``operator``'s exact spectrum (fields of metrics.json).

    Returns a dict with ``eigenvalues``, ``eigenvalue_stderr`` (the read-out's Monte Carlo standard errors,
    or None; :attr:`FitResult.eigenvalue_stderr`), ``exact_eigenvalues``, ``eigenvalue_relative_error``,
    ``mean_eigenvalue_relative_error``, ``max_eigenvalue_relative_error``, ``angle_distance``,
    ``subspace_distance_avg``, ``subspace_distance_all``, ``subspace_distance_blocks``,
    ``orthogonality_error``, ``blocks`` (lists of mode indices of equal true eigenvalue) and
    ``quadrature_error`` (``max |⟨ψ_l, ψ_m⟩ - δ_lm|`` of the true functions, the rule's own error).
    Fields that need a closed form the operator lacks are ``None``. SVD results also get ``right_*``
    function metrics. Inner products are in float64 on the operator's :meth:`quadrature`; the true
    functions are first made orthonormal under that rule (see :func:`_orthonormalized_cross`).
    """
    op = operator if operator is not None else result.operator
    L = result.eigenvalues.shape[0]
    stderr = result.eigenvalue_stderr
    out: dict[str, Any] = {"eigenvalues": result.eigenvalues.tolist(),
                           "eigenvalue_stderr": None if stderr is None else stderr.tolist()}
    nulls = ("exact_eigenvalues", "eigenvalue_relative_error", "mean_eigenvalue_relative_error",
             "max_eigenvalue_relative_error", "angle_distance", "subspace_distance_avg", "subspace_distance_all",
             "subspace_distance_blocks", "orthogonality_error", "blocks", "quadrature_error")
    out.update(dict.fromkeys(nulls))
    try:
        exact = op.exact_eigenvalues(L).double()
    except NotImplementedError:
        exact = None
    if exact is not None:
        rel = metrics.eigenvalue_relative_error(result.eigenvalues, exact)
        out.update(exact_eigenvalues=exact.tolist(), eigenvalue_relative_error=rel.tolist(),
                   mean_eigenvalue_relative_error=float(rel.mean()), max_eigenvalue_relative_error=float(rel.max()))
        blocks = metrics.degenerate_blocks(exact)
        try:
            if math.isclose(op.exact_eigenvalues(L + 1)[-1].item(), exact[-1].item(), rel_tol=1e-8):
                warnings.warn(f"num_modes={L} splits a degenerate eigenspace: metrics of the last block compare "
                              "against one basis of a larger eigenspace", stacklevel=2)
        except (ValueError, NotImplementedError):
            pass
        out["blocks"] = blocks
    try:
        quad = quadrature or op.quadrature()
    except NotImplementedError:
        return out
    r64 = _float64_copy(result)
    first = next(r64.decomposition.primary(r64.model).parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    points = quad.points.to(device)
    quad = Quadrature(points, quad.weights.to(device))
    if exact is None:
        psi_hat = _chunked(r64.eigenfunctions, points, 8192).double()
        out["orthogonality_error"] = metrics.orthogonality_error(quad.inner(psi_hat, psi_hat))
        return out
    gram, cross, true_gram = inner_products(r64.eigenfunctions, op.exact_eigenfunctions, quad, L)
    out.update(_function_metrics(gram, _orthonormalized_cross(cross, true_gram, blocks), blocks))
    out["quadrature_error"] = float((true_gram - torch.eye(L, dtype=torch.float64, device=device)).abs().max())
    if result.is_svd:
        rq = op.right_quadrature()
        rq = Quadrature(rq.points.to(device), rq.weights.to(device))
        g2, c2, _ = inner_products(r64.right_functions, op.exact_right_functions, rq, L)
        out.update(_function_metrics(g2, c2, blocks, prefix="right_"))
    return out

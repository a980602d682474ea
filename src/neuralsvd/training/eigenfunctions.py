"""A trained result's eigenfunctions as a plain ``nn.Module`` (``x -> result.eigenfunctions(x)``): what
``neuralsvd export`` compiles and what read-outs of learned functions evaluate."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .result import FitResult

__all__ = ["Eigenfunctions"]


class Eigenfunctions(nn.Module):
    """``x -> result.eigenfunctions(x)`` as a plain module (what :func:`neuralsvd.cli.artifacts.export` compiles): the model's
    outputs in mode order, Ritz-mixed and normalized, mapped to the operator's function space."""

    def __init__(self, result: FitResult, right: bool = False):
        super().__init__()
        dec = result.decomposition
        if right and not dec.is_svd:
            raise ValueError("right singular functions exist for SVD results only")
        self.module = dec.modules(result.model)[1 if right else 0]
        self.operator = None if right else result.operator
        p = next(self.module.parameters(), None)
        like = {"dtype": p.dtype, "device": p.device} if p is not None else {}
        norms = result.right_norms if right else result.norms
        mixing = result.mixing if result.mixing is not None else torch.eye(norms.shape[0], dtype=torch.float64)
        self.register_buffer("order", result.order.clone())
        self.register_buffer("matrix", (mixing / norms.unsqueeze(0)).to(**like))  # (L, L): mix, then normalize

    def forward(self, x: Tensor) -> Tensor:
        out = self.module(x.to(self.matrix.dtype) if x.is_floating_point() else x)[:, self.order] @ self.matrix
        if self.operator is None:
            return out
        return self.operator.eigenfunctions_from_model(out.to(x.dtype) if x.is_floating_point() else out, x)

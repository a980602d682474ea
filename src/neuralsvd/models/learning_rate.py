"""The learning rate :func:`~neuralsvd.fit` uses when none is given: one that suits the model.

Under Adam every parameter moves by about the learning rate per step, whatever its gradient's size, so
how fast the *function* moves depends on the model: a layer's output changes by about ``lr × fan-in``
(times its inputs' size). The library's rate ``1e-3`` is the one the 128-wide :class:`ParallelMLP` /
:class:`MLP` were studied with; a network of width ``w`` gets ``1e-3 · 128 / w`` (the ``1/fan-in`` rule
of μP for Adam), so a ``(64, 64)`` network trains at ``2e-3`` and moves its functions about as fast.
A :class:`Tabular` model's parameters *are* the function's values (of size ``√λ`` on the uniform
measure), so it gets ``1e-2``. Measured on the robustness benchmark (docs/robustness.md).
"""

from __future__ import annotations

from torch import nn

from .networks import Tabular, _BatchedMLP

__all__ = ["BASE_LR", "BASE_WIDTH", "TABULAR_LR", "default_lr"]

#: the learning rate of a network of width :data:`BASE_WIDTH` (and of any model not named below)
BASE_LR = 1e-3
BASE_WIDTH = 128
#: the learning rate of a :class:`Tabular` model
TABULAR_LR = 1e-2


def default_lr(model: nn.Module | tuple[nn.Module, ...]) -> float:
    """The learning rate for ``model`` (a pair for SVD: the smaller of the two): :data:`TABULAR_LR` for
    :class:`Tabular`, ``BASE_LR · BASE_WIDTH / max(hidden)`` for :class:`ParallelMLP` and :class:`MLP`, the
    rate of the wrapped ``net`` for a wrapper with one (graph :class:`~neuralsvd.operators.graph.NodeFeatures`),
    else :data:`BASE_LR`."""
    if isinstance(model, (tuple, list)):
        return min(default_lr(m) for m in model)
    if isinstance(model, Tabular):
        return TABULAR_LR
    if isinstance(model, _BatchedMLP):
        return BASE_LR * BASE_WIDTH / max(model.widths)
    inner = getattr(model, "net", None)
    if isinstance(inner, nn.Module):
        return default_lr(inner)
    return BASE_LR

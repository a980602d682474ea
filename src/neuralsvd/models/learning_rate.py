"""The learning rate :func:`~neuralsvd.fit` uses when none is given: one that suits the model.

Under Adam every parameter moves by about the learning rate per step, whatever its gradient's size, so
how fast the *function* moves depends on the model: a layer's output changes by about ``lr × fan-in``
(times its inputs' size), and the changes of the layers add up along the network. The library's rate
``1e-3`` is the one the :class:`ParallelMLP` / :class:`MLP` of hidden widths ``(128, 128, 128)`` were studied
with, whose layers after the first have fan-ins summing to :data:`BASE_FAN_IN` ``= 384``; a network with
hidden widths ``w_1 … w_k`` gets ``1e-3 · 384 / Σ w_i``, so that by this count its functions move as fast: a
``(64, 64)`` network trains at ``3e-3``. (Scaling by the widest layer alone, the ``1/fan-in`` rule of μP, gave that
network ``2e-3``: its functions moved more slowly, and it was measured slower on the robustness benchmark,
docs/convergence-study.md §17.) A :class:`Tabular` model's parameters *are* the function's values (of size
``√λ`` on the uniform measure), so it gets ``1e-2``. Measured on the robustness benchmark (docs/robustness.md).
"""

from __future__ import annotations

from torch import nn

from .networks import Tabular, _BatchedMLP

__all__ = ["BASE_FAN_IN", "BASE_LR", "TABULAR_LR", "default_lr"]

#: the learning rate of a network whose hidden widths sum to :data:`BASE_FAN_IN` (and of any model not named below)
BASE_LR = 1e-3
#: the summed hidden widths of the paper's ``(128, 128, 128)`` networks
BASE_FAN_IN = 384
#: the learning rate of a :class:`Tabular` model
TABULAR_LR = 1e-2


def default_lr(model: nn.Module | tuple[nn.Module, ...]) -> float:
    """The learning rate for ``model`` (a pair for SVD: the smaller of the two): :data:`TABULAR_LR` for
    :class:`Tabular`, ``BASE_LR · BASE_FAN_IN / sum(hidden)`` for :class:`ParallelMLP` and :class:`MLP`, the
    rate of the wrapped ``net`` for a wrapper with one (graph :class:`~neuralsvd.operators.graph.NodeFeatures`),
    else :data:`BASE_LR`."""
    if isinstance(model, (tuple, list)):
        return min(default_lr(m) for m in model)
    if isinstance(model, Tabular):
        return TABULAR_LR
    if isinstance(model, _BatchedMLP):
        return BASE_LR * BASE_FAN_IN / sum(model.widths)
    inner = getattr(model, "net", None)
    if isinstance(inner, nn.Module):
        return default_lr(inner)
    return BASE_LR

"""Reordering a model's modes in place, with the optimizer's moments and the EMA weights.

Used by the rescue (:mod:`~neuralsvd.training.rescue`) to move a lost mode to the last slot. Under sequential
NestedLoRA slot ``l`` learns the top eigenfunction of ``T`` deflated by the slots before it; the learned
functions themselves do not depend on which slot holds them. So moving the network of slot ``l`` to the end
(slots ``l+1, …`` each move up one) is a relabelling: every other mode keeps its function, its optimizer
state and its EMA copy, and its deflation now excludes only the moved mode.

A model can be reordered when each of its parameters has a mode axis (``model.mode_axes()`` with no
``None``: modes with parameters of their own, :class:`~neuralsvd.models.ParallelMLP`,
:class:`~neuralsvd.models.Tabular`, a graph's node model over either); its ``output_gain`` buffers (one
entry per mode, in the order of the outputs) move with the modes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["permutable", "permute_modes", "to_last"]


def permutable(model: nn.Module) -> bool:
    """Whether every parameter of ``model`` belongs to one mode along a declared axis (``mode_axes``)."""
    axes = getattr(model, "mode_axes", None)
    if axes is None:
        return False
    declared = axes()
    return all(declared.get(name) is not None for name, _ in model.named_parameters())


def to_last(mode: int, num_modes: int) -> list[int]:
    """The order that moves ``mode`` to the last slot and every later mode up one: new slot ``k`` holds old
    mode ``order[k]``."""
    return [*range(mode), *range(mode + 1, num_modes), mode]


@torch.no_grad()
def permute_modes(model: nn.Module, order: list[int], optimizer: torch.optim.Optimizer | None = None,
                  ema: list[Tensor] | None = None) -> None:
    """Reorder the modes of ``model`` (:func:`permutable`): new mode ``k`` is old mode ``order[k]``. The
    optimizer's per-entry state (Adam's moments) and ``ema`` (one tensor per parameter, in the order of
    ``model.parameters()``) are reordered alike."""
    axes = model.mode_axes()
    index = torch.as_tensor(order)
    for i, (name, p) in enumerate(model.named_parameters()):
        axis = axes[name]
        take = index.to(p.device)
        tensors = [p] + ([] if optimizer is None else [v for v in optimizer.state.get(p, {}).values()
                                                       if isinstance(v, Tensor) and v.shape == p.shape])
        tensors += [] if ema is None else [ema[i]]
        for t in tensors:
            t.copy_(t.index_select(axis, take))
    for name, b in model.named_buffers():
        if name.rsplit(".", 1)[-1] == "output_gain":
            flat = b.view(-1)  # (L,): one entry per mode
            flat.copy_(flat[index.to(b.device)])

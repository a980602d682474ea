"""Reviving collapsed modes: ``f_l ≡ 0`` is a stationary point of NestedLoRA, so a mode that collapses
there stays there under any gradient method. :class:`ModeRevival` re-initializes such a mode.

Rule. At each check of :func:`~neuralsvd.fit` (every ``log_every`` steps), mode ``l`` is *collapsed*
when its batch estimate of ``‖f_l‖²`` (SVD: ``‖f_l‖‖g_l‖``) is exactly 0, or is below
:data:`COLLAPSE_RATIO` times the magnitude of its Rayleigh quotient. At the objective's optimum the two
are equal (``‖f_l‖² = λ_l``), so the rule never fires there: the optimum is a fixed point of training with
the rule, as without it. The only exception is a mode whose optimum is ``f_l = 0`` (the operator has
fewer than ``L`` positive eigenvalues): it is re-initialized at most :data:`MAX_REVIVALS` times, then
left alone (as every mode after that many revivals).

Re-initialization draws the mode's parameters afresh from the model's own initialization
(``model.reset_mode(l, generator)``), clears the optimizer's state of the entries that changed, copies
them into the EMA weights and lets the loss forget statistics of the mode (:meth:`~neuralsvd.losses.SpectralLoss.reset_mode`). The generator is seeded from the run's seed,
the step and the mode, so revivals are reproducible and identical on every data-parallel rank.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .distributed import step_seed

if TYPE_CHECKING:
    from ..losses.base import SpectralLoss

__all__ = ["COLLAPSE_RATIO", "MAX_REVIVALS", "ModeRevival", "collapsed_modes", "forget_changed"]

#: a mode is collapsed when ``‖f_l‖² < COLLAPSE_RATIO · |λ̂_l|`` (1 at the optimum; early training stays above ~1e-3)
COLLAPSE_RATIO = 1e-5
#: re-initializations per mode at most
MAX_REVIVALS = 3


def collapsed_modes(norms: Tensor, rayleigh: Tensor) -> Tensor:
    """``(L,)`` bool: modes with ``norms == 0``, or ``norms < COLLAPSE_RATIO · |rayleigh|``.

    ``norms`` are the batch estimates of ``‖f_l‖²`` (or ``‖f_l‖‖g_l‖``), ``rayleigh`` the Rayleigh quotients
    (NaN for a zero mode), both ``(L,)``."""
    finite = torch.isfinite(rayleigh)
    small = finite & (norms < COLLAPSE_RATIO * rayleigh.abs())
    return (norms == 0) | small


class ModeRevival:
    """The revival rule of this module for one run (see the module docstring).

    Args:
        modules: the trained modules (one for EVD, ``(left, right)`` for SVD); each needs
            ``reset_mode(l, generator)``; without it the rule is off.
        seed: the run's seed (with the step and mode it seeds each re-initialization).
    """

    def __init__(self, modules: tuple[nn.Module, ...], seed: int):
        self.modules, self.seed = modules, seed
        self.enabled = all(hasattr(m, "reset_mode") for m in modules)
        self.count: dict[int, int] = {}

    def state_dict(self) -> dict[str, dict[int, int]]:
        return {"count": dict(self.count)}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.count = {int(k): int(v) for k, v in dict(state.get("count", {})).items()}

    def __call__(self, norms: Tensor | None, rayleigh: Tensor, step: int, optimizer: torch.optim.Optimizer,
                 ema: list[Tensor] | None, loss: SpectralLoss) -> list[int]:
        """Re-initialize the collapsed modes (at most :data:`MAX_REVIVALS` times each) and return them.
        ``norms`` None (a loss without a norm estimator) turns the rule off. Synchronizes with the device."""
        if not self.enabled or norms is None:
            return []
        dead = [l for l in torch.nonzero(collapsed_modes(norms, rayleigh)).flatten().tolist()
                if self.count.get(l, 0) < MAX_REVIVALS]
        for l in dead:
            self.count[l] = self.count.get(l, 0) + 1
            self._reinitialize(l, step, optimizer, ema)
            loss.reset_mode(l)
            warnings.warn(f"mode {l} collapsed to f ≈ 0 by step {step} (‖f‖² = {float(norms[l]):.3g}, Rayleigh "
                          f"quotient {float(rayleigh[l]):.3g}): re-initialized it (revival {self.count[l]} of at most "
                          f"{MAX_REVIVALS})", RuntimeWarning, stacklevel=3)
        return dead

    def _reinitialize(self, mode: int, step: int, optimizer: torch.optim.Optimizer, ema: list[Tensor] | None) -> None:
        params = [p for m in self.modules for p in m.parameters()]
        before = [p.detach().clone() for p in params]
        for k, m in enumerate(self.modules):
            g = torch.Generator(device=next(m.parameters()).device)
            g.manual_seed(step_seed(self.seed, step, mode, k))
            m.reset_mode(mode, g)
        forget_changed(params, before, optimizer, ema)


@torch.no_grad()
def forget_changed(params: list[Tensor], before: list[Tensor], optimizer: torch.optim.Optimizer,
                   ema: list[Tensor] | None) -> None:
    """After some entries of ``params`` were set outside the optimizer (``before``: their earlier values,
    same order): clear the optimizer's moments of those entries and copy them into the EMA weights, so the
    training continues from them as from a fresh start."""
    for i, (p, old) in enumerate(zip(params, before)):
        changed = p != old  # the entries that were set, same shape as p
        if not bool(changed.any()):
            continue
        for value in optimizer.state.get(p, {}).values():
            if isinstance(value, Tensor) and value.shape == p.shape:
                value.masked_fill_(changed, 0)
        if ema is not None:
            ema[i].copy_(torch.where(changed, p, ema[i]))

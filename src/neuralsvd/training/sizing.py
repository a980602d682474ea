"""Keeping every mode at its best size: a damped line search along each mode's size, after each step.

Why. Under the NestedLoRA gradient, mode ``k`` is deflated by each earlier mode ``m`` through
``f_m ⟨f_m, f_k⟩``, which removes ``m``'s eigenvalue exactly only when ``‖f_m‖² = λ_m``. With Adam the
trained modes' sizes wander: ±10–20% from one check to the next on the robustness benchmark's problems
(docs/convergence-study.md §14), and every such error leaves ``(λ_m − ‖f_m‖²) φ_m φ_mᵀ`` in the operator
that mode ``k`` learns from. When the leading eigenvalue is several times the last one (the benchmark's
1:5 oscillator at its shift: 8 against 2) a 20% error of mode 0 is as large as the last mode's whole
eigenvalue, and the last mode drifts onto an earlier mode's shape, dies, or converges late.

The rule. After each optimizer step, every mode whose deflated quotient ``ρ̃_l`` (the objective's best
``‖f_l‖²`` for its present shape with the earlier modes fixed,
:func:`~neuralsvd.training.warm_start.deflated_quotients`) is positive is multiplied by
``(ρ̃_l / ‖f_l‖²)^(GAIN / 2)`` (the ratio clipped to ``[1 / MAX_RATIO, MAX_RATIO]``) through the model's output
gain, from the step's own batch statistics (global-batch means when data-parallel, so every rank scales
alike). It is a damped step of exact minimization along each mode's size: the same objective, the same
fixed points (at the optimum ``ρ̃_l = ‖f_l‖² = λ_l`` and the factor is 1), and the shapes are trained by
the plain NestedLoRA gradient as before. Modes with ``ρ̃_l ≤ 0`` (copies of earlier modes, dead modes) are
left alone, to the rescue and revival rules. The squared overlaps in ``ρ̃`` are the products of the two
half-batches' estimates (``LossOutput.gram_squared``): the square of one batch's estimate is biased upwards
by its noise (about ``Σ_{m<l} λ_m / n``), which would hold the later modes a few percent below their best
size on a 256-point batch.

Scope: EVD with a loss whose norms are eigenvalues (NestedLoRA) and a model with ``scale_outputs``
(:class:`~neuralsvd.models.ParallelMLP`, :class:`~neuralsvd.models.MLP`, :class:`~neuralsvd.models.Tabular`).
The output gain is a buffer of the model, so checkpoints hold it and a resumed run repeats every scaling.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .warm_start import deflated_quotients

__all__ = ["GAIN", "MAX_RATIO", "SizeControl"]

#: the exponent's damping: each step moves ``log ‖f_l‖²`` by this fraction of its distance to ``log ρ̃_l``
GAIN = 0.1
#: the ratio ``ρ̃_l / ‖f_l‖²`` is clipped to ``[1 / MAX_RATIO, MAX_RATIO]`` before damping
MAX_RATIO = 2.0


class SizeControl:
    """The rule of this module for one run's ``model`` (off unless it has ``scale_outputs``)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.enabled = hasattr(model, "scale_outputs")

    @torch.no_grad()
    def __call__(self, gram: Tensor, inner: Tensor, gram_squared: Tensor | None = None, rate: float = 1.0) -> None:
        """Scale the modes from a batch's Gram matrix ``E[f fᵀ]`` ``(L, L)``, ``a_l = E[f_l T f_l]`` ``(L,)``
        and, where the loss has one, its estimate of ``E[f fᵀ] ** 2`` without the batch-noise bias
        (:class:`~neuralsvd.losses.base.LossOutput`); ``rate``: the learning-rate schedule's factor at this
        step, which scales the damping."""
        if not self.enabled:
            return
        gram = gram.double()
        norms = gram.diagonal()
        squared = None if gram_squared is None else gram_squared.double()
        target = deflated_quotients(gram, inner.double(), squared)  # (L,)
        ok = (target > 0) & (norms > 0) & torch.isfinite(target)
        ratio = torch.where(ok, target / norms.clamp_min(torch.finfo(norms.dtype).tiny), 1.0)
        self.model.scale_outputs(ratio.clamp(1 / MAX_RATIO, MAX_RATIO) ** (GAIN * rate / 2))

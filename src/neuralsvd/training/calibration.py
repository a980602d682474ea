"""Capping the initial size of NestedLoRA's modes.

NestedLoRA's optimum carries the eigenvalues in the functions' norms (``‖f_l‖² = λ_l``), while a network
starts wherever its initialization puts it. Under Adam the operator's scale and the initial size are one
lever: training ``k·g`` on ``T`` is training ``g`` on ``T / k²`` (the loss changes by ``k⁴``, to which Adam
is blind). Modes that start much larger than their targets must first shrink, and networks shrink by
cancelling large terms in the output layer, where every Adam step is then a large relative change
(docs/convergence-study.md §8–9 measures it, and what this rule changed).

The rule. For a fixed shape ``f_l``, the objective's own choice of size is ``‖f_l‖² = ρ_l``, its Rayleigh
quotient ``⟨f_l, T f_l⟩ / ‖f_l‖²`` (the minimum over ``s`` of ``-2 s² ⟨f, Tf⟩ + s⁴ ‖f‖⁴``). Before the first
step, every mode whose squared norm exceeds ``ratio · |ρ_l|`` is multiplied by the fixed factor ``a_l < 1``
that brings it there (the model's output gain, see ``scale_outputs``); smaller modes are kept. SVD: the
product ``‖f_l‖‖g_l‖`` against ``ratio · |⟨f_l, T g_l⟩| / (‖f_l‖‖g_l‖)``, each side by ``a_l``. All on the
first training batch (its global batch, data-parallel). Capped modes no longer depend on the operator's
scale (both sides scale with it): a run on ``c T`` is the run on ``T`` with every function ``√c`` times
larger. The factor is fixed, not trained: the function class, the objective and its optimum
(``f_l = √λ_l φ_l``) are unchanged, only the start moves. Setting every mode to a tenth of its quotient
(which also grows small modes) was measured worse (the study, §9).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..operators.base import Operator

__all__ = ["INIT_RATIO", "calibrate_output_scale", "scale_factors"]

#: the default ``ratio``: the cap on the initial ``‖f_l‖²`` as a multiple of ``|ρ_l|``
INIT_RATIO = 1.0


def scale_factors(norms: Tensor, quotients: Tensor, ratio: float) -> Tensor:
    """``(L,)`` factors ``a_l = min(1, sqrt(ratio · |quotients_l| / norms_l))``: a mode larger than the cap
    is shrunk to it, a smaller one kept; 1 where either side is 0 or not finite. ``norms``: ``‖f_l‖²``
    (SVD: ``‖f_l‖‖g_l‖``)."""
    cap = ratio * quotients.abs()
    ok = torch.isfinite(cap) & torch.isfinite(norms) & (cap > 0) & (norms > cap)
    return torch.where(ok, (cap / torch.where(ok, norms, torch.ones_like(norms))).sqrt(), torch.ones_like(norms))


@torch.no_grad()
def calibrate_output_scale(modules: tuple[nn.Module, ...], operator: Operator, batch: Tensor | tuple[Tensor, Tensor],
                           ratio: float = INIT_RATIO,
                           mean: Callable[..., tuple[Tensor, ...]] = lambda *stats: stats) -> Tensor | None:
    """Apply the rule of this module on ``batch`` (``x``, or ``(x, y)`` for SVD) and return the factors
    ``a_l`` ``(L,)``; None (nothing changed) when a module has no ``scale_outputs`` or was scaled before
    (a model trained by an earlier ``fit``: its size is the training's, not the initialization's).
    ``mean`` turns this process's batch means into the global batch's (data-parallel: the loss's
    ``batch_mean``), so that every rank computes the same factors."""
    if not all(hasattr(m, "scale_outputs") and not bool(m.output_scaled) for m in modules):
        return None
    if len(modules) == 1:
        fx, tfx = operator.apply(modules[0], batch)  # (n, L) each
        norms, inner = mean(fx.pow(2).mean(0), (fx * tfx).mean(0))  # ‖f_l‖², ⟨f_l, T f_l⟩
        factors = scale_factors(norms, inner / norms, ratio)
        modules[0].scale_outputs(factors)
        return factors
    x, y = batch
    fx, gy, _, tadj_gx = operator.apply_svd(modules[0], modules[1], x, y)
    f2, g2, inner = mean(fx.pow(2).mean(0), gy.pow(2).mean(0), (fx * tadj_gx).mean(0))
    norms = (f2 * g2).sqrt()  # ‖f_l‖‖g_l‖
    factors = scale_factors(norms, inner / norms, ratio)
    for m in modules:  # each side by a_l: the product by a_l²
        m.scale_outputs(factors)
    return factors

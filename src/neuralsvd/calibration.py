"""Calibrating the initial size of NestedLoRA's modes to the operator's scale.

NestedLoRA's optimum carries the eigenvalues in the functions' norms (``‖f_l‖² = λ_l``), so multiplying the
operator by ``c`` multiplies every target by ``√c`` while a network's initial outputs stay where its
initialization put them. Under Adam the two are the same thing: training ``k·g`` on ``T`` equals training
``g`` on ``T / k²`` (the loss changes by the factor ``k⁴``, to which Adam is blind), so the operator's scale
only acts through how large the initial functions are relative to their targets, and that ratio decided
whether a run converged (docs/convergence-study.md §9: 2D hydrogen 0.15 vs 1.1e-3 mean energy error at
10k steps; the 2D oscillator 1.5e-3 vs 1.2e-2 with 3× larger, 7e-2 with √10× smaller initial functions).

The rule. Before the first step, each mode's output is multiplied by a fixed factor ``a_l`` (the model's
output gain, see ``scale_outputs``) so that its squared norm is ``ratio · |ρ_l|``, ``ρ_l`` its Rayleigh
quotient ``⟨f_l, T f_l⟩ / ‖f_l‖²`` (SVD: ``‖f_l‖‖g_l‖ = ratio · |⟨f_l, T g_l⟩| / (‖f_l‖‖g_l‖)``, both
sides by ``√a_l``), all estimated on one batch. Both sides of that equation scale with ``c``, so training
no longer depends on the operator's scale: a run on ``c T`` is the run on ``T`` with every function
``√c`` times larger. The factor is fixed, not trained: it does not change the function class, the
objective or its optimum (``f_l = √λ_l φ_l``), only where the optimizer starts.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .decomposition import Decomposition
from .operators.base import Operator

__all__ = ["INIT_RATIO", "calibrate_output_scale", "scale_factors"]

#: the default ``ratio``: initial ``‖f_l‖²`` as a fraction of ``|ρ_l|`` (measured, see the module docstring)
INIT_RATIO = 1.0


def scale_factors(norms: Tensor, quotients: Tensor, ratio: float) -> Tensor:
    """``(L,)`` factors ``a_l = min(1, sqrt(ratio · |quotients_l| / norms_l))``: a mode larger than the cap
    is shrunk to it, a smaller one kept; 1 where either side is 0 or not finite. ``norms``: ``‖f_l‖²``
    (SVD: ``‖f_l‖‖g_l‖``)."""
    cap = ratio * quotients.abs()
    ok = torch.isfinite(cap) & torch.isfinite(norms) & (cap > 0) & (norms > cap)
    return torch.where(ok, (cap / torch.where(ok, norms, torch.ones_like(norms))).sqrt(), torch.ones_like(norms))


@torch.no_grad()
def calibrate_output_scale(modules: tuple[nn.Module, ...], decomposition: Decomposition, operator: Operator,
                           batch, ratio: float = INIT_RATIO) -> Tensor | None:
    """Apply the rule of this module on ``batch`` (``x``, or ``(x, y)`` for SVD) and return the factors
    ``a_l`` ``(L,)``; None (nothing changed) when a module has no ``scale_outputs`` or was scaled before
    (a model trained by an earlier ``fit``: its size is the training's, not the initialization's)."""
    if not all(hasattr(m, "scale_outputs") and not bool(m.output_scaled) for m in modules):
        return None
    if len(modules) == 1:
        fx, tfx = operator.apply(modules[0], batch)  # (n, L) each
        norms = fx.pow(2).mean(0)
        quotients = (fx * tfx).mean(0) / norms
        factors = scale_factors(norms, quotients, ratio)
        modules[0].scale_outputs(factors)
        return factors
    x, y = batch
    fx, gy, _, tadj_gx = operator.apply_svd(modules[0], modules[1], x, y)
    norms = (fx.pow(2).mean(0) * gy.pow(2).mean(0)).sqrt()  # ‖f_l‖‖g_l‖
    quotients = (fx * tadj_gx).mean(0) / norms
    factors = scale_factors(norms, quotients, ratio)
    for m in modules:
        m.scale_outputs(factors.sqrt())
    return factors

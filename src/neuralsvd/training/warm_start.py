"""Warm start: shapes with positive Rayleigh quotients before NestedLoRA trains.

Why. ``f_l ≡ 0`` is a saddle of NestedLoRA, and for a shape whose Rayleigh quotient
``ρ_l = ⟨f_l, T f_l⟩ / ‖f_l‖²`` is negative the objective's best size is zero. A randomly initialized
network spreads over the sampler's whole width; on a Schrödinger problem whose potential grows quickly
there, every mode starts with a large *negative* quotient (energies far above the shift), so training
first shrinks every mode toward ``f = 0``. A network shrinks through its output layer, where the hidden
features stop receiving gradient; the modes that find a positive direction in their random features
climb out and take the low levels, the others stall near zero (docs/convergence-study.md §10).

The rule. When some mode of the first batch has ``ρ_l ≤ 0``, the modes' *shapes* are trained first, on
``J = Σ_l [-ρ̃_l / s + (log ‖f_l‖²)²]``. ``ρ̃_l`` (:func:`deflated_quotients`) is mode ``l``'s quotient under
``T`` deflated by the earlier modes at their own sizes: sequential NestedLoRA's best ``‖f_l‖²`` for that
shape, so a mode that merely copies an earlier one scores zero. ``s`` is the mean ``|ρ̃_l|`` (detached), so
``J`` does not depend on the operator's scale; the second term (and, for models with an output gain,
renormalizing through it after every step) keeps every norm near 1, so no mode can shrink away. Each mode
is moved through its own statistics only (earlier modes held fixed, as in sequential nesting). The warm
start stops once every ``ρ̃_l`` has been positive on :data:`PATIENCE` consecutive batches, or after
``max_steps`` batches; it uses its own Adam at ``fit``'s learning rate, discarded afterwards. Then each
mode is sized at ``‖f_l‖² = |ρ̃_l|`` through the output gain (:mod:`~neuralsvd.training.calibration`): the
objective's own size where ``ρ̃_l > 0``, and a size in the operator's units otherwise, so a run on ``c·T``
is still the run on ``T`` with every function ``√c`` times larger. NestedLoRA then trains as before: the
objective and its optimum (``f_l = √λ_l φ_l``, where ``ρ_l = λ_l > 0``, so the rule never fires there) are
unchanged; only the start moves. A problem whose first batch has every ``ρ_l > 0`` is not touched (its run
is bitwise the one without this rule).

Data parallel: the statistics are the global batch's (``mean``), and the surrogate below has the global
objective's gradient once the ranks' gradients are averaged (``average_gradients``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..operators.base import Operator

__all__ = ["PATIENCE", "WARM_START", "deflated_quotients", "needs_warm_start", "warm_start"]

#: the default ``max_steps`` of the warm start (``fit(warm_start=...)``)
WARM_START = 1000
#: consecutive batches with every quotient positive that end the warm start
PATIENCE = 20

Mean = Callable[..., tuple[Tensor, ...]]


def _statistics(model: nn.Module, operator: Operator, x: Tensor, mean: Mean) -> tuple[Tensor, ...]:
    """``f(x)``, ``(Tf)(x)`` (detached, each ``(n, L)``), and the global batch's Gram matrix
    ``G = E[f fᵀ]`` ``(L, L)`` and ``a_l = ⟨f_l, T f_l⟩`` ``(L,)``."""
    fx, tfx = operator.apply(model, x)
    f = fx.detach()
    gram, inner = mean(f.T @ f / f.shape[0], (f * tfx).mean(0))
    return fx, tfx, gram, inner


def deflated_quotients(gram: Tensor, inner: Tensor) -> Tensor:
    """``(L,)`` ``ρ̃_l = ρ_l − Σ_{i<l} max(ρ_i, 0) ⟨f̂_i, f̂_l⟩²``: mode ``l``'s Rayleigh quotient under ``T``
    deflated by the earlier modes at their own sizes (``f̂`` unit-norm shapes, ``ρ_l = a_l / G_ll``). The
    best ``‖f_l‖²`` of sequential NestedLoRA for that shape, the others fixed; zero when ``ρ̃_l ≤ 0``."""
    norms = gram.diagonal()
    rho = inner / norms
    overlap2 = gram.pow(2) / (norms[:, None] * norms[None, :])  # ⟨f̂_l, f̂_i⟩²
    return rho - (overlap2.tril(-1) * rho.clamp_min(0)[None, :]).sum(1)


def needs_warm_start(model: nn.Module, operator: Operator, x: Tensor, mean: Mean = lambda *stats: stats) -> bool:
    """Whether some mode's Rayleigh quotient ``ρ_l`` on the batch ``x`` is not positive (the trigger; the
    warm start itself then runs until the stricter deflated quotients are positive). Never when a mode is
    exactly zero (its quotient is 0/0: the revival rule's case, :mod:`~neuralsvd.training.revival`), and once
    per model, like the initial-size cap: never for a model whose output gain was already set
    (``output_scaled``: trained by an earlier ``fit``, its start is that training's)."""
    if bool(getattr(model, "output_scaled", False)):
        return False
    with torch.no_grad():
        _, _, gram, inner = _statistics(model, operator, x, mean)
    norms = gram.diagonal()
    if not bool((norms > 0).all() and torch.isfinite(inner).all()):
        return False
    return not bool((inner / norms > 0).all())


def warm_start(model: nn.Module, operator: Operator, sample: Callable[[], Tensor], lr: float, max_steps: int,
               mean: Mean = lambda *stats: stats,
               average_gradients: Callable[..., tuple[Tensor, ...]] = lambda params, *extra: extra,
               modes: Tensor | None = None, fraction: float = 0.0) -> int:
    """Apply the rule of this module to ``model`` (EVD, ``x (n, d) -> (n, L)``) with batches from
    ``sample()``, and return the number of steps taken.

    ``mean`` turns this process's batch means into the global batch's and ``average_gradients(params)``
    averages the gradients over processes (data-parallel; identities in one process). ``modes`` (``(L,)``
    bool, default all) restricts the rule to those modes: only their statistics pull, only their gains
    move (the others' parameters keep their values when the model's modes have parameters of their own,
    :class:`~neuralsvd.models.ParallelMLP`, :class:`~neuralsvd.models.Tabular`). The rule ends once every
    selected mode has had ``ρ̃_l > fraction · ρ_l`` on :data:`PATIENCE` consecutive batches (``fraction`` 0:
    ``ρ̃_l > 0``; see :mod:`~neuralsvd.training.rescue` for 1/2)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    gain = hasattr(model, "scale_outputs")
    streak = 0
    for step in range(max_steps + 1):
        fx, tfx, gram, inner = _statistics(model, operator, sample(), mean)
        rho = deflated_quotients(gram, inner)
        chosen = torch.ones_like(rho, dtype=torch.bool) if modes is None else modes.to(rho.device)
        healthy = rho > fraction * inner / gram.diagonal()
        streak = streak + 1 if bool(healthy[chosen].all()) else 0
        if streak >= PATIENCE or step == max_steps:
            break
        opt.zero_grad(set_to_none=True)
        _surrogate(fx, tfx, gram, inner, rho, chosen).backward()
        average_gradients(params)
        opt.step()
        if gain:  # keep every ‖f_l‖² near 1 through the output gain (the objective is blind to it)
            with torch.no_grad():
                model.scale_outputs(torch.where(chosen, gram.diagonal().rsqrt(), 1.0))
    if gain:  # sizes in the operator's units: ‖f_l‖² = |ρ̃_l|, sequential NestedLoRA's choice where ρ̃_l > 0
        with torch.no_grad():
            size = (rho.abs() / gram.diagonal()).sqrt()
            model.scale_outputs(torch.where(chosen & (rho != 0), size, 1.0))
    return step


def _surrogate(fx: Tensor, tfx: Tensor, gram: Tensor, inner: Tensor, rho: Tensor, chosen: Tensor) -> Tensor:
    """A scalar whose gradient is that of ``J = Σ_l [-ρ̃_l / s + (log ‖f_l‖²)²]`` over the ``chosen`` modes
    (``s`` the mean ``|ρ̃_l|`` of those, detached, at least a thousandth of their mean ``|ρ_l|``) with each mode's gradient through its own statistics only (the earlier modes of the
    deflation are held fixed, as in sequential nesting). With ``n_l = G_ll``: ``∂J/∂a_l = -1/(s n_l)``,
    ``∂J/∂n_l = ρ̃_l/(s n_l) + 2 log(n_l)/n_l``, ``∂J/∂G_li = 2 max(ρ_i, 0) G_li/(s n_i n_l)`` for ``i < l``;
    and ``∇n_l = 2⟨∇f_l, f_l⟩``, ``∇a_l = 2⟨∇f_l, Tf_l⟩`` (``T`` self-adjoint), ``∇G_li = ⟨∇f_l, f_i⟩``."""
    norms = gram.diagonal()  # (L,)
    floor = 1e-3 * (inner / norms)[chosen].abs().mean()  # an exact copy has ρ̃ = 0: stay finite, scale-free
    scale = torch.maximum(rho[chosen].abs().mean(), floor).clamp_min(torch.finfo(rho.dtype).tiny)
    d_inner = -1.0 / (scale * norms)
    d_norms = rho / (scale * norms) + 2.0 * norms.log() / norms
    rho_plain = (inner / norms).clamp_min(0)
    d_gram = (2.0 * rho_plain[None, :] * gram / (scale * norms[None, :] * norms[:, None])).tril(-1)  # (L, L): [l, i]
    f = fx.detach()
    pull = 2.0 * d_norms * f + 2.0 * d_inner * tfx + f @ d_gram.T  # (n, L)
    return (fx * pull).mean(0)[chosen].sum()

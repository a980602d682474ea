"""A fresh start for a lost mode: the best shape in one network's hidden span, or among products of the
other modes with the coordinates.

Why. A mode that copies an earlier one sits at a saddle of its deflated quotient ``ρ̃`` (the gradient of
``ρ̃`` vanishes at the copy), and a freshly drawn network starts far from every eigenfunction: on a
potential that grows quickly its quotient is large and negative, and the rescue's warm start
(:mod:`~neuralsvd.training.rescue`) needs more than a thousand batches to bring it back
(docs/convergence-study.md §16). The eigenfunctions that a run misses are usually close to an
eigenfunction it has times a linear function of the coordinates: the next state along an axis of an
oscillator is exactly ``x_j`` times the previous one (Hermite recursion), a well's excited states are
its ground state times a node, and a separable problem's product states are sums of such terms.

The rule. On a batch, with the other modes ``f_m`` (``m ≠ l``) held fixed, the basis
``b = [f_m, (x_j − x̄_j) f_m]`` (``K = (L − 1)(d + 1)`` functions) is put through the operator, and the
Rayleigh–Ritz problem of ``T`` deflated by the other modes at their own sizes (as in
:func:`~neuralsvd.training.warm_start.deflated_quotients`) is solved in its span (directions whose Gram
eigenvalue is below :data:`RCOND` of the largest are dropped). Its top vector ``g = b c`` (unit norm) is
the target: mode ``l``'s network, drawn afresh, is fitted to ``g`` by least squares for :data:`FIT_STEPS`
batches (its own Adam, the rate decaying to 0; the other modes' parameters do not move). Only the start moves: NestedLoRA's
objective and optimum are untouched, and the caller decides whether to keep the result.

The transplant (:func:`transplant_start`, tried first for disjoint networks). A fresh network fitted to that
target by least squares starts far below it (double-well-3d: ``ρ̃`` −5 … −6.6 against the target's 1;
docs/convergence-study.md §16): the fit's errors carry kinetic and potential energy. The trained networks'
last hidden layers already span smooth functions where the states live, so for each network (any mode's)
the same Ritz problem is solved in the span of its hidden units and a constant (``model.output_basis``), and
the mode takes the hidden layers of the best one with the Ritz vector as output layer
(``model.transplant``): the start is then exactly the function whose quotient was computed, with no fit.

Scope: models whose inputs are real coordinates ``(n, d)`` (a graph's node indices or a matrix's rows have
no coordinates: :func:`product_target` returns None there) and whose modes have parameters of their own.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..operators.base import Operator
from .warm_start import Mean

__all__ = ["FIT_STEPS", "RCOND", "deflated_ritz", "fit_to_target", "product_target", "transplant_start"]

#: Gram eigenvalues below this fraction of the largest are dropped from the Ritz problem
RCOND = 1e-6
#: least-squares batches that fit the fresh network to the target
FIT_STEPS = 1000


class _Products(nn.Module):
    """``x (n, d) -> [f_m(x), (x_j − x̄_j) f_m(x)]`` ``(n, K)`` for the modes ``keep`` of ``model``."""

    def __init__(self, model: nn.Module, keep: list[int], center: Tensor):
        super().__init__()
        self.model, self.keep, self.center = model, keep, center

    def forward(self, x: Tensor) -> Tensor:
        f = self.model(x)[:, self.keep]  # (n, M)
        xc = x - self.center  # (n, d)
        return torch.cat([f, (xc[:, :, None] * f[:, None, :]).flatten(1)], 1)  # (n, M (d + 1))


def _model_on(model: nn.Module, operator: Operator, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(f, Tf)`` of every mode on ``x``, each ``(n, L)``, without graph."""
    with torch.enable_grad():
        fx, tfx = operator.apply(model, x)
    return fx.detach(), tfx.detach()


def deflated_ritz(basis: Callable[[Tensor], Tensor], modes: tuple[Tensor, Tensor], operator: Operator, x: Tensor,
                  mode: int, mean: Mean = lambda *stats: stats) -> tuple[Tensor, float] | None:
    """The top Rayleigh–Ritz vector of ``T`` deflated by the other modes at their own sizes (as in
    :func:`~neuralsvd.training.warm_start.deflated_quotients`) in the span of ``basis`` ``x -> (n, K)``, on
    the batch ``x`` (``modes``: the model's ``(f, Tf)`` there, :func:`_model_on`): ``(c (K,), ρ̃)`` with
    ``⟨basis c, basis c⟩ = 1``, or None when no direction has a positive deflated quotient (directions whose
    Gram eigenvalue is below :data:`RCOND` of the largest are dropped)."""
    keep = [m for m in range(modes[0].shape[1]) if m != mode]
    if not keep:
        return None
    with torch.enable_grad():
        bx, tbx = operator.apply(basis, x)  # (n, K) each
    b, tb, f, tf = bx.detach(), tbx.detach(), modes[0][:, keep], modes[1][:, keep]
    n = b.shape[0]
    gram_b, inner_b, gram_f, inner_f, cross = mean(b.T @ b / n, b.T @ tb / n, f.T @ f / n, (f * tf).mean(0),
                                                   b.T @ f / n)
    norms = gram_f.diagonal()  # (M,)
    rho = (inner_f / norms).clamp_min(0)
    projection = cross / norms.sqrt()  # (K, M): ⟨b_k, f̂_m⟩
    a = 0.5 * (inner_b + inner_b.T) - projection @ torch.diag(rho) @ projection.T  # deflated T in the basis
    w, v = torch.linalg.eigh(gram_b.double())
    ok = w > RCOND * w.max()
    whiten = v[:, ok] / w[ok].sqrt()  # (K, r): an orthonormal basis of the span
    values, vectors = torch.linalg.eigh(whiten.T @ a.double() @ whiten)
    if not bool(values[-1] > 0):
        return None
    return (whiten @ vectors[:, -1]).to(b.dtype), float(values[-1])


def product_target(model: nn.Module, operator: Operator, x: Tensor, mode: int,
                   mean: Mean = lambda *stats: stats) -> tuple[Callable[[Tensor], Tensor], float] | None:
    """The rule's target for ``mode`` from the batch ``x`` ``(n, d)``: ``(g, ρ̃_g)`` with ``g(x)`` ``(n,)`` in
    the model's own output units (before any factor the operator applies to every output) and ``ρ̃_g`` its
    deflated quotient; None when ``x`` holds no real coordinates, or when no direction of the span has a
    positive deflated quotient."""
    if not (x.is_floating_point() and x.ndim == 2):
        return None
    keep = [m for m in range(int(model.output_gain.numel())) if m != mode]
    basis = _Products(model, keep, mean(x.mean(0))[0].detach())
    ritz = deflated_ritz(basis, _model_on(model, operator, x), operator, x, mode, mean)
    if ritz is None:
        return None
    c, value = ritz
    return (lambda z: basis(z) @ c), value


class _OutputBasis(nn.Module):
    """``x -> model.output_basis(x, source, mode)`` ``(n, H + 1)``."""

    def __init__(self, model: nn.Module, source: int, mode: int):
        super().__init__()
        self.model, self.source, self.mode = model, source, mode

    def forward(self, x: Tensor) -> Tensor:
        return self.model.output_basis(x, self.source, self.mode)


def transplant_start(model: nn.Module, operator: Operator, x: Tensor, mode: int,
                     mean: Mean = lambda *stats: stats) -> float | None:
    """Give ``mode`` the hidden layers of the network (any mode's, its own included) whose last hidden layer
    spans the function of highest deflated quotient, with that function's output layer
    (:func:`deflated_ritz` in ``model.output_basis``; the batch ``x``), at unit size: the mode is then exactly
    that function. Returns its ``ρ̃`` on ``x``, or None (nothing changed) when no network's span has a positive
    one. Models with ``output_basis`` and ``transplant`` only (disjoint networks)."""
    best: tuple[float, int, Tensor] | None = None
    modes = _model_on(model, operator, x)
    for source in range(modes[0].shape[1]):
        ritz = deflated_ritz(_OutputBasis(model, source, mode), modes, operator, x, mode, mean)
        if ritz is not None and (best is None or ritz[1] > best[0]):
            best = (ritz[1], source, ritz[0])
    if best is None:
        return None
    value, source, c = best
    model.transplant(source, mode, c)
    return value


def fit_to_target(model: nn.Module, mode: int, target: Callable[[Tensor], Tensor], sample: Callable[[], Tensor],
                  lr: float, steps: int = FIT_STEPS,
                  average_gradients: Callable[..., tuple[Tensor, ...]] = lambda params, *extra: extra) -> None:
    """Fit output ``mode`` of ``model`` to ``target`` by least squares on batches from ``sample()`` (its own
    Adam at ``lr``, decaying linearly to 0; ``target`` reads only the other modes, which this does not move)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 - k / steps)  # to 0: a smooth fit
    for _ in range(steps):
        z = sample()
        with torch.no_grad():
            goal = target(z)  # (n,): the other modes, which this does not move
        opt.zero_grad(set_to_none=True)
        ((model(z)[:, mode] - goal) ** 2).mean().backward()
        average_gradients(params)
        opt.step()
        decay.step()

r"""Scale/shape separation for NestedLoRA with the scales profiled out (variable projection).

NestedLoRA's optimum is ``f_l = sqrt(λ_l) φ_l``: the norm of mode ``l`` must learn its eigenvalue, so a
network whose output is ``O(1)`` at initialization has to shrink the later modes' outputs by orders of
magnitude (2D hydrogen: ``λ = 100`` for the ground state, ``4`` for n = 2, and ψ itself is small where
those states live), where an optimizer's fixed-size steps become large relative changes. Here the
network outputs shapes ``h_l`` and the loss sees

    f_l = c_l h_l,      c_l = sqrt(s_l) / ν_l,

with ``ν_l² ≈ E[h_l²]`` and ``s_l`` the *optimal* scales for the current shapes, both computed from
running moments of past batches (so ``c`` is a constant for the step: the minibatch gradient stays an
unbiased estimate of the objective's gradient at ``f = c h``). For normalized shapes ``ĥ = h / ν`` with
``R_l = ⟨ĥ_l, T ĥ_l⟩`` and ``G_lm = ⟨ĥ_l, ĥ_m⟩`` the objective is a quadratic in ``s``:

* sequential nesting: mode ``l`` minimizes ``-2 s_l R_l + 2 Σ_{m<l} s_m s_l G_ml² + s_l²`` with earlier
  modes fixed, so ``s_l = R_l - Σ_{m<l} s_m G_ml²`` (the Rayleigh quotient of the deflated operator);
* joint nesting: ``s = (M ∘ G ∘ G)⁻¹ (v ∘ R)``.

Minimizing over ``s`` first leaves the shapes to maximize the (deflated) Rayleigh quotients; at the
optimum ``s_l = λ_l``, ``ĥ_l = φ_l``, the same optimum as the plain objective. The update of mode ``l``
is rescaled per mode (a positive preconditioning; its fixed points are the objective's) so that its
size does not depend on the mode's scale or on its network's output scale. Scales are floored at
``floor`` times the largest one: a mode whose deflated quotient is not positive keeps a small, nonzero
scale, so its shape still receives the ascent direction of that quotient and ``f = 0`` is not a
stationary point (no dead modes); a floored mode is at a non-optimal scale, which the optimum never is.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ProfiledScales", "scale_modes"]


class _ScaleModes(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, factor, grad_factor):  # type: ignore[override]
        ctx.save_for_backward(h.detach(), grad_factor)
        return h * factor

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        h, grad_factor = ctx.saved_tensors
        grad = grad_output * grad_factor  # (n, L)
        # tangent update: remove each mode's component along its own output on the batch
        return grad - h * (h * grad).sum(0) / (h * h).sum(0).clamp_min(torch.finfo(h.dtype).tiny), None, None


def scale_modes(h: Tensor, factor: Tensor, grad_factor: Tensor) -> Tensor:
    """``h * factor`` per mode (columns) whose backward is the tangent part (orthogonal, on the batch, to each
    mode's own output) of the incoming gradient times ``grad_factor``: the shapes' update is a per-mode
    positively rescaled, radially projected gradient. Its zeros include the objective's stationary points
    (where the gradient vanishes); the projection is a ratio of batch sums, hence biased at O(1/n)."""
    return _ScaleModes.apply(h, factor, grad_factor)


class ProfiledScales(nn.Module):
    """Running statistics of the shapes and the per-mode factors ``c`` they imply (buffers: checkpointed).

    The statistics are scale-free per batch (the correlation matrix ``G`` and the Rayleigh quotients ``R``
    of the batch's shapes), so a drift of the networks' output scale does not corrupt them; ``ν²`` is a
    faster average of the shapes' mean square.

    Args:
        num_modes: ``L``.
        decay: weight of the past in the averages of ``G`` and ``R`` (bias-corrected).
        norm_decay: the same for ``ν²``.
        floor: smallest scale, relative to the largest.
    """

    def __init__(self, num_modes: int, decay: float = 0.99, norm_decay: float = 0.9, floor: float = 1e-3):
        super().__init__()
        self.decay, self.norm_decay, self.floor = float(decay), float(norm_decay), float(floor)
        L = num_modes
        self.register_buffer("correlation", torch.zeros(L, L))  # G_lm = ⟨ĥ_l, ĥ_m⟩
        self.register_buffer("quotient", torch.zeros(L))  # R_l = ⟨ĥ_l, T ĥ_l⟩
        self.register_buffer("mean_square", torch.zeros(L))  # ν²
        self.register_buffer("weight", torch.zeros(()))
        self.register_buffer("norm_weight", torch.zeros(()))

    def reset(self) -> None:
        for t in (self.correlation, self.quotient, self.mean_square, self.weight, self.norm_weight):
            t.zero_()

    @staticmethod
    def _fold(buf: Tensor, new: Tensor, weight: Tensor, decay: float) -> None:
        total = weight * decay + 1.0
        buf.mul_(weight * decay / total).add_(new.to(buf) / total)

    def update(self, h: Tensor, th: Tensor) -> None:
        """Fold a batch of shapes ``h`` and ``T h``, each ``(n, L)``, into the running statistics."""
        square = h.square().mean(0).clamp_min(torch.finfo(h.dtype).tiny)  # (L,)
        inv = square.rsqrt()
        self._fold(self.correlation, (h.T @ h / h.shape[0]) * inv.unsqueeze(0) * inv.unsqueeze(1), self.weight,
                   self.decay)
        self._fold(self.quotient, (h * th).mean(0) / square, self.weight, self.decay)
        self._fold(self.mean_square, square, self.norm_weight, self.norm_decay)
        self.weight.mul_(self.decay).add_(1.0)
        self.norm_weight.mul_(self.norm_decay).add_(1.0)

    def scales(self, v: Tensor, m: Tensor, sequential: bool) -> Tensor:
        """``(L,)`` optimal scales ``s`` for the normalized shapes (see the module docstring), floored
        (before the first update: those of orthonormal shapes with unit quotients)."""
        seen = self.weight > 0
        eye = torch.eye(self.correlation.shape[0], dtype=self.correlation.dtype, device=self.correlation.device)
        g2 = torch.where(seen, self.correlation, eye).square()  # (L, L) G_lm²
        r = torch.where(seen, self.quotient, torch.ones_like(self.quotient))  # (L,)
        if sequential:
            s = torch.empty_like(r)
            for l in range(r.shape[0]):
                s[l] = r[l] - (s[:l] * g2[:l, l]).sum()
                s[l] = torch.maximum(s[l], self.floor * s[: l + 1].max().clamp_min(0))
        else:
            a = m.to(g2) * g2  # PSD (Schur product); ridge for linearly dependent shapes
            ridge = 10 * torch.finfo(a.dtype).eps * a.diagonal().mean() * eye
            s = torch.linalg.solve(a + ridge, v.to(r) * r)
        return torch.maximum(s, self.floor * s.max().clamp_min(torch.finfo(s.dtype).tiny))

    def factors(self, v: Tensor, m: Tensor, sequential: bool, h: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(L,)`` ``c = sqrt(s) / ν`` and the gradient factors ``1 / sqrt(s)``: the update of a mode's
        shape keeps its size when the mode's scale ``s`` or its network's output scale ``ν`` changes (an
        optimizer with a long memory of gradient sizes, such as Adam, would otherwise freeze a mode whose
        gradients shrink). Ones before the first update (no host synchronization).

        ``h`` (the current batch's shapes, optional) guards against a network whose output scale jumped
        since the last batches (early steps of an adaptive optimizer move small weights by large factors):
        ``ν² ≥ mean(h²) / GUARD``, so the batch's ``‖f‖²`` never exceeds ``GUARD · s``. The guard is inactive
        in steady state (a batch's mean square within a factor ``GUARD`` of the running one).
        """
        ms = self.mean_square
        if h is not None:
            ms = torch.maximum(ms, h.detach().square().mean(0).to(ms) / self.GUARD)
        nu = ms.clamp_min(torch.finfo(ms.dtype).tiny).sqrt()
        root = self.scales(v, m, sequential).sqrt()
        ones = torch.ones_like(root)
        first = self.weight > 0
        return torch.where(first, root / nu, ones), torch.where(first, 1.0 / root, ones)

    #: largest allowed ratio of a batch's mean square to the running one (see :meth:`factors`)
    GUARD = 16.0

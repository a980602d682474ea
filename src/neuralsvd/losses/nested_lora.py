"""NestedLoRA: the NeuralSVD objective (nested low-rank approximation).

For functions ``f = (f_1..f_L)`` (and ``g`` for SVD) the objective is

    ℒ = -2 Σ_l v_l ⟨g_l, T f_l⟩ + Σ_{l,m} M_lm ⟨f_l, f_m⟩⟨g_l, g_m⟩,

with ``g = f`` for a self-adjoint ``T``. Joint nesting with positive weights ``w`` uses
``v_l = Σ_{i≥l} w_i`` and ``M_lm = v_max(l,m)``, i.e. ``ℒ = Σ_i w_i ℒ_LoRA(f_{1:i})``. Sequential nesting
trains mode ``k`` on ``ℒ_LoRA(f_{1:k})`` with ``f_{1:k-1}`` held fixed; one backward pass does it with a
masked gradient (``v = 1``, ``M`` = upper-triangular ones). At the optimum ``f_l = sqrt(λ_l) φ_l`` for the
top-L *positive* eigenvalues in descending order (SVD: ``f_l = sqrt(σ_l) φ_l``, ``g_l = sqrt(σ_l) ψ_l``).

Minibatch estimates are unbiased: operator terms average over the batch; second moments come from
the two halves of the batch, ``Σ M ∘ Λ_a ∘ Λ_b`` (SVD: ``½ Σ M ∘ (Λf_a ∘ Λg_b + Λf_b ∘ Λg_a)``).
The gradient never differentiates through ``T f``: for self-adjoint ``T``,
``∂⟨f, Tf⟩ = 2⟨∂f, Tf⟩``, applied in a custom autograd backward. For EVD with a pointwise ``Tf`` the
half-batch moments carry a zero-mean control variate (:func:`control_variate_moments`) that keeps them
unbiased and cancels most of the noise a leading mode's large norm puts into the later modes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..training.distributed import SINGLE, DataParallel
from .base import LossOutput, SpectralLoss, SplitHalves

__all__ = ["ControlVariateStats", "NestedLoRA", "control_variate_moments", "cv_products", "sanger_coefficients"]


def _halves(n: int, split: bool) -> tuple[slice, slice]:
    return (slice(0, n // 2), slice(n // 2, n)) if split else (slice(None), slice(None))


def _second_moment(f: Tensor) -> Tensor:
    return f.T @ f / f.shape[0]  # (L, L)


class _NestedLoRAFunction(torch.autograd.Function):
    """Value and hand-written gradient of the SVD-form objective (EVD: call with ``g = f``).

    Inputs ``tfy = (Tf)(y)`` and ``tadj_gx = (T* g)(x)`` are constants (no gradient flows to them), and so
    are ``moments = (Λf_a, Λf_b, Λg_a, Λg_b)``, the ``(L, L)`` second-moment estimates of each half (plain
    half-batch moments, or control-variate ones) that enter the value, and ``grad_moments`` (same layout)
    that multiply the *other* half's derivative in the gradient: the same moments for the NestedLoRA
    gradient, the Sanger deflation coefficients for its pseudo-gradient.
    ``v_grad, m_grad`` are the masks of the gradient; ``v_value, m_value`` those of the reported value
    (they differ only for sequential nesting).
    """

    @staticmethod
    def forward(ctx, fx, gy, tfy, tadj_gx, moments, grad_moments, v_value, m_value, v_grad, m_grad,  # type: ignore[override]
                split: bool):
        lam_fa, lam_fb, lam_ga, lam_gb = moments
        operator_term = 0.5 * ((gy * tfy).mean(0) + (fx * tadj_gx).mean(0))  # (L,) estimates of ⟨g_l, T f_l⟩
        metric_term = 0.5 * (m_value * (lam_fa * lam_gb + lam_fb * lam_ga)).sum()
        ctx.save_for_backward(fx, gy, tfy, tadj_gx, v_grad, m_grad, *grad_moments)
        ctx.split = split
        return -2 * (v_value * operator_term).sum() + metric_term

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        fx, gy, tfy, tadj_gx, v_grad, m_grad, lam_fa, lam_fb, lam_ga, lam_gb = ctx.saved_tensors
        a, b = _halves(fx.shape[0], ctx.split)
        c, d = _halves(gy.shape[0], ctx.split)
        grad_f = -(2.0 / fx.shape[0]) * v_grad * tadj_gx  # (n_x, L)
        grad_g = -(2.0 / gy.shape[0]) * v_grad * tfy  # (n_y, L)
        fa, fb, gc, gd = fx[a], fx[b], gy[c], gy[d]
        grad_f[a] += fa @ (m_grad * lam_gb) / fa.shape[0]
        grad_f[b] += fb @ (m_grad * lam_ga) / fb.shape[0]
        grad_g[c] += gc @ (m_grad * lam_fb) / gc.shape[0]
        grad_g[d] += gd @ (m_grad * lam_fa) / gd.shape[0]
        return grad_output * grad_f, grad_output * grad_g, None, None, None, None, None, None, None, None, None


class NestedLoRA(SplitHalves, SpectralLoss):
    """The NeuralSVD objective with joint or sequential nesting.

    Args:
        num_modes: ``L``.
        nesting: ``"sequential"`` (default; the paper's best) or ``"joint"``.
        weights: positive nesting weights ``w`` for joint nesting (default uniform ``1/L``).
        unbiased: ``None`` (default, automatic): split sampled batches in halves for the second-moment
            term (unbiased), and use the whole batch when it is the finite population (exact; ``fit``
            tells the loss, see :meth:`use_population_batches`). ``True`` always splits, ``False`` never
            (biased for random minibatches; both warn where they bias the result).
        control_variate: estimate the off-diagonal second moments with the self-adjointness control
            variate (see :func:`control_variate_moments`): ``None`` (default) turns it on whenever
            :meth:`prepare` is told the operator allows it (self-adjoint with pointwise ``Tf``, EVD); ``True``
            forces it on for the EVD form, ``False`` off (the paper's plain estimate).
        cv_decay: weight of the past in the running statistics that set the control-variate coefficients.
        deflation: ``"lora"`` (default): the gradient of the objective. ``"sanger"`` (sequential nesting,
            EVD only): a Sanger-type pseudo-gradient (as in NestedOMM, Ryu et al. 2025) whose deflation of
            mode ``k`` by an earlier mode ``m`` uses ``⟨f_m, T f_k⟩ / ‖f_m‖²`` instead of ``⟨f_m, f_k⟩``
            (:func:`sanger_coefficients`): it removes the projection of ``T f_k`` on ``f_m`` whatever the
            norm of ``f_m``, where the gradient's deflation is right only once ``‖f_m‖² = λ_m``. Same fixed
            points ``f_l = sqrt(λ_l) φ_l``; not the gradient of any objective (the reported value is still
            the objective's).

    Read-out: ``eigenvalues`` are Rayleigh quotients ``⟨f,Tf⟩/‖f‖²`` (SVD: ``⟨g,Tf⟩/(‖f‖‖g‖)``),
    ``norm_eigenvalues`` the norm estimator ``‖f‖²`` (SVD: ``‖f‖‖g‖``), both of the learned ``T``.
    """

    norms_are_eigenvalues = True

    def __init__(self, num_modes: int, nesting: str = "sequential", weights: Sequence[float] | Tensor | None = None,
                 unbiased: bool | None = None, control_variate: bool | None = None, cv_decay: float = 0.99,
                 deflation: str = "lora"):
        super().__init__(num_modes)
        if nesting not in ("joint", "sequential"):
            raise ValueError(f"unknown nesting {nesting!r}; valid: 'joint', 'sequential'")
        if deflation not in ("lora", "sanger"):
            raise ValueError(f"unknown deflation {deflation!r}; valid: 'lora', 'sanger'")
        if deflation == "sanger" and nesting != "sequential":
            raise ValueError("deflation='sanger' is a sequential update: use nesting='sequential'")
        if control_variate not in (None, True, False):
            raise ValueError(f"control_variate must be None (auto), True or False, got {control_variate!r}")
        if isinstance(cv_decay, bool) or not isinstance(cv_decay, (int, float)) or not 0 <= cv_decay < 1:
            raise ValueError(f"cv_decay must be a number in [0, 1), got {cv_decay!r}")
        L = num_modes
        w = torch.full((L,), 1.0 / L, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (L,) or not bool((w > 0).all()) or not bool(torch.isfinite(w).all()):
            raise ValueError(f"weights must be {L} positive finite numbers, got {weights!r}")
        if nesting == "sequential" and weights is not None:
            raise ValueError("weights apply to joint nesting only; sequential nesting has none")
        v = w.flip(0).cumsum(0).flip(0)  # v_l = Σ_{i≥l} w_i
        idx = torch.arange(L)
        m = v[torch.maximum(idx[:, None], idx[None, :])]  # M_lm = v_max(l,m)
        self.nesting, self.unbiased = nesting, None if unbiased is None else bool(unbiased)
        self.control_variate, self.cv_decay = control_variate, float(cv_decay)
        self.deflation = deflation
        self.cv_active = bool(control_variate)
        self.register_buffer("v_value", v)
        self.register_buffer("m_value", m)
        if nesting == "joint":
            self.register_buffer("v_grad", v.clone())
            self.register_buffer("m_grad", m.clone())
        else:
            self.register_buffer("v_grad", torch.ones(L, dtype=torch.float64))
            self.register_buffer("m_grad", torch.ones(L, L, dtype=torch.float64).triu())  # [m, k] = 1 if m ≤ k
        self.cv_stats = ControlVariateStats(L, self.cv_decay)

    def prepare(self, operator) -> None:
        """Automatic control variate: on for a self-adjoint operator whose ``Tf`` is pointwise."""
        if self.control_variate is None:
            self.cv_active = bool(getattr(operator, "self_adjoint", False) and getattr(operator, "pointwise", False))

    def attach(self, model) -> None:
        self.cv_stats.reset()

    def reset_mode(self, mode: int) -> None:
        self.cv_stats.reset_mode(mode)

    def _objective(self, fx: Tensor, gy: Tensor, tfy: Tensor, tadj_gx: Tensor, moments: tuple[Tensor, ...],
                   grad_moments: tuple[Tensor, ...] | None = None) -> Tensor:
        masks = (self.v_value, self.m_value, self.v_grad, self.m_grad)
        return _NestedLoRAFunction.apply(fx, gy, tfy.detach(), tadj_gx.detach(), moments,
                                         moments if grad_moments is None else grad_moments,
                                         *(t.to(fx) for t in masks), self.split)

    def _half_moments(self, f: Tensor) -> tuple[Tensor, Tensor]:
        a, b = _halves(f.shape[0], self.split)
        return _second_moment(f[a]), _second_moment(f[b])

    def forward(self, fx: Tensor, tfx: Tensor) -> LossOutput:
        """EVD form: ``fx = f(x)``, ``tfx = (Tf)(x)``, each ``(n, L)``."""
        self.check_batch(fx, tfx)
        with torch.no_grad():
            f, tf = fx.detach(), tfx.detach()
            halves = _halves(f.shape[0], self.split)
            if self.cv_active:
                a, c = cv_products(f, tf)  # (n, L, L) each
                beta = self.cv_stats.coefficients().to(f)  # from past batches only: unbiased for this one
                lam_a, lam_b = ((a[h] + beta * c[h]).mean(0) for h in halves)
                if fx.requires_grad:
                    self.cv_stats.update(a, c)
            else:
                lam_a, lam_b = self._half_moments(f)
            # Sanger: the halves' ⟨f_m, Tf_k⟩ (L, L) too; all of the global batch (data-parallel)
            cross = [f[h].T @ tf[h] / f[h].shape[0] for h in halves] if self.deflation == "sanger" else []
            lam_a, lam_b, *cross = self.batch_mean(lam_a, lam_b, *cross)
            grad_moments = None
            if cross:
                s_a, s_b = (sanger_coefficients(c, lam) for c, lam in zip(cross, (lam_a, lam_b)))
                grad_moments = (s_a, s_b, s_a, s_b)
        loss = self._objective(fx, fx, tfx, tfx, (lam_a, lam_b, lam_a, lam_b), grad_moments)
        with torch.no_grad():
            gram = _second_moment(f)
            norms = gram.diagonal()
            rayleigh = (f * tf).mean(0) / norms
        return LossOutput(loss, rayleigh, gram, norms.clone())

    def svd(self, fx: Tensor, gy: Tensor, tfy: Tensor, tadj_gx: Tensor) -> LossOutput:
        """SVD form: ``f(x)``, ``(T*g)(x)`` of shape ``(n_x, L)`` and ``g(y)``, ``(Tf)(y)`` of shape
        ``(n_y, L)`` (``n_x = n_y`` for paired samples; independent ``x``, ``y`` may differ)."""
        if self.deflation != "lora":
            raise NotImplementedError(f"deflation={self.deflation!r} is implemented for the EVD form only")
        self.check_batch(fx, tadj_gx)
        self.check_batch(gy, tfy)
        with torch.no_grad():
            moments = self.batch_mean(*self._half_moments(fx.detach()), *self._half_moments(gy.detach()))
        loss = self._objective(fx, gy, tfy, tadj_gx, moments)
        with torch.no_grad():
            gram = _second_moment(fx)
            norms = (gram.diagonal() * (gy * gy).mean(0)).sqrt()
            cross = 0.5 * ((gy * tfy).mean(0) + (fx * tadj_gx).mean(0))
        return LossOutput(loss, cross / norms, gram, norms)


def cv_products(f: Tensor, tf: Tensor) -> tuple[Tensor, Tensor]:
    """Per point: ``a[i, m, l] = f_m f_l`` and the zero-mean ``c[i, m, l] = (Tf_m) f_l - f_m (Tf_l)``."""
    a = f.unsqueeze(2) * f.unsqueeze(1)  # (n, L, L)
    c = tf.unsqueeze(2) * f.unsqueeze(1) - f.unsqueeze(2) * tf.unsqueeze(1)  # (n, L, L), antisymmetric in m, l
    return a, c


def sanger_coefficients(cross: Tensor, gram: Tensor) -> Tensor:
    """Sanger deflation coefficients, ``(L, L)``: ``S[m, k] = ⟨f_m, Tf_k⟩ / ⟨f_m, f_m⟩`` off the diagonal (the
    coefficient of ``f_m`` in the projection of ``Tf_k``) and ``⟨f_k, f_k⟩`` on it, from estimates of
    ``cross[m, k] = ⟨f_m, Tf_k⟩`` and ``gram = Λ`` (each ``(L, L)``, e.g. means over a half-batch)."""
    norms = gram.diagonal()  # (L,)
    s = cross / norms.clamp_min(torch.finfo(norms.dtype).tiny).unsqueeze(1)
    return torch.where(torch.eye(s.shape[0], dtype=torch.bool, device=s.device), gram, s)


def control_variate_moments(f: Tensor, tf: Tensor, beta: Tensor) -> Tensor:
    """Second moments ``⟨f_m, f_l⟩`` on a batch with the self-adjointness control variate, ``(L, L)``.

    For self-adjoint ``T`` in ``L²(p)`` and ``Tf`` evaluated pointwise, ``c_ml = (Tf_m) f_l - f_m (Tf_l)`` has
    mean ``⟨Tf_m, f_l⟩ - ⟨f_m, Tf_l⟩ = 0`` for *any* ``f``, so ``mean(f_m f_l + β_ml c_ml)`` is unbiased for
    ``⟨f_m, f_l⟩`` whatever the (batch-independent, antisymmetric) coefficients ``β``; the result stays
    symmetric. Near eigenfunctions ``c_ml ≈ (λ_m - λ_l) f_m f_l``, so ``β_ml ≈ -1/(λ_m - λ_l)`` cancels most of
    the noise that a leading mode's large norm puts into the deflation terms of the later modes.
    """
    a, c = cv_products(f, tf)
    return (a + beta * c).mean(0)


class ControlVariateStats(torch.nn.Module):
    """Running statistics for the variance-optimal control-variate coefficients ``β = -E[a c] / E[c²]``
    (``E[c] = 0`` exactly), exponential moving averages with bias correction. Buffers, so checkpointed."""

    data_parallel: DataParallel = SINGLE  # set with the loss's (SpectralLoss.use_data_parallel)

    def __init__(self, num_modes: int, decay: float):
        super().__init__()
        self.decay = decay
        self.register_buffer("ac", torch.zeros(num_modes, num_modes))
        self.register_buffer("cc", torch.zeros(num_modes, num_modes))
        self.register_buffer("weight", torch.zeros(()))

    def reset(self) -> None:
        for t in (self.ac, self.cc, self.weight):
            t.zero_()

    def reset_mode(self, mode: int) -> None:
        """Forget the pairs of ``mode`` (its coefficients are 0 until they are estimated again; the
        coefficients are ratios, so the common bias correction does not matter)."""
        for t in (self.ac, self.cc):
            t[mode].zero_()
            t[:, mode].zero_()

    def coefficients(self) -> Tensor:
        """``(L, L)`` antisymmetric ``β``; zero before the first update and where ``c`` vanishes."""
        cc = self.cc
        tiny = torch.finfo(cc.dtype).tiny
        return torch.where(cc > tiny, -self.ac / cc.clamp_min(tiny), torch.zeros_like(cc))

    def update(self, a: Tensor, c: Tensor) -> None:
        """Fold one batch's products ``a``, ``c`` (``(n, L, L)``, see :func:`control_variate_moments`) in
        (data-parallel: the global batch's means)."""
        w = self.decay
        for buf, new in zip((self.ac, self.cc), self.data_parallel.mean((a * c).mean(0), (c * c).mean(0))):
            # bias-corrected EMA: buf = Σ w^k new_k / Σ w^k
            total = self.weight * w + 1.0
            buf.mul_(self.weight * w / total).add_(new.to(buf) / total)
        self.weight.mul_(w).add_(1.0)

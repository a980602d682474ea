r"""NeuralEF: neural eigenfunctions (Deng, Shi and Zhu, ICML 2022), a baseline.

The outputs are L2-normalized over the batch, ``ψ_j = f_j / sqrt(mean_b f_j(x_b)²)`` (the gradient flows
through the normalization, which enforces ``‖ψ_j‖ = 1``), and with ``R_ij = ⟨ψ_i, T ψ_j⟩`` mode ``j``
ascends

    R_jj - Σ_{i<j} R_ij² / R_ii      with ψ_i (i < j) held fixed,

an EigenGame-style asymmetric update: earlier modes deflate later ones and never feel them. By
self-adjointness its gradient with respect to ``ψ_j`` is ``2 (Tψ_j - Σ_{i<j} (R_ij / R_ii) Tψ_i)``, applied
without differentiating through ``T``. The optimum is the top-L eigenfunctions in order, which needs
``R_ii > 0`` (the method assumes the top-L eigenvalues of ``T`` are positive). As in the authors' port,
``R_ii`` gets ``1e-5`` added in the denominator.

``unbiased=True`` is the μ-EigenGame variant of the authors' port: the coefficient ``R_ij / R_ii`` (a
ratio of batch estimates, hence biased) becomes ``⟨ψ_i, ψ_j⟩`` (equal at the optimum) estimated on the
*other* half of the batch, which makes the penalty part of the update unbiased (the normalization still
uses the whole batch).

Evaluation: the batch norms are tracked in a buffer (an exponential moving average of
``mean_b f_j(x_b)²`` with weight ``momentum`` on the past, seeded by the first batch) and
:meth:`NeuralEF.readout` divides by them.

EVD only: :meth:`NeuralEF.svd` (and :meth:`NeuralEF.attach` with a model pair) raise ``NotImplementedError``.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from ..numerics.autodiff import STOCHASTIC_METHODS
from ..training.decomposition import decomposition_of
from .base import (
    LinearReadout,
    LossOutput,
    SpectralLoss,
    SplitHalves,
    evd_only_error,
    prescribed_gradient,
)

__all__ = ["NeuralEF"]

#: added to ``R_ii`` in the deflation coefficients (the authors' value)
_DENOMINATOR_EPS = 1e-5


class NeuralEF(SplitHalves, SpectralLoss):
    """NeuralEF with batch L2 normalization and the asymmetric (stop-gradient) deflation update.

    Args:
        num_modes: ``L``.
        unbiased: deflation coefficients ``⟨ψ_i, ψ_j⟩`` from the other half of the batch (μ-EigenGame)
            instead of ``R_ij / R_ii`` from the whole batch (``False``, the default: the published
            method, exact when the batch is the whole finite population). ``None``: split sampled
            batches, never the population. ``True`` on the population warns (its halves are dependent).
        momentum: weight of the past in the running mean square of the outputs (the authors' 0.9).

    The loss value is the batch objective ``-Σ_j (R_jj - Σ_{i<j} R_ij² / R_ii)`` (for ``unbiased`` a
    diagnostic only); ``eigenvalues`` are ``R_jj`` (batch Rayleigh quotients), ``gram`` is ``⟨ψ_i, ψ_j⟩``.
    """

    #: the whole batch twice is the published method, not a bias to warn about on sampled batches
    whole_batch_biased = False

    def __init__(self, num_modes: int, unbiased: bool | None = False, momentum: float = 0.9):
        super().__init__(num_modes)
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
            raise ValueError(f"momentum must be a number in [0, 1), got {momentum!r}")
        self.unbiased, self.momentum = None if unbiased is None else bool(unbiased), float(momentum)
        self.register_buffer("mean_square", torch.ones(num_modes))  # (L,) running mean_b f(x_b)²
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def attach(self, model: nn.Module | tuple[nn.Module, nn.Module]) -> None:
        if decomposition_of(model).is_svd:
            raise evd_only_error(self)
        p = next(model.parameters(), None)
        like = p if p is not None else self.mean_square
        self.mean_square = torch.ones(self.num_modes, dtype=like.dtype, device=like.device)
        self.updates.zero_()

    def prepare(self, operator: nn.Module) -> None:
        """Warn when the operator's ``Tf`` is a stochastic estimate and the deflation coefficients are
        ``R_ij / R_ii`` (``unbiased=False``): the update multiplies ``Tf`` by ratios of ``Tf`` moments, so an
        unbiased ``Tf`` no longer gives an unbiased update (the split form is linear in ``Tf``)."""
        if getattr(operator, "laplacian_method", None) in STOCHASTIC_METHODS and not self.split:
            warnings.warn(f"NeuralEF(unbiased=False) is not linear in Tf: with the stochastic Laplacian "
                          f"{operator.laplacian_method!r} its update is biased; use the exact Laplacian, "
                          "NeuralEF(unbiased=True) or NestedLoRA", RuntimeWarning, stacklevel=3)

    def readout(self, model: nn.Module) -> nn.Module:
        """``x -> f(x) / running norm`` (per mode)."""
        return LinearReadout(model, torch.diag(self.mean_square.rsqrt()))

    def forward(self, fx: Tensor, tfx: Tensor) -> LossOutput:
        """``fx = f(x)``, ``tfx = (Tf)(x)``, each ``(n, L)``."""
        self.check_batch(fx, tfx)
        n = fx.shape[0]
        square = self.data_parallel.mean_with_grad(fx.square().mean(0))  # (L,), of the global batch
        psi = fx * square.rsqrt()  # (n, L), normalized over the batch (with gradient)
        with torch.no_grad():
            if fx.requires_grad:
                running = self.mean_square.to(square).lerp(square, 1 - self.momentum)
                self.mean_square.copy_(torch.where(self.updates == 0, square, running))
                self.updates += 1
            p = psi.detach()
            tpsi = tfx.detach() * square.detach().rsqrt()  # T is linear: Tψ = Tf / norm
            a, b = slice(0, n // 2), slice(n // 2, n)
            halves = (_overlaps(p[a]), _overlaps(p[b])) if self.split else ()
            # (L, L) R_ij = ⟨ψ_i, Tψ_j⟩, the Gram matrix and the half-batch overlaps of the global batch
            r, gram, *halves = self.batch_mean(p.T @ tpsi / n, p.T @ p / n, *halves)
            ratio = r.triu(1) / (r.diagonal() + _DENOMINATOR_EPS).unsqueeze(1)  # (L, L): R_ij / R_ii, i < j
            value = -(r.diagonal().sum() - (r.triu(1) * ratio).sum())
            if self.split:
                penalty = torch.cat([tpsi[a] @ halves[1], tpsi[b] @ halves[0]], 0)
            else:
                penalty = tpsi @ ratio  # (n, L)
            grad = -(2.0 / n) * (tpsi - penalty)
        loss = prescribed_gradient(value, [psi], [grad])
        return LossOutput(loss, r.diagonal().clone(), gram)


def _overlaps(psi: Tensor) -> Tensor:
    """Strictly upper ``⟨ψ_i, ψ_j⟩`` (i < j) on a batch, ``(L, L)``."""
    return (psi.T @ psi / psi.shape[0]).triu(1)

"""The interface every spectral objective implements (NestedLoRA, and the SpIN / NeuralEF baselines)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["SpectralLoss", "LossOutput"]


@dataclass
class LossOutput:
    """What a loss returns for one minibatch.

    Attributes:
        loss: scalar to minimize (its gradient is what the method prescribes; for sequential nesting the
            value is the uniform-weight joint objective, a diagnostic only).
        eigenvalues: ``(L,)`` batch estimates of the eigenvalues (singular values for SVD) of the
            *learned* operator ``T``, in mode order. Detached.
        gram: ``(L, L)`` batch estimate of ``⟨f_l, f_m⟩`` (for SVD: of the left functions). Detached.
        norm_eigenvalues: ``(L,)`` a second estimator where the method has one (NestedLoRA: ``‖f_l‖²``,
            or ``‖f_l‖‖g_l‖`` for SVD, which tend to the eigen/singular values at the optimum), else None.
    """

    loss: Tensor
    eigenvalues: Tensor
    gram: Tensor
    norm_eigenvalues: Tensor | None = None


class SpectralLoss(nn.Module):
    """Abstract spectral objective over ``L = num_modes`` functions.

    ``forward(fx, tfx)`` takes ``f(x)`` and ``(Tf)(x)`` on a minibatch ``x ~ p``, each ``(n, L)``
    (``tfx`` is detached by the operators: no loss differentiates through ``T``). Losses that need
    independent halves of the batch split it themselves. ``svd(fx, gy, tfy, tadj_gx)`` is the SVD form;
    losses that only handle self-adjoint operators raise ``NotImplementedError`` there.
    """

    num_modes: int

    def __init__(self, num_modes: int):
        super().__init__()
        if isinstance(num_modes, bool) or not isinstance(num_modes, int) or num_modes < 1:
            raise ValueError(f"num_modes must be a positive integer (L >= 1), got {num_modes!r}")
        self.num_modes = num_modes

    @property
    def min_batch_size(self) -> int:
        """Smallest batch the loss can use (e.g. 2 when the batch is split in halves)."""
        return 1

    def check_batch(self, *tensors: Tensor) -> None:
        """Raise a clear error unless every tensor is ``(n, L)`` with the same ``n >= min_batch_size``."""
        n = tensors[0].shape[0] if tensors[0].ndim == 2 else None
        for t in tensors:
            if t.ndim != 2 or t.shape[1] != self.num_modes or t.shape[0] != n:
                raise ValueError(
                    f"{type(self).__name__} expects model outputs of shape (n, L) = (n, {self.num_modes}) "
                    f"with a common n, got shapes {[tuple(s.shape) for s in tensors]}"
                )
        if n < self.min_batch_size:
            raise ValueError(f"{type(self).__name__} needs a batch of at least {self.min_batch_size} points, got {n}")

    def attach(self, model: nn.Module | tuple[nn.Module, nn.Module]) -> None:
        """Called by :func:`~neuralsvd.fit` before training with the model(s) being trained, for methods
        whose update needs more than ``f(x)`` and ``(Tf)(x)`` (e.g. per-parameter Jacobian averages).
        Default: nothing. State a loss keeps across steps must live in buffers (it is checkpointed)."""

    def readout(self, model: nn.Module) -> nn.Module:
        """The module whose outputs are the learned eigenfunctions, given the trained model (called by
        :func:`~neuralsvd.fit` after training). Default: the model itself; e.g. SpIN whitens it."""
        return model

    def forward(self, fx: Tensor, tfx: Tensor) -> LossOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def svd(self, fx: Tensor, gy: Tensor, tfy: Tensor, tadj_gx: Tensor) -> LossOutput:
        raise NotImplementedError(f"{type(self).__name__} does not support SVD (non-self-adjoint) operators")

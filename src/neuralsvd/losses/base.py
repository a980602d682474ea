"""The interface every spectral objective implements (NestedLoRA, and the SpIN / NeuralEF baselines)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._validation import check_positive_int
from ..numerics.autodiff import laplacian
from ..training.distributed import SINGLE, DataParallel

__all__ = [
    "LinearReadout",
    "LossOutput",
    "SpectralLoss",
    "SplitHalves",
    "evd_only_error",
    "prescribed_gradient",
    "split_halves",
    "warn_if_biased",
]


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
    #: whether at the optimum mode ``l``'s squared norm ``‖f_l‖²`` (SVD: ``‖f_l‖ ‖g_l‖``) equals its
    #: eigenvalue (NestedLoRA); :func:`~neuralsvd.fit` then flags modes far from it as unconverged and
    #: caps the modes' initial norms (:mod:`~neuralsvd.training.calibration`)
    norms_are_eigenvalues: bool = False
    #: whether every batch is the whole finite population (set by :meth:`use_population_batches`)
    population_batches: bool = False
    #: the data-parallel world the loss trains in (set by :meth:`use_data_parallel`; one process by default)
    data_parallel: DataParallel = SINGLE

    def __init__(self, num_modes: int):
        super().__init__()
        self.num_modes = check_positive_int("num_modes", num_modes)

    def use_population_batches(self, population: bool) -> None:
        """Called by :func:`~neuralsvd.fit` before training: ``population`` says whether every batch is
        the whole finite population (a dense or graph operator with ``batch_size >= n``, no replacement),
        where exact full-batch moments replace split-half estimates. Losses with a split option choose
        it here (``unbiased=None``: split unless the batch is the population) and warn about settings
        known to bias the result. A standalone call of the loss (no ``fit``) assumes sampled batches."""
        self.population_batches = bool(population)

    def use_data_parallel(self, world: DataParallel) -> None:
        """Called by :func:`~neuralsvd.fit` before training: the data-parallel world (see
        :mod:`neuralsvd.training.distributed`). The loss then passes every batch statistic its update depends on
        through :meth:`batch_mean`, which makes the statistics, and so the update, those of the global
        batch. Submodules that declare a ``data_parallel`` attribute (running statistics) get it too."""
        for module in self.modules():
            if hasattr(module, "data_parallel"):
                module.data_parallel = world

    def batch_mean(self, *stats: Tensor) -> tuple[Tensor, ...]:
        """The global batch's values of batch means ``stats`` computed on this rank's share (the mean over
        ranks, one all-reduce; unchanged in one process). For detached statistics only."""
        return self.data_parallel.mean(*stats)

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

    def prepare(self, operator: nn.Module) -> None:
        """Called by :func:`~neuralsvd.fit` before training with the operator, for losses whose best
        estimator depends on it (e.g. :attr:`~neuralsvd.operators.Operator.pointwise`). Default: nothing."""

    def reset_mode(self, mode: int) -> None:
        """Called by :func:`~neuralsvd.fit` when mode ``mode`` was re-initialized (see
        :mod:`neuralsvd.training.revival`): forget running statistics of that mode. Default: nothing."""

    def readout(self, model: nn.Module) -> nn.Module:
        """The module whose outputs are the learned eigenfunctions, given the trained model (called by
        :func:`~neuralsvd.fit` after training). Default: the model itself; e.g. SpIN whitens it."""
        return model

    def forward(self, fx: Tensor, tfx: Tensor) -> LossOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def svd(self, fx: Tensor, gy: Tensor, tfy: Tensor, tadj_gx: Tensor) -> LossOutput:
        raise evd_only_error(self)


class SplitHalves:
    """Mixin for a :class:`SpectralLoss` with a split option ``unbiased`` (True, False or None for
    automatic): :attr:`split` says whether this step estimates second moments from two halves of the
    batch, and :meth:`use_population_batches` warns about settings known to bias the result."""

    unbiased: bool | None
    population_batches: bool
    #: whether using the whole batch twice biases estimates on sampled batches (then warned about)
    whole_batch_biased: bool = True

    @property
    def split(self) -> bool:
        return split_halves(self.unbiased, self.population_batches)

    @property
    def min_batch_size(self) -> int:
        return 2 if self.split else 1

    def use_population_batches(self, population: bool) -> None:
        super().use_population_batches(population)  # type: ignore[misc]
        warn_if_biased(self, self.unbiased, self.population_batches, self.whole_batch_biased)


def split_halves(unbiased: bool | None, population: bool) -> bool:
    """Whether a loss with a split option (``unbiased``: True, False or None for automatic) estimates
    second moments from two halves of the batch: forced by True/False; automatic: unless the batch is
    the population (there the full batch gives exact moments, and halves drawn without replacement are
    not independent)."""
    return (not population) if unbiased is None else unbiased


def warn_if_biased(loss: SpectralLoss, unbiased: bool | None, population: bool, sampled_bias: bool) -> None:
    """Warn where an explicit ``unbiased`` setting is known to bias the result: halves of a finite
    population (``unbiased=True``), or the whole batch twice on random minibatches (``unbiased=False``,
    when ``sampled_bias``)."""
    name = type(loss).__name__
    if unbiased is True and population:
        warnings.warn(f"{name}(unbiased=True) splits a batch that is the whole finite population: the halves "
                      "are not independent, which biases the result; the default (unbiased=None) uses the "
                      "exact full-batch moments there", RuntimeWarning, stacklevel=3)
    if unbiased is False and not population and sampled_bias:
        warnings.warn(f"{name}(unbiased=False) on random minibatches biases the second-moment term (its "
                      "optimum is not the eigenfunctions); the default (unbiased=None) splits sampled "
                      "batches and uses exact moments only when the batch is the whole population",
                      RuntimeWarning, stacklevel=3)


def evd_only_error(loss: SpectralLoss) -> NotImplementedError:
    """The error of a loss that handles self-adjoint operators only, asked for an SVD."""
    return NotImplementedError(
        f"{type(loss).__name__} decomposes self-adjoint operators only (EVD) and does not support SVD of "
        "non-self-adjoint operators; use NestedLoRA with a (left, right) model pair for those")


class LinearReadout(nn.Module):
    """A trained model followed by a fixed linear map of its outputs: ``x -> model(x) @ matrix``.

    The read-out of methods whose eigenfunctions are a linear transform of the network outputs (SpIN's
    whitening ``L⁻¹``, NeuralEF's normalization). ``matrix`` ``(L, L)`` is a buffer, so ``.to()``,
    ``.double()`` and deep copies carry it. :meth:`jet` maps the model's jet the same way, so exact
    Laplacians keep working (through the model's own ``jet`` when it has one).
    """

    def __init__(self, model: nn.Module, matrix: Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("matrix", matrix.detach().clone())  # (L, L)

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)  # (n, L)
        return out @ self.matrix.to(out)

    def jet(self, x: Tensor) -> Tensor:
        """Value, gradient and Laplacian of every output: ``(d + 2, n, L)`` (see :mod:`neuralsvd.autodiff`)."""
        value, grad, lap = laplacian(self.model, x)  # (n, L), (n, d, L), (n, L)
        jet = torch.cat([value.unsqueeze(0), grad.movedim(1, 0), lap.unsqueeze(0)], 0)  # (d + 2, n, L)
        return jet @ self.matrix.to(jet)


class _PrescribedGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value, grads, *inputs):  # type: ignore[override]
        ctx.grads = grads
        return value.detach().clone()

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        return (None, None, *(grad_output * g for g in ctx.grads))


def prescribed_gradient(value: Tensor, inputs: Sequence[Tensor], grads: Sequence[Tensor]) -> Tensor:
    """A scalar equal to ``value`` whose gradient with respect to ``inputs[k]`` is ``grads[k]``.

    For methods defined by their update rather than by an objective (masked or stop-gradient updates):
    the forward value is a diagnostic, the backward pass delivers the prescribed update.
    """
    return _PrescribedGradient.apply(value, tuple(grads), *inputs)

"""EVD or SVD, chosen once: a small strategy object for everything that differs between the two.

An eigendecomposition (EVD, self-adjoint ``T``) trains one module ``f``; a singular value decomposition
(SVD) trains a pair ``(left, right)``, samples ``(x, y)`` pairs and calls the loss's SVD form.
:func:`decomposition_of` looks at the model once and returns :data:`EVD` or :data:`SVD`; the training
loop, the read-out, the result object, evaluation and plotting ask the strategy instead of testing
``isinstance(model, tuple)`` themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:  # annotations only: this module sits below operators and losses
    from ..losses.base import LossOutput, SpectralLoss
    from ..operators.base import Operator

__all__ = ["EVD", "SVD", "Decomposition", "Model", "check_model", "decomposition_of"]

#: what :func:`~neuralsvd.fit` trains: one module (EVD) or a ``(left, right)`` pair (SVD)
Model = nn.Module | tuple[nn.Module, nn.Module]


class Decomposition:
    """What differs between EVD and SVD (use the instances :data:`EVD` and :data:`SVD`)."""

    name: str
    is_svd: bool

    def modules(self, model: Model) -> tuple[nn.Module, ...]:
        """The trained modules as a tuple (one for EVD, ``(left, right)`` for SVD)."""
        raise NotImplementedError

    def assemble(self, modules: tuple[nn.Module, ...]) -> Model:
        """The inverse of :meth:`modules`."""
        raise NotImplementedError

    def primary(self, model: Model) -> nn.Module:
        """The module whose outputs are the eigenfunctions (SVD: the left functions)."""
        return self.modules(model)[0]

    def convert(self, model: Model, fn: Callable[[nn.Module], nn.Module]) -> Model:
        """``fn`` applied to every module (e.g. a float64 copy), same shape as ``model``."""
        return self.assemble(tuple(fn(m) for m in self.modules(model)))

    def sample(self, op: Operator, n: int, generator: torch.Generator, dtype: torch.dtype) -> Any:
        """One training batch: ``x`` (EVD) or ``(x, y)`` (SVD)."""
        raise NotImplementedError

    def inputs(self, batch: Any) -> Tensor:
        """The input points ``x`` of a batch."""
        raise NotImplementedError

    def loss_output(self, op: Operator, loss: SpectralLoss, model: Model, batch: Any) -> LossOutput:
        """The loss on one batch (its EVD or SVD form)."""
        raise NotImplementedError

    def final_model(self, loss: SpectralLoss, model: Model) -> Model:
        """The trained model as read out by the loss (EVD: ``loss.readout``; SVD: the pair as is)."""
        raise NotImplementedError

    def learned_from_norms(self, norms: Tensor, right_norms: Tensor | None) -> Tensor:
        """The norm read-out of the learned ``T``: ``‖f‖²`` (SVD: ``‖f‖‖g‖``)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name


class _EVD(Decomposition):
    name, is_svd = "EVD", False

    def modules(self, model):
        return (model,)

    def assemble(self, modules):
        (module,) = modules
        return module

    def sample(self, op, n, generator, dtype):
        return op.sample(n, generator, dtype)

    def inputs(self, batch):
        return batch

    def loss_output(self, op, loss, model, batch):
        return loss(*op.apply(model, batch))

    def final_model(self, loss, model):
        return loss.readout(model)

    def learned_from_norms(self, norms, right_norms):
        return norms**2


class _SVD(Decomposition):
    name, is_svd = "SVD", True

    def modules(self, model):
        return tuple(model)

    def assemble(self, modules):
        left, right = modules
        return (left, right)

    def sample(self, op, n, generator, dtype):
        return op.sample_pair(n, generator, dtype)

    def inputs(self, batch):
        return batch[0]

    def loss_output(self, op, loss, model, batch):
        x, y = batch
        return loss.svd(*op.apply_svd(model[0], model[1], x, y))

    def final_model(self, loss, model):
        return tuple(model)

    def learned_from_norms(self, norms, right_norms):
        return norms * right_norms


EVD: Decomposition = _EVD()
SVD: Decomposition = _SVD()


def decomposition_of(model: Any) -> Decomposition:
    """:data:`SVD` for a ``(left, right)`` pair (a tuple or list), else :data:`EVD` (one module, or any
    callable ``x -> (n, L)`` where only outputs are needed, e.g. the read-out)."""
    return SVD if isinstance(model, (tuple, list)) else EVD


def check_model(model: Any) -> Decomposition:
    """:func:`decomposition_of` for a model to train: one ``nn.Module`` or a pair of them; raises
    ``TypeError``/``ValueError`` otherwise."""
    decomposition = decomposition_of(model)
    modules = tuple(model) if decomposition.is_svd else (model,)
    if decomposition.is_svd and len(modules) != 2:
        raise ValueError(f"for SVD pass exactly two models (left, right), got {len(modules)}")
    for m in modules:
        if not isinstance(m, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module (or a pair of them for SVD), got {type(m).__name__}")
    return decomposition

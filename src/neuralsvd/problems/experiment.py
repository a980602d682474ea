"""An experiment built once: :func:`build` turns an :class:`~neuralsvd.problems.ExperimentConfig` into the
operator, model, loss and :func:`~neuralsvd.fit` options that ``neuralsvd run``, ``neuralsvd compare``, the
memory check and :func:`neuralsvd.load` all use.

Building order (what makes a seeded run reproducible): the problem's ``prepare`` and the operator; the
:func:`~neuralsvd.fit` options (which ``prepare`` may have chosen); the memory check (see :func:`build`); the
loss; ``torch.manual_seed(config.seed)`` and the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..losses import SpectralLoss
from ..operators.base import Operator
from ..training.fit import estimate_fit_memory, fit
from ..training.resources import allocation_failures_as, check_device, check_memory
from ..training.result import FitResult
from .config import ExperimentConfig, fit_options
from .registry import build_model, loss_modes, make_operator, method_loss

__all__ = ["Experiment", "build"]


@dataclass
class Experiment:
    """A configuration and what it builds: ``operator``, ``model`` (a module, or a ``(left, right)`` pair
    for SVD problems), ``loss`` and ``options`` (the keyword arguments of :func:`~neuralsvd.fit` the
    configuration sets)."""

    config: ExperimentConfig
    operator: Operator
    model: Any
    loss: SpectralLoss
    options: dict[str, Any]

    def fit(self, **run_options: Any) -> FitResult:
        """:func:`~neuralsvd.fit` of this experiment; ``run_options``: ``checkpoint_dir``, ``resume``,
        ``progress``, ``callback``, ``distributed``."""
        return fit(self.model, self.operator, self.loss, **self.options, **run_options)


def build(config: ExperimentConfig, check_resources: bool = True) -> Experiment:
    """Build ``config``'s experiment (``config.operator`` may be filled in by the problem's ``prepare``).

    With ``check_resources`` the device must exist and the estimated peak memory of training fit on it
    (:class:`~neuralsvd.training.resources.ResourceError` otherwise) before the loss and the weights are
    allocated; the estimate reads the model's shapes from a blueprint on the ``meta`` device, which
    allocates nothing (a real build of a model that cannot fit would allocate it first)."""
    factory = method_loss(config.method)  # an unknown method fails before anything is built
    operator = make_operator(config)
    options = fit_options(config)  # after the problem's prepare, which may choose train options ("auto")
    if check_resources:
        _check_memory(config, operator, options)
    with allocation_failures_as(f"out of memory building the {config.method} loss for {config.modes} modes"):
        loss = factory(loss_modes(config))
    torch.manual_seed(config.seed)
    with allocation_failures_as(f"out of memory building the model on {config.device}"):
        model = build_model(config, operator)
    return Experiment(config, operator, model, loss, options)


def _check_memory(config: ExperimentConfig, operator: Operator, options: dict[str, Any]) -> None:
    device = check_device(config.device)
    try:
        with torch.device("meta"):
            blueprint = build_model(config, operator)
    except Exception:  # noqa: BLE001 - a builder that needs real data; fit checks again on the real model
        return
    check_memory(estimate_fit_memory(blueprint, operator, loss_modes(config), batch_size=options["batch_size"],
                                     steps=options["steps"], optimizer=options["optimizer"],
                                     ema_decay=options["ema_decay"], dtype=options["dtype"],
                                     eval_batch_size=options["eval_batch_size"]), device)

"""An experiment built once: :func:`build` turns an :class:`~neuralsvd.problems.ExperimentConfig` into the
operator, model, loss and :func:`~neuralsvd.fit` options that ``neuralsvd run``, ``neuralsvd compare``, the
memory check and :func:`load` all use.

Building order (what makes a seeded run reproducible): the problem's ``prepare`` and the operator; the
memory check (see :func:`build`); the loss; ``torch.manual_seed(config.seed)`` and the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..cli.artifacts import FORMAT, RESULT_NAME, RESULT_TENSORS, ArtifactError
from ..losses import SpectralLoss
from ..operators.base import Operator
from ..training.decomposition import decomposition_of
from ..training.fit import estimate_fit_memory, fit
from ..training.resources import allocation_failures_as, check_device, check_memory
from ..training.result import FitResult
from .config import DTYPES, ExperimentConfig, fit_options
from .registry import build_model, make_operator, method_loss

__all__ = ["Experiment", "build", "load"]


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
    options = fit_options(config)
    factory = method_loss(config.method)  # an unknown method fails before anything is built
    operator = make_operator(config)
    if check_resources:
        _check_memory(config, operator, options)
    with allocation_failures_as(f"out of memory building the {config.method} loss for {config.modes} modes"):
        loss = factory(config.modes)
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
    check_memory(estimate_fit_memory(blueprint, operator, config.modes, batch_size=options["batch_size"],
                                     steps=options["steps"], optimizer=options["optimizer"],
                                     ema_decay=options["ema_decay"], dtype=options["dtype"],
                                     eval_batch_size=options["eval_batch_size"]), device)


def load(run_dir: str | Path, device: str | torch.device = "cpu") -> FitResult:
    """The :class:`~neuralsvd.FitResult` of a finished run folder, rebuilt from its ``config.json`` and
    ``result.pt``: ``eigenvalues`` as in ``metrics.json``, ``eigenfunctions(x)`` on new points (the same
    outputs as the trained result), ``operator``, and ``config`` (an
    :class:`~neuralsvd.problems.ExperimentConfig`).

    Raises :class:`~neuralsvd.cli.artifacts.ArtifactError` (one line) for a folder that is not a finished run of
    this version.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ArtifactError(f"{run_dir} is not a directory")
    config_path, result_path = run_dir / "config.json", run_dir / RESULT_NAME
    for path in (config_path, result_path):
        if not path.is_file():
            hint = (" (written by an older neuralsvd? rerun, or `neuralsvd run PROBLEM --out DIR --resume` to "
                    "write it)" if path is result_path and (run_dir / "checkpoint.pt").exists() else "")
            raise ArtifactError(f"{run_dir} is not a finished neuralsvd run: no {path.name}{hint}")
    try:
        config = ExperimentConfig.from_dict(json.loads(config_path.read_text()))
    except (ValueError, TypeError, AttributeError) as err:
        raise ArtifactError(f"{config_path} is not a configuration of this neuralsvd version: {err}") from None
    try:
        state = torch.load(result_path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling raises many types; all mean "unreadable"
        raise ArtifactError(f"cannot read {result_path} (corrupted or truncated?): {type(err).__name__}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else None
        by = state.get("neuralsvd", "an unknown version") if isinstance(state, dict) else "an unknown version"
        raise ArtifactError(f"{result_path} has format {found!r} (written by neuralsvd {by}); this version reads "
                            f"format {FORMAT}")
    try:
        with torch.random.fork_rng(devices=[]):  # the caller's random stream is left as it was
            exp = build(config, check_resources=False)
        dec = decomposition_of(exp.model)
        dtype = DTYPES[config.train.dtype]
        modules = tuple(m.to(dtype=dtype) for m in dec.modules(exp.model))
        final = dec.final_model(exp.loss, dec.assemble(modules))
        if len(state["models"]) != len(dec.modules(final)):
            raise ValueError(f"{len(state['models'])} saved models for a {dec.name} problem")
        for module, weights in zip(dec.modules(final), state["models"]):
            module.load_state_dict(weights, assign=True)  # the saved dtypes (e.g. read-out buffers)
            module.to(device).eval()
    except (KeyError, ValueError, RuntimeError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ArtifactError(f"{run_dir}: the saved weights do not fit the configured model: {first}") from None
    exp.operator.to(device)
    return FitResult(
        model=final, operator=exp.operator, history=state["history"], steps=state["steps"],
        wall_seconds=state["wall_seconds"], steps_per_second=state["steps_per_second"], extras=state["extras"],
        config=config, **{k: state[k] for k in RESULT_TENSORS},
    )

"""A trained run as an artifact: :func:`save` a :class:`~neuralsvd.FitResult` into its run folder,
:func:`~neuralsvd.load` it back (:mod:`neuralsvd.problems.experiment`, which rebuilds the model), :func:`export` its eigenfunctions as a self-contained ``torch.export`` program,
and :func:`write_history` the training history as CSV.

A run folder (written by ``neuralsvd run``) holds ``config.json`` (how to rebuild the operator and the
model), ``result.pt`` (the final weights and read-out: mode order, norms, Ritz mixing, eigenvalues,
history; format :data:`FORMAT`), ``metrics.json``, ``history.csv`` and ``checkpoint.pt`` (the training
state, for ``--resume``).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..problems.config import DTYPES, ExperimentConfig
from ..problems.experiment import build
from ..training.checkpoint import atomic_write
from ..training.decomposition import decomposition_of
from ..training.eigenfunctions import Eigenfunctions
from ..training.result import FitResult

__all__ = ["EXPORT_NAME", "FORMAT", "RESULT_NAME", "RESULT_TENSORS", "ArtifactError", "export", "load", "save",
           "write_history"]

#: version of the ``result.pt`` layout; :func:`load` reads exactly this one
FORMAT = 1
RESULT_NAME = "result.pt"
EXPORT_NAME = "eigenfunctions.pt2"
RESULT_TENSORS = ("eigenvalues", "learned_eigenvalues", "order", "norms", "right_norms", "mixing", "eigenvalue_stderr")
#: tensors that files written before they existed lack (read as None)
OPTIONAL_TENSORS = ("eigenvalue_stderr",)


class ArtifactError(ValueError):
    """A run folder that cannot be loaded: missing or corrupted files, or another version's format."""


def save(result: FitResult, run_dir: str | Path) -> Path:
    """Write ``result`` (final weights, read-out and history) to ``run_dir/result.pt``; returns the path.
    :func:`load` also needs the run's ``config.json`` (``neuralsvd run`` writes both)."""
    from .. import __version__

    dec = result.decomposition
    state = {
        "format": FORMAT,
        "neuralsvd": __version__,
        "decomposition": dec.name,
        "models": [{k: v.detach().cpu() for k, v in m.state_dict().items()} for m in dec.modules(result.model)],
        **{k: None if getattr(result, k) is None else getattr(result, k).detach().cpu() for k in RESULT_TENSORS},
        "history": {k: v.detach().cpu() for k, v in result.history.items()},
        "steps": result.steps,
        "wall_seconds": result.wall_seconds,
        "steps_per_second": result.steps_per_second,
        "extras": json.loads(json.dumps(result.extras)),  # plain data only
    }
    return atomic_write(Path(run_dir) / RESULT_NAME, lambda fh: torch.save(state, fh))


def load(run_dir: str | Path, device: str | torch.device = "cpu") -> FitResult:
    """The :class:`~neuralsvd.FitResult` of a finished run folder, rebuilt from its ``config.json`` and
    ``result.pt``: ``eigenvalues`` as in ``metrics.json``, ``eigenfunctions(x)`` on new points (the same
    outputs as the trained result), ``operator``, and ``config`` (an
    :class:`~neuralsvd.problems.ExperimentConfig`).

    Raises :class:`ArtifactError` (one line) for a folder that is not a finished run of
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
        config=config, **{k: state.get(k) if k in OPTIONAL_TENSORS else state[k] for k in RESULT_TENSORS},
    )


def export(result: FitResult, path: str | Path, example: Tensor, right: bool = False) -> Path:
    """Compile ``result.eigenfunctions`` (``right``: the right singular functions) with ``torch.export``
    (a dynamic batch size) to ``path``; load it with ``torch.export.load(path).module()``, whose forward
    maps points ``(n, d)`` (indices ``(n,)`` for finite operators) to the normalized eigenfunctions
    ``(n, L)``, in the same space as :meth:`~neuralsvd.FitResult.eigenfunctions`. Needs only torch."""
    module = Eigenfunctions(result, right).eval()
    batch = torch.export.Dim("n", min=2)
    try:
        with torch.no_grad():
            program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    except Exception as err:  # noqa: BLE001 - export failures come in many types
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ArtifactError(f"torch.export could not compile this model: {first}") from None
    path = Path(path)
    torch.export.save(program, path)
    return path


def write_history(history: dict[str, Tensor], path: str | Path, label: str = "eigenvalue") -> Path:
    """``history`` (``step``, ``loss``, ``eigenvalues (S, L)``) as CSV: columns ``step, loss,
    {label}_0 .. {label}_{L-1}``, one row per training step (empty cells for steps a rollback undid)."""
    steps, loss, values = history["step"].tolist(), history["loss"].tolist(), history["eigenvalues"].tolist()
    num = len(values[0]) if values else 0

    def cell(v: float) -> Any:
        return "" if math.isnan(v) else repr(v)

    def write(fh: Any) -> None:
        text = io.TextIOWrapper(fh, newline="", encoding="utf-8")
        writer = csv.writer(text)
        writer.writerow(["step", "loss", *(f"{label}_{i}" for i in range(num))])
        for s, lo, row in zip(steps, loss, values):
            writer.writerow([s, cell(lo), *(cell(v) for v in row)])
        text.flush()
        text.detach()

    return atomic_write(Path(path), write, durable=False)

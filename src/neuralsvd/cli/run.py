"""Run a configured experiment end to end and write its outputs to a folder.

Outputs in ``out_dir``: ``config.json`` (the resolved configuration), ``checkpoint.pt`` (written by
:func:`neuralsvd.fit` during and after training), ``result.pt`` (the trained result, for
:func:`neuralsvd.load`), ``metrics.json`` (fields: see DESIGN §3), ``history.csv`` (per-step loss and
eigenvalue estimates), ``eigenfunctions.png`` and ``training_curve.png``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from ..problems.config import DTYPES, ConfigError, ExperimentConfig
from ..problems.experiment import Experiment, build
from ..problems.registry import get_problem
from ..training.checkpoint import atomic_write, lock_folder
from ..training.distributed import DataParallel, data_parallel
from ..training.evaluation import evaluate
from ..training.fit import DivergenceError
from ..training.result import NORM_RATIO_RANGE
from . import artifacts

__all__ = ["DTYPES", "OutputError", "run", "summary_table"]
#: metrics.json fields that are null when a run diverged
NULL_ON_FAILURE = ("wall_seconds", "steps_per_second", "eigenvalues", "eigenvalue_stderr", "exact_eigenvalues",
                   "eigenvalue_relative_error", "mean_eigenvalue_relative_error", "angle_distance",
                   "subspace_distance_avg", "subspace_distance_all", "orthogonality_error")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    text = (json.dumps(data, indent=2, allow_nan=False) + "\n").encode()
    atomic_write(path, lambda fh: fh.write(text), durable=False)


class OutputError(OSError):
    """The output folder cannot be created or written."""


def _prepare_out_dir(out_dir: Path) -> None:
    """Create ``out_dir`` and check that files can be written there, with a one-line error if not."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(err.errno, f"cannot create the output folder {out_dir}: {err.strerror or err}") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise OutputError(errno.EACCES, f"the output folder {out_dir} is not writable")


def _check_resume(out_dir: Path, config: ExperimentConfig) -> None:
    path = out_dir / "config.json"
    if not path.exists():
        raise ConfigError(f"--resume: no config.json in {out_dir}; nothing to resume")
    try:  # through the dataclasses: fields added since the run was written take their defaults
        old = json.loads(json.dumps(ExperimentConfig.from_dict(json.loads(path.read_text())).to_dict()))
    except (ValueError, TypeError) as err:
        raise ConfigError(f"--resume: {path} is not a configuration of this version: {err}") from None
    new = json.loads(json.dumps(config.to_dict()))  # tuples become lists, as in the file
    for d in (old, new):
        d["train"] = {k: v for k, v in d["train"].items() if k != "steps"}
    if old != new:
        diffs = _diff(old, new)
        raise ConfigError(f"--resume: the configuration differs from {path} in {', '.join(diffs)} "
                          "(only the number of steps may change)")


def _diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k} ({a!r} -> {b!r})")
    return out


@contextlib.contextmanager
def _atomic_figure(path: Path) -> Iterator[Path]:
    """A temporary path for a figure writer, renamed to ``path`` when it succeeds (removed if not)."""
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, OSError):
            raise OSError(err.errno, f"could not write {path}: {err.strerror or err}") from err
        raise


def summary_table(metrics: dict[str, Any], label: str = "E") -> str:
    """A short plain-text table of learned vs exact eigenvalues and the summary metrics; without a closed
    form, against the reference solver's values where the problem has one (``reference_*`` fields)."""
    ev, exact, rel = metrics["eigenvalues"], metrics["exact_eigenvalues"], metrics["eigenvalue_relative_error"]
    against, prefix = "exact", ""
    if exact is None and metrics.get("reference_eigenvalues") is not None:
        exact, rel = metrics["reference_eigenvalues"], metrics["reference_eigenvalue_relative_error"]
        against, prefix = "ref.", "reference_"
    stderr = metrics.get("eigenvalue_stderr")
    lines = [f"{'mode':>4}  {label + ' learned':>14}  {label + ' ' + against:>14}  {'rel. error':>10}"
             + (f"  {'read-out ±':>10}" if stderr is not None else "")]
    for i, e in enumerate(ev):
        ex = f"{exact[i]:14.6f}" if exact is not None else f"{'-':>14}"
        re = f"{rel[i]:10.2e}" if rel is not None else f"{'-':>10}"
        se = f"  {stderr[i]:10.2e}" if stderr is not None else ""
        lines.append(f"{i:>4}  {e:14.6f}  {ex}  {re}{se}")
    for key in (prefix + "mean_eigenvalue_relative_error", prefix + "angle_distance", prefix + "subspace_distance_avg",
                prefix + "subspace_distance_all", "orthogonality_error"):
        if metrics.get(key) is not None:
            lines.append(f"{key:>32}: {metrics[key]:.3e}")
    if metrics.get("status") == "unconverged":
        ratios = metrics.get("norm_ratio") or []
        modes = ", ".join(f"{m} ({ratios[m]:.3g})" for m in metrics["unconverged_modes"])
        lines.append(f"{'status':>32}: UNCONVERGED: modes {modes} have squared norm / eigenvalue outside "
                     f"[{NORM_RATIO_RANGE[0]}, {NORM_RATIO_RANGE[1]}]; their values are unreliable (train longer)")
    if metrics.get("steps_per_second") is not None:
        lines.append(f"{'steps_per_second':>32}: {metrics['steps_per_second']:.1f}  "
                     f"(wall {metrics['wall_seconds']:.0f} s)")
    return "\n".join(lines)


def run(config: ExperimentConfig, out_dir: str | Path, resume: bool = False, progress: bool = True,
        echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Train, evaluate and write the outputs of ``config`` into ``out_dir``; returns the metrics.

    The experiment is built once (:func:`~neuralsvd.problems.experiment.build`: before its weights
    exist, the device must exist and the estimated peak memory fit,
    :class:`~neuralsvd.training.resources.ResourceError` otherwise); the output folder must be creatable and
    writable (:class:`OutputError`) and not in use by another run
    (:class:`~neuralsvd.training.checkpoint.FolderLockedError`; the lock dies with its process). Every file is
    written atomically. A signal during training raises :class:`~neuralsvd.training.interrupts.TrainingInterrupted`
    after saving the checkpoint (see :func:`neuralsvd.fit`).

    Under ``torchrun`` (or in an initialized process group) every rank trains its share of the batch
    (:mod:`neuralsvd.training.distributed`); only rank 0 creates, locks and writes ``out_dir``, evaluates and
    reports; the other ranks return ``{"status": "ok", "rank": r}``.
    """
    out_dir = Path(out_dir)
    world = data_parallel(None, config.device)
    exp = build(config)
    if resume:
        _check_resume(out_dir, config)
    if world.is_main:
        _prepare_out_dir(out_dir)
    with lock_folder(out_dir) if world.is_main else contextlib.nullcontext():
        return _run_locked(exp, out_dir, resume, progress, echo, world)


def _run_locked(exp: Experiment, out_dir: Path, resume: bool, progress: bool, echo: Callable[[str], None],
                world: DataParallel) -> dict[str, Any]:
    config = exp.config
    if world.is_main:
        _write_json(out_dir / "config.json", config.to_dict())
    t = config.train
    header = {"problem": config.problem, "method": config.method, "modes": config.modes, "steps": t.steps,
              "batch_size": t.batch_size, "seed": config.seed, "device": config.device,
              "processes": world.world_size}
    try:
        result = exp.fit(checkpoint_dir=out_dir, resume=resume, progress=progress)
    except DivergenceError as err:  # never write NaN up as a result
        if world.is_main:
            _write_json(out_dir / "metrics.json", {**header, "status": "diverged", "error": str(err),
                                                    **dict.fromkeys(NULL_ON_FAILURE)})
        raise
    if not world.is_main:  # every rank holds the same result; rank 0 evaluates and writes it
        return {"status": "ok", "rank": world.rank}
    problem = get_problem(config.problem)
    report = evaluate(result)
    if problem.extra_metrics is not None:
        report.update(problem.extra_metrics(result, config))
    metrics = {
        **header, "wall_seconds": result.wall_seconds,
        "steps_per_second": result.steps_per_second if math.isfinite(result.steps_per_second) else None,
        "status": result.status, "unconverged_modes": result.unconverged_modes, "readout": t.readout,
        "warm_start_steps": result.extras.get("warm_start_steps"),
        "rescued_modes": {str(k): v for k, v in result.extras.get("rescued_modes", {}).items()},
        "rescue_steps": result.extras.get("rescue_steps"), "rescues": result.extras.get("rescues", []),
        "rollbacks": result.extras["rollbacks"],
        "resumed_from_step": result.extras["resumed_from"],
        "norm_ratio": result.extras.get("norm_ratio"),
        **report,
    }
    _write_json(out_dir / "metrics.json", metrics)
    artifacts.save(result, out_dir)
    artifacts.write_history(result.history, out_dir / "history.csv")
    from .. import plotting

    with _atomic_figure(out_dir / "eigenfunctions.png") as path:
        if problem.plot is not None:
            problem.plot(result, config, path)
        else:
            plotting.plot_eigenfunctions(result, exp.operator, path=path)
    exact = metrics["exact_eigenvalues"]
    with _atomic_figure(out_dir / "training_curve.png") as path:
        plotting.plot_training_curve(result.history, torch.tensor(exact) if exact is not None else None, path=path)
    echo(summary_table(metrics))
    echo(f"outputs written to {out_dir}/")
    return metrics

"""Run a configured experiment end to end and write its outputs to a folder.

Outputs in ``out_dir``: ``config.json`` (the resolved configuration), ``checkpoint.pt`` (written by
:func:`neuralsvd.fit` during and after training), ``result.pt`` (the trained result, for
:func:`neuralsvd.load`), ``metrics.json`` (fields: see DESIGN §3), ``history.csv`` (per-step loss and
eigenvalue estimates), ``eigenfunctions.png`` and ``training_curve.png``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .. import artifacts
from ..evaluation import evaluate
from ..fit import DivergenceError, fit
from .config import DTYPES, ConfigError, ExperimentConfig, fit_options
from .registry import build_model, get_problem, make_loss, make_operator

__all__ = ["DTYPES", "run", "summary_table"]
#: metrics.json fields that are null when a run diverged
NULL_ON_FAILURE = ("wall_seconds", "steps_per_second", "eigenvalues", "exact_eigenvalues",
                   "eigenvalue_relative_error", "mean_eigenvalue_relative_error", "angle_distance",
                   "subspace_distance_avg", "subspace_distance_all", "orthogonality_error")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


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


def summary_table(metrics: dict[str, Any], label: str = "E") -> str:
    """A short plain-text table of learned vs exact eigenvalues and the summary metrics."""
    ev, exact, rel = metrics["eigenvalues"], metrics["exact_eigenvalues"], metrics["eigenvalue_relative_error"]
    lines = [f"{'mode':>4}  {label + ' learned':>14}  {label + ' exact':>14}  {'rel. error':>10}"]
    for i, e in enumerate(ev):
        ex = f"{exact[i]:14.6f}" if exact is not None else f"{'-':>14}"
        re = f"{rel[i]:10.2e}" if rel is not None else f"{'-':>10}"
        lines.append(f"{i:>4}  {e:14.6f}  {ex}  {re}")
    for key in ("mean_eigenvalue_relative_error", "angle_distance", "subspace_distance_avg", "subspace_distance_all",
                "orthogonality_error"):
        if metrics.get(key) is not None:
            lines.append(f"{key:>32}: {metrics[key]:.3e}")
    if metrics.get("steps_per_second") is not None:
        lines.append(f"{'steps_per_second':>32}: {metrics['steps_per_second']:.1f}  "
                     f"(wall {metrics['wall_seconds']:.0f} s)")
    return "\n".join(lines)


def run(config: ExperimentConfig, out_dir: str | Path, resume: bool = False, progress: bool = True,
        echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Train, evaluate and write the outputs of ``config`` into ``out_dir``; returns the metrics."""
    out_dir = Path(out_dir)
    options = fit_options(config)
    loss = make_loss(config.method, config.modes)
    operator = make_operator(config)
    if resume:
        _check_resume(out_dir, config)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / "config.json", config.to_dict())
    torch.manual_seed(config.seed)
    model = build_model(config, operator)
    t = config.train
    header = {"problem": config.problem, "method": config.method, "modes": config.modes, "steps": t.steps,
              "batch_size": t.batch_size, "seed": config.seed, "device": config.device}
    try:
        result = fit(model, operator, loss, **options, checkpoint_dir=out_dir, resume=resume, progress=progress)
    except DivergenceError as err:  # never write NaN up as a result
        _write_json(out_dir / "metrics.json", {**header, "status": "diverged", "error": str(err),
                                                **dict.fromkeys(NULL_ON_FAILURE)})
        raise
    problem = get_problem(config.problem)
    report = evaluate(result)
    if problem.extra_metrics is not None:
        report.update(problem.extra_metrics(result, config))
    metrics = {
        **header, "wall_seconds": result.wall_seconds,
        "steps_per_second": result.steps_per_second if math.isfinite(result.steps_per_second) else None,
        "status": "ok", "readout": t.readout, "rollbacks": result.extras["rollbacks"], "resumed_from_step": result.extras["resumed_from"],
        "norm_ratio": result.extras.get("norm_ratio"),
        **report,
    }
    _write_json(out_dir / "metrics.json", metrics)
    artifacts.save(result, out_dir)
    artifacts.write_history(result.history, out_dir / "history.csv")
    from .. import plotting

    if problem.plot is not None:
        problem.plot(result, config, out_dir / "eigenfunctions.png")
    else:
        plotting.plot_eigenfunctions(result, operator, path=out_dir / "eigenfunctions.png")
    exact = metrics["exact_eigenvalues"]
    plotting.plot_training_curve(result.history, torch.tensor(exact) if exact is not None else None,
                                 path=out_dir / "training_curve.png")
    echo(summary_table(metrics))
    echo(f"outputs written to {out_dir}/")
    return metrics

"""Compare methods on one problem: every (method, seed) through :func:`~neuralsvd.cli.run.run`.

Outputs in ``out_dir``: ``<method>-seed<k>/`` (each run's usual outputs), ``comparison.json`` (the list of
the runs' ``metrics.json`` records, in run order), ``comparison.md`` (a table: method × the five metrics
of :data:`~neuralsvd.plotting.COMPARISON_METRICS` and steps/second, mean ± standard deviation over the
seeds that succeeded) and ``comparison.png`` (:func:`~neuralsvd.plotting.plot_comparison`).

With ``jobs > 1`` the runs go to that many worker processes (spawned, each with ``cores // jobs`` torch
threads, at least one); the records are those of a sequential run, in the same order (only the timing
fields differ).

A run that raises is recorded, not re-raised: ``status`` ``"diverged"`` (:class:`~neuralsvd.DivergenceError`)
or ``"failed"`` (any other exception), with its ``error`` message and null metrics, so one broken method
never costs the others.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import plotting
from .._validation import check_positive_int
from ..problems.config import ConfigError, ExperimentConfig
from ..problems.registry import METHODS
from ..training.fit import DivergenceError
from .run import NULL_ON_FAILURE, run

__all__ = ["compare", "comparison_table"]

#: table columns (metrics.json keys)
COLUMNS = (*plotting.COMPARISON_METRICS, "steps_per_second")


def _run_one(config: ExperimentConfig, out_dir: Path, progress: bool) -> dict[str, Any]:
    """The run's metrics, or a failure record (with the error) if it raised."""
    try:
        return run(config, out_dir, progress=progress, echo=lambda _: None)
    except Exception as err:  # noqa: BLE001 - a failing method must not end the comparison
        status = "diverged" if isinstance(err, DivergenceError) else "failed"
        t = config.train
        return {"problem": config.problem, "method": config.method, "modes": config.modes, "steps": t.steps,
                "batch_size": t.batch_size, "seed": config.seed, "device": config.device, "status": status,
                "error": f"{type(err).__name__}: {err}", **dict.fromkeys(NULL_ON_FAILURE)}


def compare(config: ExperimentConfig, methods: Sequence[str], out_dir: str | Path, seeds: int = 1,
            progress: bool = False, echo: Callable[[str], None] = print, jobs: int = 1) -> list[dict[str, Any]]:
    """Run ``config`` with each method for seeds ``config.seed .. config.seed + seeds - 1`` (in ``jobs``
    worker processes); write the comparison files into ``out_dir`` and return the records (see the
    module docstring)."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ConfigError(f"unknown method(s) {unknown or list(methods)}; "
                          f"valid methods: {', '.join(METHODS)}")
    try:
        check_positive_int("seeds", seeds)
        check_positive_int("jobs", jobs)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    out_dir = Path(out_dir)
    runs = [(config.with_overrides([f"method={method!r}", f"seed={seed}"]), out_dir / f"{method}-seed{seed}")
            for method in methods for seed in range(config.seed, config.seed + seeds)]
    records = []
    for record in _run_all(runs, progress and jobs == 1, jobs):
        records.append(record)
        echo(f"{record['method']} seed {record['seed']}: {record['status']}"
             + (f" ({record['error']})" if "error" in record else
                f", eigenvalue rel. error {record['mean_eigenvalue_relative_error']}"))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "comparison.json").write_text(json.dumps(records, indent=2, allow_nan=False) + "\n")
    (out_dir / "comparison.md").write_text(comparison_table(records) + "\n")
    plotting.plot_comparison(records, path=out_dir / "comparison.png")
    return records


def _run_all(runs: list[tuple[ExperimentConfig, Path]], progress: bool, jobs: int) -> Iterator[dict[str, Any]]:
    """The runs' records in order: here, or in ``jobs`` spawned workers of ``cores // jobs`` threads."""
    if jobs == 1:
        for cfg, out in runs:
            yield _run_one(cfg, out, progress)
        return
    threads = max(1, len(os.sched_getaffinity(0)) // jobs) if hasattr(os, "sched_getaffinity") else 1
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=torch.set_num_threads,
                             initargs=(threads,)) as pool:
        futures = [pool.submit(_run_one, cfg, out, False) for cfg, out in runs]
        for future in futures:
            yield future.result()


def _cell(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3g}"
    return f"{np.mean(values):.3g} ± {np.std(values):.2g}"


def comparison_table(records: Sequence[dict[str, Any]]) -> str:
    """Markdown: one row per method (first-seen order), cells mean ± population standard deviation over
    the method's runs that finished (``"ok"`` or ``"unconverged"``); runs not ``"ok"`` are counted, and
    failed ones listed below the table with their errors."""
    first = records[0]
    methods = list(dict.fromkeys(r["method"] for r in records))
    lines = [
        f"# {first['problem']}: {first['modes']} modes, {first['steps']} steps, batch {first['batch_size']}",
        "",
        "Cells: mean ± standard deviation over the seeds that ran (one seed: its value).",
        "",
        "| method | runs ok | " + " | ".join(k.replace("_", " ") for k in COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 2) + "|",
    ]
    failures = []
    for method in methods:
        runs = [r for r in records if r["method"] == method]
        ok = [r for r in runs if r["status"] == "ok"]
        done = [r for r in runs if "error" not in r]
        failures += [r for r in runs if "error" in r]
        cells = [_cell([float(r[k]) for r in done if r.get(k) is not None and math.isfinite(float(r[k]))])
                 for k in COLUMNS]
        status = f"{len(ok)}/{len(runs)}" + ("" if len(ok) == len(runs) else " (failed: " + ", ".join(
            f"seed {r['seed']} {r['status']}" for r in runs if r["status"] != "ok") + ")")
        lines.append(f"| {method} | {status} | " + " | ".join(cells) + " |")
    if failures:
        lines += ["", "Failed runs:", ""]
        lines += [f"- {r['method']} seed {r['seed']}: {r['status']}: {r['error']}" for r in failures]
    return "\n".join(lines)

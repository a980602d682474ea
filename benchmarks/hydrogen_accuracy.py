"""Hydrogen accuracy at several step budgets: energy errors (mean and per shell), subspace distances, wall time.

Each budget is a separate run whose schedule spans that budget (a cosine schedule decays to zero at the
end of the run), so a row answers "what does a run of N steps give". Configurations come from the
experiment presets plus ``--set`` overrides, the same as ``neuralsvd run``.

    python benchmarks/hydrogen_accuracy.py --budgets 1000 3000 6000 --seeds 0
    python benchmarks/hydrogen_accuracy.py --preset hydrogen-paper --budgets 6000 --set modes=9 --set model.fourier_features=0
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time

import torch

import neuralsvd as nsvd
from neuralsvd.experiments import get_problem, make_loss, make_model, make_operator
from neuralsvd.experiments.run import DTYPES
from neuralsvd.metrics import degenerate_blocks


def run_once(config) -> dict:
    op = make_operator(config)
    torch.manual_seed(config.seed)
    model = make_model(config, op.dim)
    t = config.train
    t0 = time.perf_counter()
    result = nsvd.fit(model, op, make_loss(config.method, config.modes), steps=t.steps, batch_size=t.batch_size,
                      optimizer=t.optimizer, lr=t.lr, schedule=t.schedule, warmup=t.warmup, ema_decay=t.ema_decay,
                      seed=config.seed, dtype=DTYPES[t.dtype], progress=False, eval_batches=t.eval_batches)
    wall = time.perf_counter() - t0
    rep = nsvd.evaluate(result)
    blocks = degenerate_blocks(torch.tensor(rep["exact_eigenvalues"]))
    rel = rep["eigenvalue_relative_error"]
    return {
        "steps": t.steps, "seed": config.seed, "wall_seconds": wall,
        "mean_rel_error": rep["mean_eigenvalue_relative_error"],
        "shell_rel_error": [sum(rel[i] for i in b) / len(b) for b in blocks],
        "ground_state_rel_error": rel[0],
        "subspace_distance_avg": rep["subspace_distance_avg"],
        "subspace_distance_all": rep["subspace_distance_all"],
        "angle_distance": rep["angle_distance"],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="hydrogen")
    parser.add_argument("--budgets", type=int, nargs="+", default=[1000, 3000, 6000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print("command: python benchmarks/hydrogen_accuracy.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    base = get_problem(args.preset).default_config().with_overrides(args.overrides)
    rows = []
    header = f"{'steps':>7} {'seed':>4} {'wall s':>7} {'mean rel':>9} {'E0 rel':>9} {'per-shell rel':>30} {'sub avg':>9} {'sub all':>9}"
    print(f"preset {args.preset}, modes {base.modes}, batch {base.train.batch_size}, {base.train.optimizer} "
          f"lr {base.train.lr}")
    print(header)
    for steps in args.budgets:
        for seed in args.seeds:
            cfg = base.with_overrides([f"train.steps={steps}", f"seed={seed}"])
            row = run_once(cfg)
            rows.append(row)
            shells = " ".join(f"{e:.1e}" for e in row["shell_rel_error"])
            print(f"{steps:>7} {seed:>4} {row['wall_seconds']:>7.0f} {row['mean_rel_error']:>9.2e} "
                  f"{row['ground_state_rel_error']:>9.2e} {shells:>30} {row['subspace_distance_avg']:>9.2e} "
                  f"{row['subspace_distance_all']:>9.2e}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"preset": args.preset, "overrides": args.overrides, "rows": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

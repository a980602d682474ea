"""Short budgets on problems no preset was tuned on: NeuralSVD (before/after) vs NeuralEF, library defaults.

Every run is what a newcomer writes: the operator, ``models.ParallelMLP(d, L)`` with its defaults, the
loss with its defaults, ``fit(model, op, loss, steps=N)`` (fit's defaults: Adam at the model's learning rate,
batch 128, the default schedule; the runs in the docs were made with 1e-3 and the cosine schedule). Problems:

* ``oscillator3d``: ``HarmonicOscillator(dim=3)`` (its default shift and sampler), 4 modes (ground state and
  the 3-fold first shell);
* ``user2d``: the potential ``x0² + 2.25 x1²`` as a user would pass it to ``Schrodinger`` (default sampler
  ``N(0, I)``, ``shift=10``), 4 modes; it is the oscillator with ω = (1, 1.5), whose closed form scores it;
* ``oscillator2d``: ``HarmonicOscillator(dim=2)``, 6 modes (n ≤ 2).

    python benchmarks/short_budget.py --steps 3000 --seeds 0 1 --json docs/figures/short-budget.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import warnings

import torch

import neuralsvd as nsvd
from neuralsvd.problems import make_loss

PROBLEMS = {
    "oscillator3d": (lambda: nsvd.operators.HarmonicOscillator(dim=3), 4),
    "user2d": (lambda: nsvd.operators.HarmonicOscillator(dim=2, omega=(1.0, 1.5), shift=10.0,
                                                          sampler=nsvd.sampling.Gaussian(2, 1.0)), 4),
    "oscillator2d": (lambda: nsvd.operators.HarmonicOscillator(dim=2), 6),
}


def run(problem: str, method: str, steps: int, seed: int) -> dict:
    build, modes = PROBLEMS[problem]
    op = build()
    torch.manual_seed(seed)
    model = nsvd.models.ParallelMLP(op.dim, modes)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = nsvd.fit(model, op, make_loss(method, modes), steps=steps, seed=seed, progress=False)
    rep = nsvd.evaluate(result)
    return {"problem": problem, "method": method, "seed": seed, "steps": steps,
            "seconds": time.perf_counter() - t0,
            "mean_rel_error": rep["mean_eigenvalue_relative_error"],
            "subspace_distance_all": rep["subspace_distance_all"],
            "eigenvalues": result.eigenvalues.tolist()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    parser.add_argument("--methods", default="neuralsvd-seq-paper,neuralsvd-seq,neuralef")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("command: python benchmarks/short_budget.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])))
    print(f"{'problem':14s} {'method':22s} {'seed':>4} {'mean rel':>9} {'sub all':>9} {'s':>6}")
    rows = []
    for problem in args.problems.split(","):
        for method in args.methods.split(","):
            for seed in args.seeds:
                r = run(problem, method, args.steps, seed)
                rows.append(r)
                print(f"{problem:14s} {method:22s} {seed:>4} {r['mean_rel_error']:>9.2e} "
                      f"{r['subspace_distance_all']:>9.2e} {r['seconds']:>6.0f}", flush=True)
            sel = [r for r in rows if r["problem"] == problem and r["method"] == method]
            if len(sel) > 1:
                mean = lambda k: sum(r[k] for r in sel) / len(sel)  # noqa: E731
                print(f"{problem:14s} {method:22s} {'mean':>4} {mean('mean_rel_error'):>9.2e} "
                      f"{mean('subspace_distance_all'):>9.2e}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"argv": argv or sys.argv[1:], "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

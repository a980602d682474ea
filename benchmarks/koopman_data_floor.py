"""The error the data alone puts into learned timescales: the exact (or reference) singular functions' own
estimates on a preset's simulated trajectories.

For ``ou-process`` (closed form) and ``langevin-double-well`` (the generator's finite-difference reference)
builds the preset's training operator exactly as ``neuralsvd run PROBLEM`` does, reads out the reversible
Rayleigh quotients ``⟨f, T f⟩ / ‖f‖²`` of the true functions over every lagged pair (what a network that had
learned them exactly would report), and prints the relative error of the implied timescales against the
true ones. A learned run cannot be expected to beat this floor by more than chance. ``--set`` overrides
preset settings (``operator.trajectories=...``).

    python benchmarks/koopman_data_floor.py --problems ou-process langevin-double-well
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time

import numpy as np
import torch

from neuralsvd.dynamics import implied_timescales
from neuralsvd.experiments import get_problem, make_operator
from neuralsvd.experiments.dynamics_presets import _double_well_reference


def floor(problem: str, overrides: list[str]) -> dict:
    config = get_problem(problem).default_config().with_overrides(overrides)
    num = config.modes + 1
    op = make_operator(config)
    if problem == "langevin-double-well":
        ref = _double_well_reference(json.dumps(config.operator, sort_keys=True), num)
    else:
        ref = op.reference
    true = ref.exact_eigenvalues(num).double()
    a = b = 0
    with torch.no_grad():
        for x in op.evaluation_batches(1, 65536, None, torch.float64):
            fx, tfx = op.apply(lambda v: ref.exact_eigenfunctions(v, num), x)
            a, b = a + (fx * tfx).sum(0), b + (fx * fx).sum(0)
    quotients = (a / b)[1:]
    lag = config.operator["lag"]
    rel = np.abs(implied_timescales(quotients, lag) / implied_timescales(true[1:], lag) - 1)
    return {"pairs": op.num_pairs, "timescale_relative_error": rel}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="+", default=["ou-process", "langevin-double-well"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    print("command: python benchmarks/koopman_data_floor.py " + shlex.join(sys.argv[1:] if argv is None else argv))
    torch.set_num_threads(1)
    for problem in args.problems:
        t0 = time.perf_counter()
        row = floor(problem, args.overrides)
        errors = ", ".join(f"{e:.2e}" for e in row["timescale_relative_error"])
        print(f"{problem}: {row['pairs']} lagged pairs; timescale relative error of the true functions on the data: "
              f"{errors} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

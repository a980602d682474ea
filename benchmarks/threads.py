#!/usr/bin/env python
"""Torch threads for the CLI: ``neuralsvd run hydrogen`` (its default configuration, a short run) at 1 and 2
torch threads, on a quiet machine and next to one busy neighbour process (a Python busy loop, what another
job on the same cores looks like).

Every configuration is a fresh ``python -m neuralsvd run hydrogen --steps S --threads N`` process; the
figure is the run's own ``steps_per_second`` (training only, from its metrics.json). The configurations are
interleaved for ``--rounds`` rounds, so that drifting load hits them alike; the table gives the median over
rounds and the ratio of 1 to 2 threads in the same round (median over rounds).

Run from the repository root:  ``python benchmarks/threads.py`` (~2 min on 2 idle cores; far longer on
busy ones: that is what it measures), ``--steps 1000 --rounds 3`` for steadier figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BUSY = "while True: pass"


def run_once(steps: int, threads: int, neighbour: bool, out: Path) -> float:
    """The steps/s of one CLI run (with a busy neighbour process alive during it if ``neighbour``)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    busy = subprocess.Popen([sys.executable, "-c", BUSY]) if neighbour else None
    try:
        subprocess.run([sys.executable, "-m", "neuralsvd", "run", "hydrogen", "--steps", str(steps), "--threads",
                        str(threads), "--no-progress", "--out", str(out)], env=env, check=True,
                       stdout=subprocess.DEVNULL)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    return float(json.loads((out / "metrics.json").read_text())["steps_per_second"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    configs = [(t, n) for n in (False, True) for t in (1, 2)]
    rates: dict[tuple[int, bool], list[float]] = {c: [] for c in configs}
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for i, (threads, neighbour) in enumerate(configs):
                rate = run_once(args.steps, threads, neighbour, Path(tmp) / f"r{r}-{i}")
                rates[(threads, neighbour)].append(rate)
                print(f"round {r}: threads {threads}, neighbour {'yes' if neighbour else 'no'}: {rate:.1f} steps/s",
                      flush=True)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"\nneuralsvd run hydrogen --steps {args.steps}: training steps/s, median of {args.rounds} round(s), "
          f"{cores} cores, 1-minute load average at the start {load0:.1f}, at the end {os.getloadavg()[0]:.1f}")
    print("| busy neighbour | 1 thread | 2 threads | 1 thread / 2 threads |")
    print("|---|---|---|---|")
    for neighbour in (False, True):
        one, two = rates[(1, neighbour)], rates[(2, neighbour)]
        ratio = statistics.median(a / b for a, b in zip(one, two))
        print(f"| {'yes' if neighbour else 'no'} | {statistics.median(one):.1f} | {statistics.median(two):.1f} | "
              f"{ratio:.2f}x |")
    print(f"\ncommand: {shlex.join(['python', *sys.argv])}")


if __name__ == "__main__":
    main()

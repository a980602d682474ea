"""Data-parallel scaling of the training step: samples per second with 1 and 2 (or more) processes of one
thread each on the `hydrogen` preset (16 modes by default), and the compiled step against eager.

* weak scaling: every process draws ``--batch`` points per step (global batch ``P × batch``); efficiency
  = samples/s with ``P`` processes / (``P`` × samples/s with one);
* strong scaling: the global batch ``--strong-batch`` (default ``2 × batch``) split over the processes;
  efficiency = (time per step with one process / time per step with ``P``) / ``P``;
* compiled: ``fit(..., compile=True)`` in one process against eager, steady state after the first check
  (compilation time reported separately).

Besides wall-clock rates it reports rank 0's CPU milliseconds per step (its process time: the step's
compute plus its share of the all-reduces, not time spent waiting), whose ratio to one process's at the
same per-rank batch is the weak-scaling efficiency a machine with a free core per process would show.

Rates are steady-state: timed from the first ``--check`` step to the last, so start-up, compilation and
the final read-out are excluded. Processes are spawned (gloo on the CPU, a file rendezvous), each with
one torch thread, so the figures depend on how many cores are free: on a shared machine run it when it
is quiet, and read the efficiencies with that in mind.

    python benchmarks/scaling.py --steps 300 --processes 1 2
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import neuralsvd as nsvd
from neuralsvd.problems import build_model, get_problem, make_loss, make_operator


def _train(rank: int, processes: int, rendezvous: str, out: str, spec: dict) -> None:
    """One rank: train the preset for ``spec["steps"]`` steps and (rank 0) write the check times."""
    torch.set_num_threads(1)
    if processes > 1:
        dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=processes)
    config = get_problem(spec["problem"]).default_config().with_overrides(
        [f"modes={spec['modes']}", *spec["overrides"]])
    operator = make_operator(config)
    torch.manual_seed(0)
    model = build_model(config, operator)
    times: list[tuple[int, float]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # short runs: unconverged modes are expected
        t0 = time.perf_counter()
        nsvd.fit(model, operator, make_loss(config.method, config.modes), steps=spec["steps"],
                 batch_size=spec["batch"] * processes // spec["split"], log_every=spec["check"], progress=False,
                 eval_batches=1, eval_batch_size=256, compile=spec["compile"], distributed=processes > 1,
                 callback=lambda step, _: times.append((step, time.perf_counter(), time.process_time())))
    if rank == 0:
        (first, t_first, cpu_first), (last, t_last, cpu_last) = times[0], times[-1]
        Path(out).write_text(json.dumps({"steps_per_second": (last - first) / (t_last - t_first),
                                         "cpu_ms_per_step": 1e3 * (cpu_last - cpu_first) / (last - first),
                                         "first_check_seconds": t_first - t0}))
    if processes > 1:
        dist.destroy_process_group()


def measure(processes: int, batch: int, *, split: int = 1, steps: int, check: int, modes: int,
            compile: bool = False, problem: str = "hydrogen", overrides: tuple[str, ...] = ()) -> dict:
    """Steady-state steps/s and samples/s of ``processes`` ranks, each drawing ``batch * processes /
    split`` / ``processes`` points (``split=1``: ``batch`` per rank, weak; ``split=processes``: a global
    ``batch``, strong)."""
    spec = {"problem": problem, "modes": modes, "overrides": list(overrides), "steps": steps, "check": check,
            "batch": batch, "split": split, "compile": compile}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rank0.json"
        mp.start_processes(_train, args=(processes, str(Path(tmp) / "rendezvous"), str(out), spec),
                           nprocs=processes, start_method="spawn")
        rec = json.loads(out.read_text())
    global_batch = batch * processes // split
    return {"processes": processes, "global_batch": global_batch, "rank_batch": global_batch // processes,
            "compile": compile, **rec, "samples_per_second": rec["steps_per_second"] * global_batch}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problem", default="hydrogen")
    parser.add_argument("--modes", type=int, default=16)
    parser.add_argument("--batch", type=int, default=128, help="points per process per step (weak scaling)")
    parser.add_argument("--strong-batch", type=int, default=None, help="global batch of the strong scaling "
                        "(default 2 x --batch)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--check", type=int, default=50, help="timing starts at this step (after compilation)")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled step")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # spawned ranks import this module
    common = {"steps": args.steps, "check": args.check, "modes": args.modes, "problem": args.problem,
              "overrides": tuple(args.overrides)}
    strong = args.strong_batch or 2 * args.batch
    rows = []
    for p in args.processes:
        rows.append({"kind": "weak", **measure(p, args.batch, **common)})
    for p in args.processes:
        rows.append({"kind": "strong", **measure(p, strong, split=p, **common)})
    if not args.no_compile:
        rows.append({"kind": "eager", **measure(1, args.batch, **common)})
        rows.append({"kind": "compiled", **measure(1, args.batch, compile=True, **common)})
    base = {k: next(r for r in rows if r["kind"] == k and r["processes"] == 1) for k in ("weak", "strong")}
    for r in rows:
        if r["kind"] == "weak":
            r["efficiency"] = r["samples_per_second"] / (r["processes"] * base["weak"]["samples_per_second"])
        elif r["kind"] == "strong":
            r["efficiency"] = r["steps_per_second"] / (r["processes"] * base["strong"]["steps_per_second"])
    if not args.no_compile:
        eager = next(r for r in rows if r["kind"] == "eager")
        for r in rows[-2:]:
            r["efficiency"] = r["steps_per_second"] / eager["steps_per_second"]  # speed-up over eager
    print(f"{args.problem}, {args.modes} modes, one thread per process, steps {args.check}..{args.steps} timed")
    print(f"{'scaling':>8} {'procs':>5} {'global batch':>12} {'per rank':>8} {'steps/s':>8} {'samples/s':>10} "
          f"{'efficiency':>10} {'CPU ms/step':>11} {'start (s)':>9}")
    for r in rows:
        print(f"{r['kind']:>8} {r['processes']:>5} {r['global_batch']:>12} {r['rank_batch']:>8} "
              f"{r['steps_per_second']:>8.2f} {r['samples_per_second']:>10.0f} {r['efficiency']:>10.2f} "
              f"{r['cpu_ms_per_step']:>11.1f} {r['first_check_seconds']:>9.1f}")
    print("efficiency: weak and strong against one process; eager/compiled: speed-up over eager")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "argv": argv or sys.argv[1:]}, indent=2) + "\n")
    print("command: python benchmarks/scaling.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``neuralsvd`` command: ``neuralsvd run PROBLEM [...]``, ``neuralsvd compare PROBLEM [...]``,
``neuralsvd list``, and for a finished run folder ``neuralsvd eval RUN_DIR --points X.npy --out Y.npy``
and ``neuralsvd export RUN_DIR``."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..problems import METHODS, PROBLEMS, ConfigError, ExperimentConfig, get_problem
from ..training.checkpoint import CheckpointError, FolderLockedError
from ..training.distributed import PeerLostError, launched_by_torchrun
from ..training.fit import DivergenceError
from ..training.interrupts import TrainingInterrupted, exit_code
from ..training.resources import ResourceError
from .artifacts import EXPORT_NAME, ArtifactError, export, load
from .compare import compare, comparison_table
from .run import run

DEFAULT_COMPARISON = "neuralsvd-seq,neuralsvd-joint,spin,neuralef"
#: exit codes: 2 bad request or output folder (configuration, arguments, unusable checkpoint, folder not
#: writable, disk full, folder in use by another run), 3 training diverged, 4 the machine cannot serve the
#: request (no such device, not enough memory), 5 a data-parallel peer rank is gone (crashed, killed, or silent
#: past the collective timeout), 128 + signal when stopped by SIGINT (130) or SIGTERM (143)
EXIT_ERROR, EXIT_DIVERGED, EXIT_RESOURCES, EXIT_PEER_LOST = 2, 3, 4, 5
#: torch threads of `run` and `compare` when neither --threads nor OMP_NUM_THREADS says: on cores that other
#: processes also use, two threads ran the hydrogen preset 14x slower than one (benchmarks/threads.py;
#: table in benchmarks/README.md)
DEFAULT_THREADS = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neuralsvd", description="Learn operator eigen/singular functions with NeuralSVD.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list problems and methods")
    r = sub.add_parser("run", help="train on a named problem and write metrics, plots and a checkpoint")
    r.add_argument("problem", help="problem name (see `neuralsvd list`)")
    r.add_argument("--method", default=None, help=f"one of: {', '.join(METHODS)}")
    _add_config_flags(r)
    r.add_argument("--out", default=None, help="output folder (default runs/<problem>-<timestamp>)")
    r.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    r.add_argument("--nproc", type=int, default=1, help="data-parallel processes on this machine (runs the "
                   "command under torchrun; --batch-size is the global batch)")
    c = sub.add_parser("compare", help="run several methods (and seeds) on one problem, tabulate the metrics")
    c.add_argument("problem", help="problem name (see `neuralsvd list`)")
    c.add_argument("--methods", default=DEFAULT_COMPARISON, help=f"comma-separated ({DEFAULT_COMPARISON})")
    c.add_argument("--seeds", type=int, default=1, help="number of seeds per method, from --seed (default 1)")
    c.add_argument("--jobs", type=int, default=1, help="runs at once, in worker processes (default 1)")
    _add_config_flags(c)
    c.add_argument("--out", required=True, help="output folder (<method>-seed<k>/, comparison.{json,md,png})")
    e = sub.add_parser("eval", help="a finished run's eigenfunctions at new points (.npy in, .npy out)")
    e.add_argument("run_dir", help="the folder of a finished `neuralsvd run`")
    e.add_argument("--points", required=True, help="X.npy: points (n, d), or indices (n,) for finite operators")
    e.add_argument("--out", required=True, help="Y.npy: the normalized eigenfunctions (n, L), float64")
    e.add_argument("--right", action="store_true", help="SVD problems: the right singular functions")
    x = sub.add_parser("export", help="compile a finished run's eigenfunctions with torch.export")
    x.add_argument("run_dir", help="the folder of a finished `neuralsvd run`")
    x.add_argument("--out", default=None, help=f"output file (default RUN_DIR/{EXPORT_NAME})")
    x.add_argument("--right", action="store_true", help="SVD problems: the right singular functions")
    return parser


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    """The flags shared by ``run`` and ``compare``, which override the problem's default configuration."""
    p.add_argument("--modes", type=int, default=None, help="number of modes L")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, help="cpu or cuda")
    p.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set train.lr=3e-4 --set model.hidden=(64,64)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--threads", type=int, default=None,
                   help=f"torch threads for this process (default: OMP_NUM_THREADS if set, else {DEFAULT_THREADS})")
    p.add_argument("--reference", choices=("auto", "grid", "none"), default=None,
                   help="problems without a closed form (schrodinger): compare with a grid solver's spectrum "
                        "(auto: for d ≤ 2)")


def _config(args: argparse.Namespace, method: str | None) -> ExperimentConfig:
    """The problem's default configuration with the command line's flags and ``--set`` overrides."""
    flags = {"method": method, "modes": args.modes, "seed": args.seed, "device": args.device,
             "train.steps": args.steps, "train.batch_size": args.batch_size,
             "train.checkpoint_every": args.checkpoint_every}
    overrides = [f"{k}={v!r}" for k, v in flags.items() if v is not None] + args.overrides
    default = get_problem(args.problem).default_config()
    if args.reference is not None:
        if "reference" not in default.operator:
            raise ConfigError(f"--reference: problem {args.problem!r} has no reference solver")
        overrides.append(f"operator.reference={args.reference!r}")
    return default.with_overrides(overrides)


def _list() -> None:
    width = max(map(len, [*PROBLEMS, *METHODS]))
    print("problems:")
    for p in PROBLEMS.values():
        print(f"  {p.name:<{width}} {p.description}")
    print("methods:")
    for name, (desc, _) in METHODS.items():
        print(f"  {name:<{width}} {desc}")


def _eval(args: argparse.Namespace) -> None:
    result = load(args.run_dir)
    points = torch.from_numpy(np.load(args.points, allow_pickle=False))
    op = result.operator
    if points.is_floating_point() and points.ndim == 1 and getattr(op, "dim", None) == 1:
        points = points.unsqueeze(1)  # (n,) on a line: (n, 1)
    values = result.right_functions(points) if args.right else result.eigenfunctions(points)
    np.save(args.out, values.double().cpu().numpy())
    what = "right singular functions" if args.right else "eigenfunctions"
    print(f"{tuple(values.shape)} {what} written to {args.out}")


def _export(args: argparse.Namespace) -> None:
    result = load(args.run_dir)
    gen = torch.Generator().manual_seed(0)
    dtype = torch.float64 if result.config.train.dtype == "float64" else torch.float32
    if result.is_svd:
        example = result.operator.sample_pair(8, gen, dtype)[1 if args.right else 0]
    else:
        example = result.operator.sample(8, gen, dtype)
    path = export(result, args.out or Path(args.run_dir) / EXPORT_NAME, example, right=args.right)
    print(f"torch.export program written to {path}; load it with torch.export.load(path).module()")


def _resume_hint(argv: Sequence[str], out: str) -> str:
    """The command that continues this run."""
    args = list(argv)
    if "--out" not in args and not any(a.startswith("--out=") for a in args):
        args += ["--out", out]
    if "--resume" not in args:
        args.append("--resume")
    return shlex.join(["neuralsvd", *args])


def torchrun_command(argv: Sequence[str], nproc: int) -> list[str]:
    """The ``torchrun`` command (one node) that runs ``neuralsvd argv`` without its ``--nproc`` in ``nproc``
    processes."""
    if nproc < 1:
        raise ConfigError(f"--nproc must be a positive number of processes, got {nproc}")
    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            rest.append(a)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            "-m", "neuralsvd", *rest]


def _exec_torchrun(argv: Sequence[str], nproc: int) -> None:
    """Replace this process by ``torchrun`` (signals and the exit status are then torchrun's)."""
    command = torchrun_command(argv, nproc)
    sys.stdout.flush()
    os.execv(command[0], command)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    finally:  # a data-parallel run joined torchrun's process group: leave it cleanly
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("run", "compare"):
        threads = args.threads if args.threads is not None else (
            None if os.environ.get("OMP_NUM_THREADS") else DEFAULT_THREADS)
        if threads is not None and threads < 1:
            print(f"neuralsvd: error: --threads must be a positive number of threads, got {threads}",
                  file=sys.stderr)
            return EXIT_ERROR
        if threads is not None:
            torch.set_num_threads(threads)
    if args.command == "list":
        _list()
        return 0
    out = None
    try:
        if args.command == "eval":
            _eval(args)
            return 0
        if args.command == "export":
            _export(args)
            return 0
        if args.command == "compare":
            config = _config(args, None)
            methods = [m.strip() for m in args.methods.split(",") if m.strip()]
            records = compare(config, methods, args.out, seeds=args.seeds, progress=not args.no_progress,
                              jobs=args.jobs)
            print(comparison_table(records))
            print(f"comparison written to {args.out}/ ({sum(r['status'] == 'ok' for r in records)} of "
                  f"{len(records)} runs ok)")
            return 0
        if args.nproc != 1 and not launched_by_torchrun():
            _exec_torchrun(argv, args.nproc)
        config = _config(args, args.method)
        if config.method not in METHODS:
            raise ConfigError(f"unknown method {config.method!r}; valid methods: {', '.join(METHODS)}")
        if args.resume and args.out is None:
            raise ConfigError("--resume needs --out DIR (the folder of the run to continue)")
        out = args.out or f"runs/{config.problem}-{time.strftime('%Y%m%d-%H%M%S')}"
        run(config, out, resume=args.resume, progress=not args.no_progress)
    except TrainingInterrupted as err:  # a signal during training: the checkpoint is saved (or intact)
        sys.stdout.flush()
        hint = f"; continue with: {_resume_hint(argv, out)}" if err.checkpoint_path and out else ""
        print(f"neuralsvd: {err}{hint}", file=sys.stderr, flush=True)
        return err.exit_code
    except KeyboardInterrupt:  # Ctrl-C outside training (setting up, evaluating, plotting)
        print("neuralsvd: interrupted", file=sys.stderr, flush=True)
        return exit_code(2)
    except ResourceError as err:
        print(f"neuralsvd: error: {err}", file=sys.stderr)
        return EXIT_RESOURCES
    except PeerLostError as err:  # the folder lock is released on the way out; the last checkpoint is intact
        print(f"neuralsvd: error: {err}; resume with --resume", file=sys.stderr)
        return EXIT_PEER_LOST
    except (ArtifactError, ConfigError, CheckpointError, FolderLockedError, ValueError, TypeError, OSError,
            NotImplementedError) as err:
        print(f"neuralsvd: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except DivergenceError as err:
        print(f"neuralsvd: training diverged: {err}", file=sys.stderr)
        return EXIT_DIVERGED
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

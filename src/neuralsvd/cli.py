"""The ``neuralsvd`` command: ``neuralsvd run PROBLEM [...]`` and ``neuralsvd list``."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

from .experiments import METHODS, PROBLEMS, ConfigError, get_problem, run
from .checkpoint import CheckpointError
from .fit import DivergenceError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neuralsvd", description="Learn operator eigen/singular functions with NeuralSVD.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list problems and methods")
    r = sub.add_parser("run", help="train on a named problem and write metrics, plots and a checkpoint")
    r.add_argument("problem", help="problem name (see `neuralsvd list`)")
    r.add_argument("--method", default=None, help=f"one of: {', '.join(METHODS)}")
    r.add_argument("--modes", type=int, default=None, help="number of modes L")
    r.add_argument("--steps", type=int, default=None)
    r.add_argument("--batch-size", type=int, default=None)
    r.add_argument("--seed", type=int, default=None)
    r.add_argument("--device", default=None, help="cpu or cuda")
    r.add_argument("--out", default=None, help="output folder (default runs/<problem>-<timestamp>)")
    r.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    r.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set train.lr=3e-4 --set model.hidden=(64,64)")
    r.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _list() -> None:
    print("problems:")
    for p in PROBLEMS.values():
        print(f"  {p.name:<16} {p.description}")
    print("methods:")
    for name, (desc, _) in METHODS.items():
        print(f"  {name:<16} {desc}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "list":
        _list()
        return 0
    try:
        config = get_problem(args.problem).default_config()
        flags = {"method": args.method, "modes": args.modes, "seed": args.seed, "device": args.device,
                 "train.steps": args.steps, "train.batch_size": args.batch_size,
                 "train.checkpoint_every": args.checkpoint_every}
        overrides = [f"{k}={v!r}" for k, v in flags.items() if v is not None] + args.overrides
        config = config.with_overrides(overrides)
        if config.method not in METHODS:
            raise ConfigError(f"unknown method {config.method!r}; valid methods: {', '.join(METHODS)}")
        if args.resume and args.out is None:
            raise ConfigError("--resume needs --out DIR (the folder of the run to continue)")
        out = args.out or f"runs/{config.problem}-{time.strftime('%Y%m%d-%H%M%S')}"
        run(config, out, resume=args.resume, progress=not args.no_progress)
    except (ConfigError, CheckpointError, ValueError, TypeError, FileNotFoundError) as err:
        print(f"neuralsvd: error: {err}", file=sys.stderr)
        return 2
    except DivergenceError as err:
        print(f"neuralsvd: training diverged: {err}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

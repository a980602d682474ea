"""The ``neuralsvd`` command: ``neuralsvd run PROBLEM [...]``, ``neuralsvd compare PROBLEM [...]`` and
``neuralsvd list``."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

from .experiments import METHODS, PROBLEMS, ConfigError, ExperimentConfig, get_problem, run
from .experiments.compare import compare, comparison_table
from .checkpoint import CheckpointError
from .fit import DivergenceError

DEFAULT_COMPARISON = "neuralsvd-seq,neuralsvd-joint,spin,neuralef"


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
    c = sub.add_parser("compare", help="run several methods (and seeds) on one problem, tabulate the metrics")
    c.add_argument("problem", help="problem name (see `neuralsvd list`)")
    c.add_argument("--methods", default=DEFAULT_COMPARISON, help=f"comma-separated ({DEFAULT_COMPARISON})")
    c.add_argument("--seeds", type=int, default=1, help="number of seeds per method, from --seed (default 1)")
    _add_config_flags(c)
    c.add_argument("--out", required=True, help="output folder (<method>-seed<k>/, comparison.{json,md,png})")
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


def _config(args: argparse.Namespace, method: str | None) -> ExperimentConfig:
    """The problem's default configuration with the command line's flags and ``--set`` overrides."""
    flags = {"method": method, "modes": args.modes, "seed": args.seed, "device": args.device,
             "train.steps": args.steps, "train.batch_size": args.batch_size,
             "train.checkpoint_every": args.checkpoint_every}
    overrides = [f"{k}={v!r}" for k, v in flags.items() if v is not None] + args.overrides
    return get_problem(args.problem).default_config().with_overrides(overrides)


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
        if args.command == "compare":
            config = _config(args, None)
            methods = [m.strip() for m in args.methods.split(",") if m.strip()]
            records = compare(config, methods, args.out, seeds=args.seeds, progress=not args.no_progress)
            print(comparison_table(records))
            print(f"comparison written to {args.out}/ ({sum(r['status'] == 'ok' for r in records)} of "
                  f"{len(records)} runs ok)")
            return 0
        config = _config(args, args.method)
        if config.method not in METHODS:
            raise ConfigError(f"unknown method {config.method!r}; valid methods: {', '.join(METHODS)}")
        if args.resume and args.out is None:
            raise ConfigError("--resume needs --out DIR (the folder of the run to continue)")
        out = args.out or f"runs/{config.problem}-{time.strftime('%Y%m%d-%H%M%S')}"
        run(config, out, resume=args.resume, progress=not args.no_progress)
    except (ConfigError, CheckpointError, ValueError, TypeError, FileNotFoundError, NotImplementedError) as err:
        print(f"neuralsvd: error: {err}", file=sys.stderr)
        return 2
    except DivergenceError as err:
        print(f"neuralsvd: training diverged: {err}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

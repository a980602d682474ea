"""Hydrogen accuracy per unit of compute: an ablation of levers at equal steps, with error-vs-step curves.

Each variant is a preset plus ``--set`` overrides (the same keys as ``neuralsvd run``); every (variant,
seed) trains for ``--steps`` (the cosine schedule spans the run) and is evaluated every ``--eval-every``
steps on the polar quadrature (energies: Rayleigh quotients integrated on it, as the final read-out;
subspace distances: against the closed-form states). Prints one table row per run and the mean per
variant, and saves the curves (mean relative energy error and subspace distance (all) vs step).

    python benchmarks/hydrogen_accuracy.py --variants paper,ratio-gauss,ratio-gauss-radial,psi-gauss,best-scale100 --steps 6000 \\
        --plot docs/figures/hydrogen-ablation.png --json runs/hydrogen-ablation.json
    python benchmarks/hydrogen_accuracy.py --variants best-scale100 --modes 16 --steps 50000 --seeds 0 --eval-every 5000
    python benchmarks/hydrogen_accuracy.py --variants best-scale100 --steps 10000 --seeds 0 1 --eval-every 1000 \\
        --methods neuralsvd-seq,neuralsvd-seq-paper,neuralsvd-joint,neuralsvd-joint-paper,neuralef,neuralef-unbiased

``--list`` prints the variants. Extra ``--set KEY=VALUE`` apply to every variant (after its own);
``--methods`` runs each listed method (``neuralsvd list``) on every variant.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass

import torch

import neuralsvd as nsvd
from neuralsvd.problems import get_problem
from neuralsvd.problems.experiment import build
from neuralsvd.training.fit import FitResult, estimate_eigenvalues


@dataclass(frozen=True)
class Variant:
    preset: str
    overrides: tuple[str, ...]
    description: str


_GAUSS = ("operator.sampler_std=(1.0, 4.0, 10.0)", "operator.sampler_exp_scale=None")
_RATIO = ("operator.model_output=ratio", "model.envelope=False")
#: the variants measured before ``fit`` capped the modes' initial size: as measured (the paper's scale,
#: no cap, docs/convergence-study.md §9; the preset's sampler and batch before they followed the modes,
#: docs/hydrogen-study.md §10)
_AS_MEASURED = ("operator.scale=100.0", "train.init_ratio=None", "operator.sampler_exp_scale=(0.5, 2.0, 8.0)",
                "train.batch_size=128")

#: the levers, each a named configuration relative to a preset (compared at the same steps and batch)
VARIANTS: dict[str, Variant] = {
    "paper": Variant("hydrogen-paper", ("model.fourier_features=0",),
                     "the authors' recipe: RMSProp 1e-4, EMA 0.995, N(0, 16²), model = ψ/√p"),
    "ratio-gauss": Variant("hydrogen", (*_AS_MEASURED, *_RATIO, "model.radial=False", *_GAUSS),
                           "Adam 1e-3, Gaussian mixture σ = 1, 4, 10, model = ψ/√p (the first hydrogen preset)"),
    "ratio-gauss-radial": Variant("hydrogen", (*_AS_MEASURED, *_RATIO, *_GAUSS),
                                  "same + |x| as an input"),
    "psi-gauss": Variant("hydrogen", (*_AS_MEASURED, *_GAUSS),
                         "model = ψ, |x| input, spread envelopes; Gaussian mixture σ = 1, 4, 10"),
    "psi-exp-noradial": Variant("hydrogen", (*_AS_MEASURED, "model.radial=False"),
                                "model = ψ, spread envelopes, exponential mixture; no |x| input"),
    "psi-exp-env3": Variant("hydrogen", (*_AS_MEASURED, "model.envelope_scale=3.0"),
                            "model = ψ, |x| input, exponential mixture; all envelopes start at s = 3"),
    "best": Variant("hydrogen", (), "the `hydrogen` preset: T = 100 (0 - H) with the initial-size cap, model = ψ, "
                                    "|x| input, spread envelopes s_l = 1.2 (1 + 2 √l), radial-exponential mixture "
                                    "and batch chosen from the modes"),
    "best-scale100": Variant("hydrogen", _AS_MEASURED, "the same without the cap (the preset before the scale study, "
                                                "docs/convergence-study.md §8)"),
}


def _shell_errors(rel: torch.Tensor, blocks: list[list[int]]) -> list[float]:
    return [float(rel[b].mean()) for b in blocks]


class Curve:
    """Callback for :func:`neuralsvd.fit`: quadrature eigenvalues and subspace distance every ``every`` steps."""

    def __init__(self, op, every: int, dtype: torch.dtype):
        self.op, self.every, self.dtype = op, every, dtype
        self.rows: list[dict] = []

    def __call__(self, step: int, model) -> None:
        if step % self.every:
            return
        gen = torch.Generator().manual_seed(0)  # unused by a quadrature read-out; keeps training RNG untouched
        est = estimate_eigenvalues(model, self.op, 1, 1024, gen, self.dtype)
        result = FitResult(model=model, operator=self.op, eigenvalues=self.op.eigenvalues_from_learned(est.eigenvalues),
                           learned_eigenvalues=est.eigenvalues, order=est.order, norms=est.norms, history={},
                           steps=step, wall_seconds=0.0, steps_per_second=float("nan"))
        self.rows.append({"step": step, **_summary(nsvd.evaluate(result))})


def _summary(rep: dict) -> dict:
    rel = torch.tensor(rep["eigenvalue_relative_error"])
    return {
        "mean_rel_error": rep["mean_eigenvalue_relative_error"],
        "shell_rel_error": _shell_errors(rel, rep["blocks"]),
        "ground_state_rel_error": float(rel[0]),
        "subspace_distance_avg": rep["subspace_distance_avg"],
        "subspace_distance_all": rep["subspace_distance_all"],
    }


def run_once(config, eval_every: int) -> dict:
    """One run as ``neuralsvd run`` makes it (every ``train.*`` option of the configuration), plus the curve
    (the checks come every ``train.log_every`` steps; an ``eval_every`` below it lowers it)."""
    if eval_every < config.train.log_every:
        config = config.with_overrides([f"train.log_every={eval_every}"])
    exp = build(config)
    if eval_every % exp.options["log_every"]:
        raise SystemExit(f"--eval-every must be a multiple of train.log_every = {exp.options['log_every']}")
    curve = Curve(exp.operator, eval_every, exp.options["dtype"])
    t0 = time.perf_counter()
    result = exp.fit(progress=False, callback=curve)
    wall = time.perf_counter() - t0
    final = _summary(nsvd.evaluate(result))
    return {"steps": result.steps, "seed": config.seed, "wall_seconds": wall,
            "train_seconds": result.wall_seconds, "status": result.status,
            "norm_ratio": result.extras["norm_ratio"],
            "rescues": result.extras.get("rescues", []), **final, "curve": curve.rows}


def plot(runs: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    names = list(dict.fromkeys(r["variant"] for r in runs))
    for i, name in enumerate(names):
        for j, r in enumerate(x for x in runs if x["variant"] == name):
            steps = [c["step"] for c in r["curve"]]
            for ax, key in zip(axes, ("mean_rel_error", "subspace_distance_all")):
                ax.plot(steps, [c[key] for c in r["curve"]], color=colors[i % len(colors)], marker="o", ms=3,
                        alpha=0.85, label=name if j == 0 else None)
    for ax, title in zip(axes, ("mean relative energy error", "subspace distance (all modes)")):
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="ratio-gauss,best", help="comma-separated names (see --list)")
    parser.add_argument("--methods", default=None,
                        help="comma-separated methods (neuralsvd list) to run on every variant; default: the preset's")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--modes", type=int, default=None, help="default: the preset's (9 for hydrogen)")
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--plot", default=None, help="save the error-vs-step curves to this PNG")
    parser.add_argument("--json", default=None, help="also write all rows and curves to this JSON file")
    parser.add_argument("--list", action="store_true", help="list the variants and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, v in VARIANTS.items():
            print(f"{name:20s} {v.description}\n{'':20s} preset {v.preset} " + " ".join(v.overrides))
        return 0
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; valid: {', '.join(VARIANTS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    print("command: python benchmarks/hydrogen_accuracy.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.steps} steps per run")
    header = (f"{'variant':28s} {'seed':>4} {'train s':>7} {'mean rel':>9} {'E0 rel':>9} {'per-shell rel':>32} "
              f"{'sub avg':>9} {'sub all':>9}")
    print(header)
    runs = []
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else [None]
    for name, method in ((n, m) for n in names for m in methods):
        v = VARIANTS[name]
        common = [f"train.steps={args.steps}", *([f"modes={args.modes}"] if args.modes else []),
                  *([f"method={method}"] if method else [])]
        base = get_problem(v.preset).default_config().with_overrides([*v.overrides, *args.overrides, *common])
        label = f"{name}/{method}" if method else name
        rows = []
        for seed in args.seeds:
            row = {"variant": label, **run_once(base.with_overrides([f"seed={seed}"]), args.eval_every)}
            rows.append(row)
            shells = " ".join(f"{e:.1e}" for e in row["shell_rel_error"])
            print(f"{label:28s} {seed:>4} {row['train_seconds']:>7.0f} {row['mean_rel_error']:>9.2e} "
                  f"{row['ground_state_rel_error']:>9.2e} {shells:>32} {row['subspace_distance_avg']:>9.2e} "
                  f"{row['subspace_distance_all']:>9.2e}", flush=True)
        if len(rows) > 1:
            mean = {k: sum(r[k] for r in rows) / len(rows) for k in ("mean_rel_error", "ground_state_rel_error",
                                                                    "subspace_distance_avg", "subspace_distance_all")}
            shells = " ".join(f"{sum(s) / len(s):.1e}" for s in zip(*(r["shell_rel_error"] for r in rows)))
            print(f"{label:28s} {'mean':>4} {'':>7} {mean['mean_rel_error']:>9.2e} {mean['ground_state_rel_error']:>9.2e} "
                  f"{shells:>32} {mean['subspace_distance_avg']:>9.2e} {mean['subspace_distance_all']:>9.2e}", flush=True)
        runs += rows
    if args.plot:
        plot(runs, args.plot)
        print(f"curves: {args.plot}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"argv": argv or sys.argv[1:], "runs": runs}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Per-mode gradient signal-to-noise of NestedLoRA and NeuralEF on hydrogen: where the noise comes from.

One run of the ``hydrogen`` preset (``--method``, default the paper's plain NestedLoRA-seq) is stopped at
``--at`` steps; at each stop, with the parameters frozen, ``--batches`` fresh minibatches give one
parameter gradient per batch for each *estimator* (``--estimators``), split into its terms. For mode
``l`` (its own network's parameters) and each term we report

    signal = ‖mean over batches of the gradient‖,   noise = sqrt(mean ‖gradient − mean‖²),

so ``noise / signal`` is the relative spread of one minibatch's update (Adam divides by it). Terms of
NestedLoRA-seq's update for mode ``l`` (functional gradient, half-batch moments Λ of the other half):
``operator`` ``-2 Tf_l / n``, ``self`` ``f_l Λ_ll``, ``deflation`` ``Σ_{m<l} f_m Λ_ml`` and, within it,
``deflation-0`` (the ground state's term alone); the ``-cv`` estimator uses control-variate moments
(:func:`neuralsvd.losses.nested_lora.control_variate_moments`, coefficients fitted on separate batches).
NeuralEF's: ``operator`` ``Tψ_l`` and ``deflation`` ``Σ_{i<l} (R_il/R_ii) Tψ_i`` (through its batch
normalization).

    python benchmarks/gradient_noise.py --at 1000 3000 10000 --batches 100 \\
        --json docs/figures/gradient-noise.json --plot docs/figures/gradient-noise.png
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys

import torch
from torch import Tensor, nn

import neuralsvd as nsvd
from neuralsvd.losses.nested_lora import ControlVariateStats, control_variate_moments, cv_products
from neuralsvd.problems import get_problem, make_loss, make_model, make_operator

ESTIMATORS = ("nestedlora-seq", "nestedlora-seq-cv", "neuralef")


def mode_axes(model: nn.Module, num_modes: int) -> dict[str, int]:
    """The mode axis of each parameter of a disjoint-network model (``ParallelMLP``)."""
    axes = {}
    for name, p in model.named_parameters():
        axis = 1 if name == "first_weight" else 0
        if p.shape[axis] != num_modes:
            raise ValueError(f"parameter {name} {tuple(p.shape)} has no mode axis of size {num_modes}")
        axes[name] = axis
    return axes


def per_mode_gradient(model: nn.Module, output: Tensor, cotangent: Tensor, axes: dict[str, int]) -> Tensor:
    """``(L, P_l)``: the gradient of ``sum(output * cotangent)`` restricted to each mode's own parameters."""
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(output, list(params.values()), cotangent, retain_graph=True, allow_unused=True)
    L = cotangent.shape[1]
    blocks = []
    for (name, p), g in zip(params.items(), grads):
        g = torch.zeros_like(p) if g is None else g
        blocks.append(g.movedim(axes[name], 0).reshape(L, -1))
    return torch.cat(blocks, 1)


def nestedlora_terms(f: Tensor, tf: Tensor, beta: Tensor | None) -> dict[str, Tensor]:
    """Functional gradient terms ``(n, L)`` of sequential NestedLoRA (plain or control-variate moments)."""
    n = f.shape[0]
    h = n // 2
    halves = (slice(0, h), slice(h, n))
    moments = [control_variate_moments(f[s], tf[s], beta) if beta is not None else f[s].T @ f[s] / f[s].shape[0]
               for s in halves]
    terms = {"operator": -2.0 / n * tf}
    self_t, defl, defl0 = torch.zeros_like(f), torch.zeros_like(f), torch.zeros_like(f)
    for s, other in zip(halves, reversed(moments)):
        fs, k = f[s], f[s].shape[0]
        self_t[s] = fs * other.diagonal() / k
        strict = other.triu(1)  # [m, l] for m < l
        defl[s] = fs @ strict / k
        defl0[s, 1:] = fs[:, :1] * strict[0:1, 1:] / k
    terms.update({"self": self_t, "deflation": defl, "deflation-0": defl0})
    return terms


def neuralef_terms(f: Tensor, tf: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """NeuralEF's normalized outputs ``ψ`` (differentiable) and its functional gradient terms w.r.t. ``ψ``."""
    n = f.shape[0]
    square = f.square().mean(0)
    psi = f * square.rsqrt()
    tpsi = tf * square.detach().rsqrt()
    p = psi.detach()
    r = p.T @ tpsi / n
    ratio = r.triu(1) / (r.diagonal() + 1e-5).unsqueeze(1)
    return psi, {"operator": -2.0 / n * tpsi, "deflation": 2.0 / n * (tpsi @ ratio)}


def measure(model: nn.Module, op, num_modes: int, batches: int, batch_size: int, seed: int,
            estimators: list[str]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """Signal and noise per estimator, term and mode at the model's current parameters."""
    model = copy.deepcopy(model).train()
    axes = mode_axes(model, num_modes)
    gen = torch.Generator().manual_seed(seed)
    stats = ControlVariateStats(num_modes, 0.0)  # coefficients from separate batches (not the measured ones)
    acc = torch.zeros(num_modes, num_modes, dtype=torch.float64)
    cc = torch.zeros_like(acc)
    for _ in range(max(batches // 2, 8)):
        f, tf = op.apply(model, op.sample(batch_size, gen))
        stats.update(*cv_products(f.detach(), tf))
        acc += stats.ac.double()
        cc += stats.cc.double()
    beta = torch.where(cc > 0, -acc / cc.clamp_min(1e-300), torch.zeros_like(cc)).to(torch.get_default_dtype())
    samples: dict[str, dict[str, list[Tensor]]] = {e: {} for e in estimators}
    for _ in range(batches):
        x = op.sample(batch_size, gen)
        f, tf = op.apply(model, x)
        for est in estimators:
            if est == "neuralef":
                out, terms = neuralef_terms(f, tf)
            else:
                out, terms = f, nestedlora_terms(f.detach(), tf, beta if est.endswith("-cv") else None)
            terms["total"] = sum(v for k, v in terms.items() if k in ("operator", "self", "deflation"))
            for name, cot in terms.items():
                samples[est].setdefault(name, []).append(per_mode_gradient(model, out, cot, axes).double())
    report = {}
    for est, terms in samples.items():
        report[est] = {}
        for name, gs in terms.items():
            g = torch.stack(gs)  # (K, L, P)
            mean = g.mean(0)
            report[est][name] = {"signal": mean.norm(dim=1).tolist(),
                                 "noise": (g - mean).square().sum(2).mean(0).sqrt().tolist()}
    return report


class Stops:
    """``fit`` callback that measures at the requested steps."""

    def __init__(self, at, op, num_modes, args):
        self.at, self.op, self.num_modes, self.args = set(at), op, num_modes, args
        self.rows: list[dict] = []

    def __call__(self, step: int, model) -> None:
        if step not in self.at:
            return
        raw = getattr(model, "model", model)  # NeuralEF's read-out wraps the network
        rep = measure(raw, self.op, self.num_modes, self.args.batches, self.args.batch_size, 12345 + step,
                      self.args.estimators)
        self.rows.append({"step": step, "report": rep})
        print_report(step, rep)


def print_report(step: int, rep: dict) -> None:
    for est, terms in rep.items():
        total = terms["total"]
        ratio = [n / s for n, s in zip(total["noise"], total["signal"])]
        print(f"step {step:>6} {est:18s} noise/signal of the update per mode: "
              + " ".join(f"{r:7.2f}" for r in ratio), flush=True)
        for name, t in terms.items():
            if name == "total":
                continue
            print(f"{'':12s}{name:>18s} noise / |total signal|:       "
                  + " ".join(f"{n / s:7.2f}" for n, s in zip(t["noise"], total["signal"])), flush=True)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(4.2 * len(rows), 3.8), constrained_layout=True, squeeze=False)
    styles = {"nestedlora-seq": ("C0", "o"), "nestedlora-seq-cv": ("C2", "s"), "neuralef": ("C3", "^")}
    for ax, row in zip(axes[0], rows):
        for est, terms in row["report"].items():
            color, marker = styles.get(est, ("k", "x"))
            total = terms["total"]
            modes = range(len(total["signal"]))
            ax.plot(modes, [n / s for n, s in zip(total["noise"], total["signal"])], color=color, marker=marker,
                    label=f"{est}: update")
            if "deflation" in terms and est != "neuralef":
                ax.plot(modes, [n / s for n, s in zip(terms["deflation"]["noise"], total["signal"])], color=color,
                        ls="--", alpha=0.7, label=f"{est}: deflation term")
        ax.set_yscale("log")
        ax.set_xlabel("mode l")
        ax.set_title(f"step {row['step']}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("noise / signal of one minibatch update")
    axes[0][0].legend(fontsize=7)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problem", default="hydrogen")
    parser.add_argument("--method", default="neuralsvd-seq-paper", help="the method that trains the trajectory")
    parser.add_argument("--estimators", default=",".join(ESTIMATORS))
    parser.add_argument("--at", type=int, nargs="+", default=[1000, 3000, 10000])
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    parser.add_argument("--plot", default=None)
    args = parser.parse_args(argv)
    args.estimators = [e for e in args.estimators.split(",") if e]
    unknown = set(args.estimators) - set(ESTIMATORS)
    if unknown:
        parser.error(f"unknown estimators {sorted(unknown)}; valid: {', '.join(ESTIMATORS)}")
    torch.set_num_threads(args.threads)
    print("command: python benchmarks/gradient_noise.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])))
    steps = max(args.at)
    config = get_problem(args.problem).default_config().with_overrides(
        [*args.overrides, f"train.steps={steps}", f"seed={args.seed}", f"method={args.method}"])
    op = make_operator(config)
    torch.manual_seed(config.seed)
    model = make_model(config, op.dim)
    stops = Stops(args.at, op, config.modes, args)
    t = config.train
    every = min(args.at) if all(a % min(args.at) == 0 for a in args.at) else 100
    nsvd.fit(model, op, make_loss(config.method, config.modes), steps=steps, batch_size=t.batch_size,
             optimizer=t.optimizer, lr=t.lr, schedule=t.schedule, ema_decay=t.ema_decay, seed=config.seed,
             progress=False, log_every=every, callback=stops, eval_batches=1)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"argv": argv or sys.argv[1:], "method": args.method, "rows": stops.rows}, fh, indent=1)
    if args.plot:
        plot(stops.rows, args.plot)
        print(f"figure: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Training-step cost against the dimension d: exact Laplacian vs the stochastic (Hutchinson) one.

Problem: the ``oscillator`` preset in ``d`` dimensions (``operator.dim=d``; the preset's shift and sampler
for that d), ``L`` modes (default ``d + 1``: the ground state and the first shell), batch 128, ``ParallelMLP`` (128, 128, 128) softplus with the
preset's envelope, Adam 1e-3, NestedLoRA (sequential nesting). Per d, one model and one optimizer are
shared by the variants, timed in interleaved blocks of full training steps (sample, ``op.apply``, loss,
backward, optimizer step: the body of :func:`neuralsvd.fit`'s loop); the table reports the median
process CPU time per step (robust on a shared machine) and its ratio to the exact Laplacian at that d.

Variants: ``exact`` (the forward jet: ``d + 1`` derivative channels through every layer) and
``hutchinson-k`` (``k`` Rademacher probes per point through forward-over-forward jvp; unbiased ``Tf``).

Noise of the stochastic ``Tf``: on one fixed batch, ``R`` independent draws of ``Tf`` against the exact
``Tf``: ``noise = sqrt(mean_draws ‖Tf_s - Tf‖²) / ‖Tf‖`` (per-draw relative error; ``‖·‖`` over the batch
and the modes) and the bias check ``‖mean_draws Tf_s - Tf‖ / ‖Tf‖`` (should be about ``noise / sqrt(R)``).
Measured on two models: the preset's network at initialization, and the exact eigenfunctions written in
the ratio form ``f = ψ / sqrt(p)`` (a stand-in for a converged model: there the exact ``Tf = λ f``).

Run from the repository root: ``python benchmarks/dimension.py`` (d = 2 … 32, k = 1, 4; a few minutes on
one core), ``--quick`` for a smoke run. Writes ``--json`` and ``--plot`` (default docs/figures/dimension.*).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from neuralsvd.problems import get_problem, make_loss, make_model, make_operator

ROOT = Path(__file__).resolve().parents[1]


class ExactRatio(nn.Module):
    """The exact eigenfunctions as a ratio-form model: ``f = ψ / sqrt(p)``, ``(n, L)``."""

    def __init__(self, op, num_modes: int):
        super().__init__()
        self.op, self.num_modes = op, num_modes

    def forward(self, x: Tensor) -> Tensor:
        return self.op.exact_eigenfunctions(x, self.num_modes).to(x) * torch.exp(
            -0.5 * self.op.sampler.log_prob(x)).unsqueeze(1)


def setup(dim: int, modes: int, method: str, probes: int, extra: list[str]):
    """``(config, operator)`` for the oscillator preset in ``dim`` dimensions with a Laplacian method."""
    cfg = get_problem("oscillator").default_config().with_overrides(
        [f"operator.dim={dim}", f"modes={modes}", f"operator.laplacian={method}", f"operator.probes={probes}",
         *extra])
    return cfg, make_operator(cfg)


def time_steps(dim: int, modes: int, probes: list[int], batch: int, rounds: int, steps: int, extra: list[str]
               ) -> dict[str, float]:
    """Median CPU seconds per training step of each variant, interleaved blocks, one shared model."""
    cfg, exact = setup(dim, modes, "exact", 1, extra)
    ops = {"exact": exact} | {f"hutchinson-{k}": setup(dim, modes, "hutchinson", k, extra)[1] for k in probes}
    torch.manual_seed(0)
    model = make_model(cfg, dim)
    loss = make_loss(cfg.method, modes)
    loss.prepare(exact)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    gen = torch.Generator().manual_seed(0)

    def step(op) -> None:
        x = op.sample(batch, gen, torch.float32)
        out = loss(*op.apply(model, x))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    for op in ops.values():  # warm-up
        step(op)
    cpu: dict[str, list[float]] = {name: [] for name in ops}
    for _ in range(rounds):
        for name, op in ops.items():
            start = time.process_time()
            for _ in range(steps):
                step(op)
            cpu[name].append((time.process_time() - start) / steps)
    return {name: statistics.median(v) for name, v in cpu.items()}


def tf_noise(dim: int, modes: int, k: int, batch: int, draws: int, extra: list[str]) -> dict[str, dict]:
    """Per-draw relative noise and bias of the stochastic Tf (float64), on the network at initialization
    and on the exact eigenfunctions."""
    cfg, exact = setup(dim, modes, "exact", 1, extra)
    _, stochastic = setup(dim, modes, "hutchinson", k, extra)
    exact, stochastic = exact.double(), stochastic.double()
    torch.manual_seed(0)
    models = {"init": make_model(cfg, dim).double(), "exact-states": ExactRatio(exact, modes)}
    x = exact.sample(batch, torch.Generator().manual_seed(1), torch.float64)
    out = {}
    with torch.no_grad():
        for name, model in models.items():
            tf = exact.apply(model, x)[1]  # (n, L)
            samples = torch.stack([stochastic.apply(model, x)[1] for _ in range(draws)])  # (R, n, L)
            scale = tf.norm()
            out[name] = {"noise": float((samples - tf).pow(2).sum((1, 2)).mean().sqrt() / scale),
                         "bias": float((samples.mean(0) - tf).norm() / scale)}
    return out


def plot(rows: list[dict], probes: list[int], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    dims = [r["dim"] for r in rows]
    ax1.plot(dims, [1e3 * r["cpu_s"]["exact"] for r in rows], "o-k", label="exact (forward jet)")
    for i, k in enumerate(probes):
        ax1.plot(dims, [1e3 * r["cpu_s"][f"hutchinson-{k}"] for r in rows], "s--", color=f"C{i}",
                 label=f"Hutchinson, k = {k}")
        for j, model in enumerate(("init", "exact-states")):
            ax2.plot(dims, [r["noise"][str(k)][model]["noise"] for r in rows], "s-" if j else "o--", color=f"C{i}",
                     label=f"k = {k}, {'exact states' if j else 'network at init'}")
    ax1.set(xscale="log", yscale="log", xlabel="dimension d", ylabel="CPU ms per training step",
            title="step cost (one core, median of interleaved blocks)")
    ax2.set(xscale="log", yscale="log", xlabel="dimension d", ylabel="‖Tf_s − Tf‖ / ‖Tf‖ per draw",
            title="noise of the stochastic Tf (one draw)")
    for ax in (ax1, ax2):
        ax.minorticks_off()
        ax.set_xticks(dims, [str(d) for d in dims])
        ax.legend(fontsize=7)
        ax.title.set_fontsize(9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    parser.add_argument("--probes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--modes", type=int, default=None, help="default: d + 1 at each d")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps-per-round", type=int, default=10)
    parser.add_argument("--draws", type=int, default=64, help="draws of the stochastic Tf for its noise")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="configuration override for every variant, e.g. model.hidden=(64, 64)")
    parser.add_argument("--quick", action="store_true", help="d = 2, 8; k = 1; 1 round of 2 steps; 4 draws")
    parser.add_argument("--json", type=Path, default=ROOT / "docs/figures/dimension.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs/figures/dimension.png")
    args = parser.parse_args(argv)
    if args.quick:
        args.dims, args.probes, args.rounds, args.steps_per_round, args.draws = [2, 8], [1], 1, 2, 4
    torch.set_num_threads(args.threads)
    command = "python benchmarks/dimension.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    rows = []
    header = f"{'d':>3}  {'exact ms':>9}" + "".join(f"  {f'k={k} ms':>8}  {'ratio':>6}  {'noise init':>10}  "
                                                 f"{'noise exact':>11}" for k in args.probes)
    print(header)
    for dim in args.dims:
        modes = args.modes or dim + 1
        cpu = time_steps(dim, modes, args.probes, args.batch, args.rounds, args.steps_per_round, args.set)
        noise = {str(k): tf_noise(dim, modes, k, args.batch, args.draws, args.set) for k in args.probes}
        rows.append({"dim": dim, "modes": modes, "cpu_s": cpu, "noise": noise})
        line = f"{dim:>3}  {1e3 * cpu['exact']:>9.2f}"
        for k in args.probes:
            n = noise[str(k)]
            line += (f"  {1e3 * cpu[f'hutchinson-{k}']:>8.2f}  {cpu[f'hutchinson-{k}'] / cpu['exact']:>6.2f}  "
                     f"{n['init']['noise']:>10.2e}  {n['exact-states']['noise']:>11.2e}")
        print(line, flush=True)
    print("ratio: CPU time per step of Hutchinson / exact at the same d; noise: ‖Tf_s − Tf‖/‖Tf‖ of one draw")
    record = {"command": command, "torch": torch.__version__, "machine": platform.machine(),
              "threads": args.threads, "modes": args.modes, "batch": args.batch, "draws": args.draws,
              "overrides": args.set, "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=2) + "\n")
    plot(rows, args.probes, args.plot)
    print(f"wrote {args.json} and {args.plot}")
    print(f"command: {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

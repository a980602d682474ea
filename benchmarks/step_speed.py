#!/usr/bin/env python
"""Training-step speed and Laplacian accuracy: neuralsvd's hydrogen step vs the authors' formulation.

Configuration (the paper's 2D hydrogen setup): L = 16 modes, batch 128, ``ParallelMLP`` with widths
(128, 128, 128) and softplus, (a) on raw inputs and (b) on 1024 shared Fourier features at scale 0.1;
samples from N(0, 16² I); T = 100·(-H); RMSProp(lr 1e-4, α 0.999, eps 1e-10); NestedLoRA with uniform
joint weights in every variant (a fair cost comparison; sequential nesting differs only in the masks of
the library's custom backward, at identical cost). All variants share one model instance (one set of weights) and one optimizer and are
timed in interleaved blocks, so that machine noise hits them alike.

Variants:

* ``ours``      -- what :func:`neuralsvd.fit` does per step, with library code only:
  ``x = op.sample``; ``fx, tfx = op.apply(model, x)`` with ``Hydrogen2D()`` (exact forward-jet
  Laplacian under ``no_grad``, Tf detached); ``loss(fx, tfx)`` (custom backward); zero_grad, backward, step.
* ``ours-fd``   -- the same with ``Hydrogen2D(laplacian="fd")`` (5-point FD, ε = 0.01, still detached):
  separates the cost of the Laplacian method from the cost of differentiating through Tf.
* ``reference`` -- the authors' formulation, written here: 5-point central differences (ε = 0.01,
  float32) whose 2d + 1 = 5 evaluations (one batched forward over 5n points) all stay in the autograd
  graph, the importance-trick formula Δ(√p f)/√p = Δf + 2∇u·∇f + (|∇u|² + Δu) f, and the plain-autograd
  NestedLoRA objective ``-2 Σ v_l mean(f_l Tf_l) + Σ M ∘ Λa ∘ Λb`` differentiated through Tf. Sampling
  and ∇u, Δu of u = ½ log p come from the library's sampler (no network involved).

Timing leaves out what fit adds around the step (LR scheduler, loss/eigenvalue history, EMA): tens of µs.
On a shared machine prefer the CPU-time columns (process CPU time is not charged while descheduled).

Accuracy: relative error ‖Tf - Tf_exact‖ / ‖Tf_exact‖ (and of the Laplacian Δf alone) at one fixed
batch, against the exact jet Laplacian on a float64 copy of the model; at initialization and after the
training steps taken by the timing loop.

Run from the repository root:  ``python benchmarks/step_speed.py`` (full, ~3 min on 2 cores),
``python benchmarks/step_speed.py --quick`` (~30 s smoke run). ``--profile`` adds a torch.profiler
table of the ``ours`` step.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import shlex
import statistics
import sys
import time

import torch

from neuralsvd.losses import NestedLoRA
from neuralsvd.models import ParallelMLP
from neuralsvd.numerics.autodiff import laplacian
from neuralsvd.operators import Hydrogen2D

L, BATCH, HIDDEN, EPS = 16, 128, (128, 128, 128), 1e-2
CONFIGS = {"no FF": dict(fourier_features=0), "FF 1024 @0.1": dict(fourier_features=1024, fourier_scale=0.1)}


def make_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(model.parameters(), lr=1e-4, alpha=0.999, eps=1e-10)  # the authors' settings


# --- our step: library code only (the body of neuralsvd.fit's loop, without scheduler/EMA/history) ------
def library_step(model, op, loss, opt, gen):
    x = op.sample(BATCH, gen, torch.float32)
    out = loss(*op.apply(model, x))
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    opt.step()
    return out.loss.detach()


# --- reference step: the authors' formulation ---------------------------------------------------------
class AuthorsReference:
    """FD Laplacian kept in the graph + plain-autograd NestedLoRA (joint, uniform weights)."""

    def __init__(self, op: Hydrogen2D, eps: float = EPS):
        self.op, self.eps = op, eps
        w = torch.full((L,), 1.0 / L)
        self.v = w.flip(0).cumsum(0).flip(0)  # v_l = Σ_{i≥l} w_i
        i = torch.arange(L)
        self.m = self.v[torch.maximum(i[:, None], i[None, :])]  # M_lm = v_max(l,m)

    def derivatives(self, model, x):
        """``f``, ``∇f`` (d, n, L), ``Δf`` by central differences, all in the graph (one batched forward)."""
        n, d = x.shape
        h = self.eps * torch.eye(d, dtype=x.dtype)
        xs = torch.cat([x[None], x + h[:, None], x - h[:, None]])  # (2d+1, n, d)
        ys = model(xs.reshape(-1, d)).reshape(2 * d + 1, n, -1)
        f, fp, fm = ys[0], ys[1 : d + 1], ys[d + 1 :]
        return f, (fp - fm) / (2 * self.eps), ((fp + fm).sum(0) - 2 * d * f) / self.eps**2

    def apply(self, model, x):
        """``(f(x), (Tf)(x))``, both in the autograd graph."""
        f, grad, lap = self.derivatives(model, x)
        _, du, lap_u = self.op.sampler.half_log_density_derivatives(x)  # u = ½ log p: (n, d), (n,)
        lap_psi = lap + 2 * (du.T[..., None] * grad).sum(0) + ((du * du).sum(1) + lap_u)[:, None] * f
        tf = self.op.scale * ((self.op.shift - self.op.potential(x))[:, None] * f + self.op.kinetic * lap_psi)
        return f, tf

    def loss(self, f, tf):
        a, b = f[: f.shape[0] // 2], f[f.shape[0] // 2 :]
        lam_a, lam_b = a.T @ a / a.shape[0], b.T @ b / b.shape[0]
        return -2 * (self.v * (f * tf).mean(0)).sum() + (self.m * lam_a * lam_b).sum()

    def step(self, model, opt, gen):
        x = self.op.sample(BATCH, gen, torch.float32)
        out = self.loss(*self.apply(model, x))
        opt.zero_grad(set_to_none=True)
        out.backward()
        opt.step()
        return out.detach()


# --- timing ------------------------------------------------------------------------------------------
def time_variants(variants: dict, rounds: int, steps: int, warmup: int) -> dict[str, tuple[list, list]]:
    """name -> (wall-clock steps/s per block, process CPU seconds per step per block)."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    rates: dict[str, tuple[list, list]] = {k: ([], []) for k in variants}
    names = list(variants)
    for r in range(rounds):
        for k in names[r % len(names):] + names[: r % len(names)]:  # rotate the order each round
            fn = variants[k]
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(steps):
                value = fn()
            float(value)  # sync (no-op on CPU)
            rates[k][0].append(steps / (time.perf_counter() - t0))
            rates[k][1].append((time.process_time() - c0) / steps)
    return rates


# --- accuracy ----------------------------------------------------------------------------------------
def rel_errors(t: torch.Tensor, exact: torch.Tensor) -> tuple[float, float]:
    t, exact = t.double(), exact.double()
    overall = ((t - exact).norm() / exact.norm()).item()
    per_mode = ((t - exact).norm(dim=0) / exact.norm(dim=0)).max().item()
    return overall, per_mode


def accuracy(model, ref: AuthorsReference, x: torch.Tensor) -> dict[str, tuple[float, float, float]]:
    """name -> (rel err Tf overall, rel err Tf max per mode, rel err Δf overall)."""
    exact_op, fd_op = Hydrogen2D(), Hydrogen2D(laplacian="fd", fd_eps=EPS)
    m64, x64 = copy.deepcopy(model).double(), x.double()
    with torch.no_grad():
        tf_exact = exact_op.apply(m64, x64)[1]
        lap_exact = m64.jet(x64)[-1]
        rows = {
            "library exact jet, float32": (exact_op.apply(model, x)[1], model.jet(x)[-1]),
            "reference FD eps=0.01, float32": (ref.apply(model, x)[1], ref.derivatives(model, x)[2]),
            "library FD eps=0.01, float32": (fd_op.apply(model, x)[1], _fd_laplacian(model, x)),
            "library FD eps=0.01, float64": (fd_op.apply(m64, x64)[1], _fd_laplacian(m64, x64)),
        }
    return {k: (*rel_errors(tf, tf_exact), rel_errors(lap, lap_exact)[0]) for k, (tf, lap) in rows.items()}


def _fd_laplacian(model, x):
    return laplacian(model, x, "fd", EPS)[2]


def gradient_agreement(model, ref: AuthorsReference, x: torch.Tensor) -> tuple[float, float, float]:
    """At one batch: |loss_ref - loss_ours_fd| / |loss|, and cosine / relative norm difference of the
    parameter gradients (reference autograd through Tf vs the library's custom gradient, same FD Tf)."""
    fd_op, loss = Hydrogen2D(laplacian="fd", fd_eps=EPS), NestedLoRA(L, nesting="joint")
    params = list(model.parameters())
    lib = loss(*fd_op.apply(model, x)).loss
    g_lib = torch.cat([g.flatten() for g in torch.autograd.grad(lib, params)])
    rl = ref.loss(*ref.apply(model, x))
    g_ref = torch.cat([g.flatten() for g in torch.autograd.grad(rl, params)])
    g_lib, g_ref = g_lib.double(), g_ref.double()
    cos = (g_lib @ g_ref / (g_lib.norm() * g_ref.norm())).item()
    return abs((rl - lib) / lib).item(), cos, ((g_ref - g_lib).norm() / g_lib.norm()).item()


# --- profile -----------------------------------------------------------------------------------------
def profile_ours(model, op, loss, opt, gen, steps: int = 10) -> str:
    """Phase breakdown of the 'ours' step (library calls wrapped in record_function) + top operators.
    ``op.apply`` = one forward f(x) with graph + the jet under no_grad; the jet is also timed alone."""
    from torch.profiler import ProfilerActivity, profile, record_function

    def step():
        with record_function("## sample"):
            x = op.sample(BATCH, gen, torch.float32)
        with record_function("## op.apply (f(x) fwd + jet)"):
            fx, tfx = op.apply(model, x)
        with record_function("## loss forward"):
            out = loss(fx, tfx)
        with record_function("## zero_grad"):
            opt.zero_grad(set_to_none=True)
        with record_function("## backward"):
            out.loss.backward()
        with record_function("## optimizer step"):
            opt.step()
        with torch.no_grad(), record_function("## (extra, not in step) jet alone"):
            model.jet(x)
        with record_function("## (extra, not in step) f(x) fwd alone"):
            model(x)

    for _ in range(3):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    avg = prof.key_averages()
    phases = sorted((e for e in avg if e.key.startswith("## ")), key=lambda e: e.key)
    lines = [f"  {e.key[3:]:<40} {e.cpu_time_total / 1e3 / steps:8.2f} ms/step" for e in phases]
    top = avg.table(sort_by="self_cpu_time_total", row_limit=15)
    return "\n".join(lines) + "\n" + top


# --- main --------------------------------------------------------------------------------------------
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (default 5)")
    p.add_argument("--steps-per-round", type=int, default=20,
                   help="steps per variant per round (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="warm-up steps per variant (default 3)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--acc-points", type=int, default=2048, help="points in the fixed accuracy batch")
    p.add_argument("--configs", default="all", choices=["all", "noff", "ff"])
    p.add_argument("--quick", action="store_true", help="~30 s smoke run (2 rounds x 3 steps, 256 points)")
    p.add_argument("--no-flush-denormal", dest="flush_denormal", action="store_false",
                   help="keep denormal floats (fit() flushes them while training; by default so does this "
                        "benchmark, for all variants alike)")
    p.add_argument("--profile", action="store_true", help="also print a torch.profiler table of 'ours'")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.steps_per_round, args.warmup, args.acc_points = 2, 3, 1, 256
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.flush_denormal and not torch.set_flush_denormal(True):
        print("warning: flush-denormal mode is not supported on this CPU")

    t_start = time.perf_counter()
    print("$ python " + " ".join(shlex.quote(a) for a in sys.argv))
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch.get_num_threads() = {torch.get_num_threads()}, "
          f"flush_denormal = {args.flush_denormal}, load average {_load()}")
    print(f"float32, batch {BATCH}, L = {L}, ParallelMLP{HIDDEN} softplus, RMSProp(1e-4, 0.999, 1e-10), "
          "NestedLoRA joint (uniform weights)")
    configs = {"all": list(CONFIGS), "noff": ["no FF"], "ff": ["FF 1024 @0.1"]}[args.configs]

    speed_rows, acc_rows, grad_rows, profiles = [], [], [], []
    for ci, name in enumerate(configs):
        torch.manual_seed(args.seed + ci)
        model = ParallelMLP(2, L, HIDDEN, "softplus", **CONFIGS[name])
        init_model = copy.deepcopy(model)
        opt = make_optimizer(model)
        op, op_fd = Hydrogen2D(), Hydrogen2D(laplacian="fd", fd_eps=EPS)
        loss = NestedLoRA(L, nesting="joint")
        ref = AuthorsReference(op)
        gen = torch.Generator().manual_seed(args.seed)
        x_acc = op.sample(args.acc_points, torch.Generator().manual_seed(12345), torch.float32)

        acc_rows += [(name, "init", k, v) for k, v in accuracy(init_model, ref, x_acc).items()]
        grad_rows.append((name, "init", gradient_agreement(init_model, ref, x_acc[:BATCH])))

        steps = args.steps_per_round
        variants = {
            "ours (exact jet, detached Tf)": lambda: library_step(model, op, loss, opt, gen),
            "ours-fd (library FD, detached Tf)": lambda: library_step(model, op_fd, loss, opt, gen),
            "reference (FD in graph, autograd loss)": lambda: ref.step(model, opt, gen),
        }
        rates = time_variants(variants, args.rounds, steps, args.warmup)
        trained = len(variants) * (args.warmup + args.rounds * steps)
        ours, ours_cpu = (statistics.median(v) for v in rates["ours (exact jet, detached Tf)"])
        for k, (r, cpu) in rates.items():
            med, med_cpu = statistics.median(r), statistics.median(cpu)
            speed_rows.append((name, k, med, 1000 / med, max(r), 1000 * med_cpu, ours / med, med_cpu / ours_cpu))

        label = f"after {trained} steps"
        acc_rows += [(name, label, k, v) for k, v in accuracy(model, ref, x_acc).items()]
        grad_rows.append((name, label, gradient_agreement(model, ref, x_acc[:BATCH])))
        if args.profile:
            clone = copy.deepcopy(model)
            profiles.append((name, profile_ours(clone, op, loss, make_optimizer(clone), gen)))

    rounds_txt = f"{args.rounds} rounds x {args.steps_per_round} steps, interleaved"
    print(f"\nSpeed (median over {rounds_txt}; warm-up {args.warmup} steps each)")
    print(f"{'config':<13} {'variant':<40} {'steps/s':>8} {'ms/step':>8} {'best':>6} {'CPU ms':>7} "
          f"{'ours/this':>9} {'(CPU)':>6}")
    for name, k, med, ms, best, cpu, ratio, ratio_cpu in speed_rows:
        print(f"{name:<13} {k:<40} {med:8.2f} {ms:8.1f} {best:6.2f} {cpu:7.1f} {ratio:9.2f} {ratio_cpu:6.2f}")
    print("steps/s, ms/step: median over blocks (wall clock); best: fastest block, steps/s; CPU ms: median "
          "process CPU time per step\n(all threads); ours/this: median steps/s of 'ours' over that of the row "
          "(> 1: ours is faster); (CPU): the same from CPU time")

    print(f"\nAccuracy of Tf = 100(Δ(√p f)/√p + f/|x|) at a fixed batch of {args.acc_points} points "
          "vs exact jet in float64 (relative L2 error)")
    print(f"{'config':<13} {'weights':<16} {'method':<32} {'Tf overall':>10} {'Tf max/mode':>11} {'Δf overall':>10}")
    for name, when, k, (o, mx, lp) in acc_rows:
        print(f"{name:<13} {when:<16} {k:<32} {o:10.2e} {mx:11.2e} {lp:10.2e}")

    print("\nReference vs library objective at one batch of 128 (both with float32 FD Tf): "
          "|Δloss|/|loss|, gradient cosine, ‖g_ref - g_lib‖/‖g_lib‖")
    for name, when, (dl, cos, rel) in grad_rows:
        print(f"{name:<13} {when:<16} {dl:9.1e} {cos:9.4f} {rel:9.3f}")

    for name, table in profiles:
        print(f"\ntorch.profiler, 'ours' step, {name} (10 steps):\n{table}")
    print(f"\ntotal wall time {time.perf_counter() - t_start:.0f} s, load average at the end {_load()}")


def _load() -> str:
    try:
        return "/".join(f"{v:.1f}" for v in os.getloadavg()) + " (1/5/15 min)"
    except OSError:
        return "n/a"


if __name__ == "__main__":
    main()

"""Pieces of the data-parallel tests: spawning ranks on gloo, the losses' steps on a rank's share of a
global batch, and a 2-rank fit that crashes and resumes.

Arrangement of the global batch (see :mod:`neuralsvd.distributed`): with ``N`` points and ``P`` ranks,
rank ``r`` holds ``m = N / (2P)`` points of the first half and ``m`` of the second,
``x_r = [x[r m : (r+1) m], x[N/2 + r m : N/2 + (r+1) m]]``; the global batch is ``x`` itself.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import neuralsvd as nsvd
from neuralsvd.distributed import SINGLE, DataParallel
from neuralsvd.models import ParallelMLP

L, N = 3, 16
#: every loss variant the data-parallel step must reproduce (name: (loss factory, SVD?))
LOSSES: dict[str, tuple[Callable[[], nsvd.losses.SpectralLoss], bool]] = {
    "nestedlora-seq-cv": (lambda: nsvd.NestedLoRA(L, "sequential", control_variate=True), False),
    "nestedlora-joint-cv": (lambda: nsvd.NestedLoRA(L, "joint", control_variate=True), False),
    "nestedlora-seq-plain": (lambda: nsvd.NestedLoRA(L, "sequential", control_variate=False), False),
    "nestedlora-sanger": (lambda: nsvd.NestedLoRA(L, "sequential", deflation="sanger"), False),
    "nestedlora-seq-svd": (lambda: nsvd.NestedLoRA(L, "sequential"), True),
    "nestedlora-joint-svd": (lambda: nsvd.NestedLoRA(L, "joint"), True),
    "neuralef": (lambda: nsvd.NeuralEF(L), False),
    "neuralef-unbiased": (lambda: nsvd.NeuralEF(L, unbiased=True), False),
    "spin": (lambda: nsvd.SpIN(L, decay=0.5), False),
}


def spawn(fn: Callable, nprocs: int, tmp: Path, *args) -> None:
    """Run ``fn(rank, world_size, init_file, *args)`` in ``nprocs`` spawned processes (gloo, file rendezvous)."""
    mp.start_processes(_entry, args=(fn, nprocs, str(tmp / "rendezvous"), *args), nprocs=nprocs,
                       start_method="spawn")


def _entry(rank: int, fn: Callable, world_size: int, init_file: str, *args) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def share(x: torch.Tensor, world: DataParallel) -> torch.Tensor:
    """Rank ``world.rank``'s points of the global batch ``x`` (the module docstring's arrangement)."""
    half, m = x.shape[0] // 2, x.shape[0] // (2 * world.world_size)
    r = world.rank
    return torch.cat([x[r * m:(r + 1) * m], x[half + r * m:half + (r + 1) * m]])


def loss_steps(name: str, world: DataParallel, steps: int = 2) -> dict:
    """``steps`` SGD steps of loss ``name`` (float64) on this rank's share of fixed global batches; the
    parameters, the loss's state and the last gradients and estimates."""
    factory, svd = LOSSES[name]
    torch.manual_seed(0)
    models = [ParallelMLP(2, L, hidden=(8,)).double() for _ in range(2 if svd else 1)]
    loss = factory().double()
    loss.use_data_parallel(world)
    loss.attach(tuple(models) if svd else models[0])
    params = [p for m in models for p in m.parameters()]
    opt = torch.optim.SGD(params, lr=0.05)
    mix = torch.tensor([[1.0, 0.3, 0.0], [0.3, 0.5, 0.2], [0.0, 0.2, 0.25]], dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        xy = share(torch.randn(N, 4, generator=gen, dtype=torch.float64), world)
        x, y = xy[:, :2], xy[:, 2:]
        fx = models[0](x)
        # a Tf that is a fixed pointwise function of x and f(x) (detached, as the operators give it)
        tfx = (fx.detach() @ mix + 0.1 * x.sum(1, keepdim=True) * fx.detach())
        if svd:
            gy = models[1](y)
            out = loss.svd(fx, gy, gy.detach() @ mix + y.cos().sum(1, keepdim=True), tfx)
        else:
            out = loss(fx, tfx)
        opt.zero_grad()
        out.loss.backward()
        value, eigenvalues = world.average_gradients(params, out.loss.detach(), out.eigenvalues)
        grads = [p.grad.clone() for p in params]
        opt.step()
    return {"params": [p.detach().clone() for p in params], "grads": grads, "state": loss.state_dict(),
            "loss": value, "eigenvalues": eigenvalues, "gram": out.gram}


def fit_steps(world: DataParallel, steps: int = 4) -> dict:
    """``fit`` (Adam, float64, NestedLoRA with the control variate) on the oscillator for ``steps`` steps, every
    batch this rank's share of fixed global batches of ``N`` points; the trained parameters and history."""
    from _runs import small_model

    op = nsvd.operators.HarmonicOscillator(2)
    gen = torch.Generator().manual_seed(2)
    batches = [2.0 * torch.randn(N, 2, generator=gen, dtype=torch.float64) for _ in range(steps + 1)]
    calls = iter(batches)
    op.sample = lambda n, generator, dtype: share(next(calls), world).to(dtype)
    model = small_model().double()
    model.output_gain.mul_(50.0)  # above the initial-size cap: fit shrinks both modes (rank-averaged statistics)
    result = nsvd.fit(model, op, nsvd.NestedLoRA(2), steps=steps, batch_size=N, dtype=torch.float64,
                      progress=False, eval_batches=1, distributed=world.active)
    return {"params": [p.detach().clone() for p in result.model.parameters()], "loss": result.history["loss"],
            "gain": model.output_gain.flatten().clone()}


def trajectory_fit_steps(world: DataParallel, steps: int = 3, pairs: int = 8) -> dict:
    """``fit`` on a reversible :class:`~neuralsvd.operators.TrajectoryOperator` (OU pairs, pinned constant,
    float64), every batch this rank's share of fixed global batches of ``pairs`` lagged pairs (``2 pairs``
    interleaved rows: with ``pairs / P`` even, each rank's halves hold whole pairs)."""
    from neuralsvd.dynamics import OrnsteinUhlenbeck
    from neuralsvd.operators import TrajectoryOperator

    op = TrajectoryOperator(OrnsteinUhlenbeck([1.0, 0.5], 0.5).simulate(200, 2, seed=5), 1)
    gen = torch.Generator().manual_seed(6)
    batches = [op.sample(pairs, gen, torch.float64) for _ in range(steps + 1)]
    calls = iter(batches)
    op.sample = lambda n, generator, dtype: share(next(calls), world).to(dtype)
    torch.manual_seed(0)
    model = op.pinned_model(ParallelMLP(2, 2, hidden=(8,))).double()
    with warnings.catch_warnings():  # 3 steps: the modes are far from converged, as expected
        warnings.simplefilter("ignore", RuntimeWarning)
        result = nsvd.fit(model, op, nsvd.NestedLoRA(3), steps=steps, batch_size=pairs, dtype=torch.float64,
                          progress=False, eval_batches=1, distributed=world.active)
    return {"params": [p.detach().clone() for p in result.model.parameters()], "loss": result.history["loss"]}


def losses_worker(rank: int, world_size: int, out: str) -> None:
    world = DataParallel(world_size, rank, rank)
    results = {name: loss_steps(name, world) for name in LOSSES}
    torch.save({**results, "fit": fit_steps(world), "trajectory": trajectory_fit_steps(world)},
               os.path.join(out, f"rank{rank}.pt"))


def single_losses() -> dict:
    return {**{name: loss_steps(name, SINGLE) for name in LOSSES}, "fit": fit_steps(SINGLE),
            "trajectory": trajectory_fit_steps(SINGLE)}

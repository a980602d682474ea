"""Shared pieces of the interruption and resume tests: a small run, a hook on sampling, identical runs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from neuralsvd.models import ParallelMLP, Tabular
from neuralsvd.operators import DenseOperator

#: a short run with checkpoints every 20 steps and an EMA (so every piece of state must be restored); no warm
#: start, whose extra batches would shift the sampling hooks' counts (resume after a warm start: its own test)
FIT = {"steps": 60, "batch_size": 32, "lr": 3e-3, "ema_decay": 0.9, "checkpoint_every": 20, "log_every": 10,
       "progress": False, "eval_batches": 2, "warm_start": None}


def small_model() -> ParallelMLP:
    torch.manual_seed(0)
    return ParallelMLP(2, 2, hidden=(16, 16))


def on_sample(op, action: Callable[[int], None]):
    """Call ``action(k)`` before ``op.sample``'s ``k``-th call with the run's own generator (the validation
    batch is call 1, step ``k`` is call ``k + 1``; draws with other generators, such as the checks of the
    rescue rule, are not counted); ``action`` may raise or send signals."""
    original, count = op.sample, {"n": 0, "generator": None}

    def sample(n, generator=None, *args, **kwargs):
        if count["generator"] is None:
            count["generator"] = generator  # the first draw is the run's validation batch
        if generator is count["generator"]:
            count["n"] += 1
            action(count["n"])
        return original(n, generator, *args, **kwargs)

    op.sample = sample
    return op


def assert_identical_runs(whole, resumed) -> None:
    """Bitwise the same parameters, eigenvalues and loss history."""
    for p, q in zip(whole.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p.detach(), q.detach())
    assert torch.equal(whole.eigenvalues, resumed.eigenvalues)
    assert torch.equal(whole.history["loss"], resumed.history["loss"])


def dense_with_top(top: tuple[float, ...], low: tuple[float, float], n: int = 40, seed: int = 0) -> np.ndarray:
    """A random symmetric ``(n, n)`` matrix with the eigenvalues ``top`` and ``n - len(top)`` others uniform in
    ``low``."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = np.concatenate([top, rng.uniform(*low, n - len(top))])
    return q @ np.diag(lam) @ q.T


def tabular_at_optimum(a: np.ndarray, modes: int) -> tuple[DenseOperator, Tabular, np.ndarray]:
    """The float64 operator of ``a``, a ``Tabular`` at NestedLoRA's optimum ``f_l = √λ_l φ_l`` for its top
    ``modes`` eigenpairs, and those eigenvalues (descending)."""
    lam, vec = np.linalg.eigh(a)
    lam, vec = lam[::-1][:modes].copy(), vec[:, ::-1][:, :modes].copy()
    model = Tabular(a.shape[0], modes).double()
    with torch.no_grad():  # the operator's inner product is the mean over indices: φ scaled by √N
        model.table.copy_(torch.tensor(vec * np.sqrt(a.shape[0]) * np.sqrt(lam)))
    return DenseOperator(torch.tensor(a)), model, lam

"""Data-parallel training on ``torch.distributed``: one process per rank (launched by ``torchrun``), each
drawing its own share of the batch; the losses all-reduce their sufficient statistics and the training
step all-reduces the parameter gradients, so an update equals the one-process update on the global batch.

**The global batch.** With ``P`` ranks, rank ``r`` draws ``n = B / P`` points ``x_r`` from its own random
stream. The global batch is the concatenation of the ranks' batches, except that losses which split a
batch into halves (NestedLoRA, NeuralEF ``unbiased=True``) see as the global first half the
concatenation of the ranks' first halves, and as the second half that of their second halves::

    global = [x_0[:n/2], x_1[:n/2], ..., x_{P-1}[:n/2], x_0[n/2:], ..., x_{P-1}[n/2:]]

(every half-batch moment is then the mean of the ranks' half moments). Batch means of per-point
quantities are means over ranks of the ranks' means (equal shares). A loss computes its per-point
gradient with its rank's ``n``, i.e. ``P`` times its share of the global gradient, so the global gradient
is the mean over ranks: :meth:`DataParallel.average_gradients`.

In one process (no process group, or ``distributed=False``) :data:`SINGLE` does nothing: the same code
runs unchanged.

**Ranks end with their job.** ``torchrun`` starts each rank in a session of its own, so a ``kill -9`` on
the launcher's process group (a scheduler's or the OOM killer's) does not reach them. A rank therefore
watches its launcher (:func:`watch_launcher`) and ends at once when it is gone (its folder lock and
memory go with it; the last checkpoint is intact, since checkpoints are written atomically), and every
collective has a bounded timeout (:data:`COLLECTIVE_TIMEOUT`, ``NEURALSVD_COLLECTIVE_TIMEOUT`` seconds), so a
rank whose peer is gone ends with an error naming it instead of waiting forever.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["COLLECTIVE_TIMEOUT", "SINGLE", "DataParallel", "PeerLostError", "data_parallel", "init_from_env", "launched_by_torchrun",
           "rank_seed", "step_seed", "watch_launcher"]

#: the longest a rank waits in one collective for its peers (seconds); the environment variable
#: ``NEURALSVD_COLLECTIVE_TIMEOUT`` overrides it (a first step that compiles or a slow checkpoint disk may
#: need more)
COLLECTIVE_TIMEOUT = 300.0


def launched_by_torchrun() -> bool:
    """Whether this process is a worker started by ``torchrun`` (its environment names a world)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def init_from_env(device: str | torch.device = "cpu") -> bool:
    """Join the process group ``torchrun`` describes in the environment (gloo on CPU, NCCL on CUDA; for
    CUDA this process's GPU is ``cuda:LOCAL_RANK``). Returns whether a group is (now) initialized; does
    nothing outside ``torchrun`` or when a group exists already."""
    if dist.is_available() and dist.is_initialized():
        return True
    if not (dist.is_available() and launched_by_torchrun()):
        return False
    watch_launcher()
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    timeout = float(os.environ.get("NEURALSVD_COLLECTIVE_TIMEOUT", COLLECTIVE_TIMEOUT))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout))
    return True


class PeerLostError(RuntimeError):
    """A collective failed: a peer rank crashed, was killed, or did not answer within the timeout."""


@contextlib.contextmanager
def _collective(world: DataParallel, what: str) -> Iterator[None]:
    """Turn a failed collective (gloo/NCCL raise a bare ``RuntimeError``) into :class:`PeerLostError`."""
    try:
        yield
    except RuntimeError as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise PeerLostError(f"rank {world.rank} of {world.world_size}: a peer rank is gone or did not answer "
                            f"within the collective timeout ({what}): {first}") from err


_watching: list[int] = []


def watch_launcher(poll: float = 0.2) -> None:
    """End this process (``SIGKILL``, after a line on stderr) within ``poll`` seconds of its parent's
    death, from a daemon thread that polls ``os.getppid()`` (an orphan is re-parented). For ``torchrun``
    ranks: the launcher forwards SIGINT/SIGTERM itself, but a launcher killed with ``kill -9`` cannot, and
    its ranks, in sessions of their own, would train on, holding the run folder. Idempotent."""
    if _watching or not hasattr(os, "getppid"):
        return
    parent = os.getppid()
    _watching.append(parent)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll)
        rank = os.environ.get("RANK", "?")
        print(f"neuralsvd: rank {rank}: its launcher (pid {parent}) is gone; ending this rank (the last "
              "checkpoint is intact)", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="neuralsvd-launcher-watch", daemon=True).start()


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s random streams: ``seed`` itself for rank 0 (a one-process run is
    unchanged), else a 63-bit seed hashed from ``(seed, rank)`` (independent streams)."""
    if rank == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed) % 2**63, int(rank)]).generate_state(1, np.uint64)[0] >> 1)


def step_seed(seed: int, step: int, index: int, stream: int) -> int:
    """The seed of a training rule's own generator at ``step`` (the revival's and the rescue's draws):
    ``index`` (a rank or a mode) and ``stream`` (0 or 1) tell the rule's uses apart, so a rule that fires
    draws the same numbers in a resumed run, and the run's own stream is untouched."""
    return ((int(seed) * 1_000_003 + int(step)) * 4099 + int(index)) * 2 + int(stream)


@dataclass(frozen=True)
class DataParallel:
    """The data-parallel world of this process: ``world_size`` ranks, this one ``rank`` (``local_rank``
    on its node). Collectives run on torch's default process group; with ``world_size == 1`` every
    method returns its input unchanged and nothing is communicated."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0, the one that writes checkpoints, metrics and figures."""
        return self.rank == 0

    def device(self, device: str | torch.device) -> torch.device:
        """``device`` for this rank: a CUDA device without an index becomes ``cuda:LOCAL_RANK``."""
        dev = torch.device(device)
        if self.active and dev.type == "cuda" and dev.index is None:
            return torch.device("cuda", self.local_rank)
        return dev

    def mean(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        """The means over ranks of ``tensors`` (detached statistics of any shapes, one dtype and device),
        in one all-reduce of their concatenation. No host synchronization."""
        if not self.active:
            return tensors
        flat = torch.cat([t.detach().reshape(-1) for t in tensors])
        with _collective(self, "all-reduce"):
            dist.all_reduce(flat)
        flat /= self.world_size
        return tuple(part.view_as(t) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors))

    def mean_with_grad(self, tensor: Tensor) -> Tensor:
        """The mean over ranks of ``tensor``, differentiable: a statistic the loss differentiates through
        (NeuralEF's batch norms). Its backward is the mean over ranks of the incoming gradients, which
        keeps every rank's gradient ``P`` times its share (see the module docstring)."""
        return _MeanOverRanks.apply(tensor, self) if self.active else tensor

    def average_gradients(self, params: Sequence[torch.nn.Parameter], *extra: Tensor) -> tuple[Tensor, ...]:
        """Replace every parameter's gradient by its mean over ranks, in one all-reduce of the flattened
        gradients; ``extra`` tensors (e.g. the loss value and eigenvalue estimates for the history) ride
        along and are returned averaged. A missing gradient counts as zero."""
        if not self.active:
            return extra
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        dtype = grads[0].dtype if grads else extra[0].dtype
        parts = [*grads, *(e.to(dtype) for e in extra)]
        averaged = self.mean(*parts)
        for p, g in zip(params, averaged):
            p.grad = g
        return tuple(a.to(e.dtype) for a, e in zip(averaged[len(grads):], extra))

    def all_true(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every rank (a host synchronization: for the periodic checks only)."""
        return bool(flag) if not self.active else self.maximum(int(not flag)) == 0

    def maximum(self, value: int) -> int:
        """The largest of the ranks' ``value`` (a host synchronization: for the periodic checks only)."""
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self._comm_device())
        with _collective(self, "all-reduce"):
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def gather(self, obj: object) -> list[object]:
        """Every rank's ``obj`` (picklable), in rank order."""
        if not self.active:
            return [obj]
        out: list[object] = [None] * self.world_size
        with _collective(self, "all-gather"):
            dist.all_gather_object(out, obj)
        return out

    def broadcast_(self, tensors: Sequence[Tensor]) -> None:
        """Overwrite ``tensors`` on every rank with rank 0's (identical initial weights)."""
        if self.active:
            with _collective(self, "broadcast"):
                for t in tensors:
                    dist.broadcast(t.data, src=0)

    def barrier(self) -> None:
        if self.active:
            with _collective(self, "barrier"):
                dist.barrier()

    def _comm_device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


#: one process: no communication
SINGLE = DataParallel()


def data_parallel(distributed: bool | None = None, device: str | torch.device = "cpu") -> DataParallel:
    """The world :func:`~neuralsvd.fit` trains in. ``None`` (automatic): the initialized default process
    group if there is one, else joins the one ``torchrun`` describes, else :data:`SINGLE`; ``True``: the
    same but an error when there is none; ``False``: :data:`SINGLE` (one process even inside a group)."""
    if distributed is False:
        return SINGLE
    if not (dist.is_available() and (dist.is_initialized() or init_from_env(device))):
        if distributed:
            raise RuntimeError("distributed=True needs an initialized torch.distributed process group or a "
                               "torchrun launch (torchrun --nproc-per-node N ...)")
        return SINGLE
    return DataParallel(dist.get_world_size(), dist.get_rank(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


class _MeanOverRanks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, world):  # type: ignore[override]
        ctx.world = world
        return world.mean(tensor)[0].clone()

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        return ctx.world.mean(grad_output.contiguous())[0].clone(), None

"""The mutable state of a training run: optimizer, schedule, EMA of the weights, loss buffers, random
streams and history, with checkpoints (``state_dict``) and the in-memory snapshots the divergence guard
rolls back to."""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..losses.base import LossOutput, SpectralLoss
from ..operators.base import Operator
from .checkpoint import CheckpointError, capture_rng, restore_rng
from .decomposition import Decomposition, Model
from .distributed import SINGLE, DataParallel, rank_seed

__all__ = [
    "CHECKPOINT_KEYS",
    "OPTIMIZERS",
    "SCHEDULES",
    "DivergenceError",
    "TrainingState",
    "flush_denormals",
    "lr_factor",
    "make_optimizer",
]

OPTIMIZERS = ("adam", "rmsprop", "sgd")
SCHEDULES = ("stable-cosine", "cosine", "constant")
#: ``"stable-cosine"``: the fraction of the steps (after warmup) at the full learning rate before the cosine
STABLE_FRACTION = 0.7


class DivergenceError(RuntimeError):
    """Training produced a non-finite loss or eigenvalue estimate."""


CHECKPOINT_KEYS = ("models", "optimizer", "scheduler", "loss", "ema", "step", "rng", "lr_scale", "rollbacks",
                   "history")


def make_optimizer(name: str, params: Sequence[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "rmsprop":  # the authors' settings
        return torch.optim.RMSprop(params, lr=lr, alpha=0.999, eps=1e-10)
    return torch.optim.SGD(params, lr=lr)


def lr_factor(schedule: str, steps: int, warmup: int):
    """The learning rate's multiplier at each step: linear warmup over ``warmup`` steps, then ``"constant"``
    (1), ``"cosine"`` (from 1 to 0 at ``steps``) or ``"stable-cosine"`` (1 for the first
    :data:`STABLE_FRACTION` of the remaining steps, then a cosine to 0 at ``steps``)."""
    stable = STABLE_FRACTION if schedule == "stable-cosine" else 0.0

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, steps - warmup)
        decay = max(0.0, progress - stable) / (1 - stable)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, decay)))
    return factor


@contextlib.contextmanager
def flush_denormals() -> Iterator[None]:
    """Flush denormal floats to zero (they make e.g. softplus of very negative inputs several times
    slower on CPUs; values below ~1e-38 change only). torch has no getter: the default is restored."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


class TrainingState:
    """The mutable state of one run: models, optimizer, schedule, EMA, loss buffers, RNG, history.

    ``state_dict``/``load_state_dict`` give the checkpoint; ``snapshot``/``restore`` the in-memory copy
    the divergence guard rolls back to (parameters, optimizer, schedule, EMA and loss state; the sampling
    stream is not rewound, so a retry sees fresh batches). In a data-parallel ``world`` every rank holds
    one (identical but for the random streams, seeded by :func:`~neuralsvd.training.distributed.rank_seed`); the
    step averages the gradients over ranks, the checks decide on all ranks at once, and the checkpoint
    holds every rank's random streams.
    """

    def __init__(self, modules: tuple[nn.Module, ...], decomposition: Decomposition, operator: Operator,
                 loss: SpectralLoss, optimizer: str, lr: float, schedule: str, steps: int, warmup: int,
                 ema_decay: float | None, seed: int, device: torch.device, dtype: torch.dtype, batch_size: int,
                 world: DataParallel = SINGLE, compile: bool = False):
        self.modules, self.decomposition, self.operator, self.loss = modules, decomposition, operator, loss
        self.model: Model = decomposition.assemble(modules)
        self.params = [p for m in modules for p in m.parameters()]
        self.opt = make_optimizer(optimizer, self.params, lr)
        self.factor = lr_factor(schedule, steps, warmup)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self.factor)
        self.base_lr, self.ema_decay = lr, ema_decay
        self.ema = [p.detach().clone() for p in self.params] if ema_decay is not None else None
        self.world = world
        self.forward = torch.compile(self._forward) if compile else self._forward
        self.generator = torch.Generator(device).manual_seed(rank_seed(seed, world.rank))
        self.batch_size, self.dtype = batch_size, dtype
        self.step, self.lr_scale, self.rollbacks = 0, 1.0, 0
        self.warm_start_steps = 0  # steps of the warm start before step 0 (neuralsvd.warm_start)
        self.rescue = None  # the ModeRescue of the run (its counts are checkpointed), if any
        self.revival = None  # the ModeRevival of the run (likewise), if any
        self.hist_loss = torch.full((steps,), math.nan, dtype=torch.float64, device=device)
        self.hist_eig = torch.full((steps, loss.num_modes), math.nan, dtype=torch.float64, device=device)
        self.finite = torch.ones((), dtype=torch.bool, device=device)  # every step finite since the last check
        self.last_norms: torch.Tensor | None = None  # the last step's norm estimates and eigenvalues, (L,)
        self.last_eigenvalues: torch.Tensor | None = None

    def train_step(self) -> None:
        batch = self.decomposition.sample(self.operator, self.batch_size, self.generator, self.dtype)
        out = self.forward(batch)
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        # the history's statistics ride along the gradient all-reduce (data-parallel)
        extra = () if out.norm_eigenvalues is None else (out.norm_eigenvalues,)
        loss, eigenvalues, *averaged = self.world.average_gradients(self.params, out.loss.detach(), out.eigenvalues,
                                                                    *extra)
        norms = averaged[0] if averaged else None
        self.opt.step()
        self.sched.step()
        if self.ema is not None:
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1.0 - self.ema_decay)
        self.hist_loss[self.step] = loss  # data-parallel: the mean over ranks of the batch estimates
        self.hist_eig[self.step] = eigenvalues
        self.last_norms, self.last_eigenvalues = norms, eigenvalues
        # a mode at f = 0 exactly has Rayleigh quotient 0/0: collapsed (see revival), not diverged
        zero = norms == 0 if norms is not None else False
        self.finite &= torch.isfinite(loss) & (torch.isfinite(eigenvalues) | zero).all()  # no host sync
        self.step += 1

    def _forward(self, batch: Any) -> LossOutput:
        """The loss on one batch (model, operator and loss: what ``compile`` compiles)."""
        return self.decomposition.loss_output(self.operator, self.loss, self.model, batch)

    def healthy(self) -> bool:
        """Whether every loss and eigenvalue estimate since the last call, and every parameter (hence every
        gradient applied), is finite, on every rank. Synchronizes with the device (and the ranks)."""
        ok = bool(self.finite) and all(bool(torch.isfinite(p).all()) for p in self.params)
        self.finite.fill_(True)
        return self.world.all_true(ok)

    def _set_lr_scale(self, scale: float) -> None:
        self.lr_scale = scale
        self.sched.base_lrs = [self.base_lr * scale for _ in self.opt.param_groups]
        for group in self.opt.param_groups:
            group["lr"] = self.base_lr * scale * self.factor(self.sched.last_epoch)

    def _core_state(self) -> dict[str, Any]:
        return {
            "models": [m.state_dict() for m in self.modules],
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "loss": self.loss.state_dict(),
            "ema": self.ema,
            "step": self.step,
        }

    def _load_core(self, state: dict[str, Any]) -> None:
        for m, sd in zip(self.modules, state["models"]):
            m.load_state_dict(sd)
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.loss.load_state_dict(state["loss"])
        if self.ema is not None:
            for e, s in zip(self.ema, state["ema"]):
                e.copy_(s)
        self.step = int(state["step"])

    def snapshot(self) -> dict[str, Any]:
        return copy.deepcopy(self._core_state())

    def restore(self, snapshot: dict[str, Any]) -> None:
        self._load_core(snapshot)
        self.finite.fill_(True)

    def roll_back(self, snapshot: dict[str, Any], lr_backoff: float) -> None:
        """Return to ``snapshot`` and multiply the learning rate by ``lr_backoff``."""
        self.restore(snapshot)
        self.rollbacks += 1
        self._set_lr_scale(self.lr_scale * lr_backoff)

    def guard(self, last_good: dict[str, Any], max_rollbacks: int, lr_backoff: float) -> bool:
        """The divergence guard, at a check: True if the run is healthy; else roll back to ``last_good``
        with the learning rate times ``lr_backoff`` (warning) and return False, or raise
        :class:`DivergenceError` after ``max_rollbacks`` rollbacks."""
        if self.healthy():
            return True
        step = self.step
        if self.rollbacks >= max_rollbacks:
            raise DivergenceError(
                f"non-finite loss, eigenvalue estimate or parameter between steps {last_good['step']} and "
                f"{step}, after {self.rollbacks} rollbacks with the learning rate lowered to "
                f"{self.base_lr * self.lr_scale:.3g}; check the operator/potential for NaNs or lower lr")
        self.roll_back(last_good, lr_backoff)
        warnings.warn(f"non-finite values by step {step}: rolled back to step {self.step}, learning "
                      f"rate x{lr_backoff} (rollback {self.rollbacks} of at most {max_rollbacks})",
                      RuntimeWarning, stacklevel=3)
        return False

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint (a collective in a data-parallel world: every rank gathers the random streams)."""
        done = self.step
        return {
            **self._core_state(),
            "rng": self.world.gather(capture_rng(self.generator)),  # one entry per rank
            "world_size": self.world.world_size,
            "lr_scale": self.lr_scale,
            "rollbacks": self.rollbacks,
            "warm_start_steps": self.warm_start_steps,
            "rescue": None if self.rescue is None else self.rescue.state_dict(),
            "revival": None if self.revival is None else self.revival.state_dict(),
            "history": {"loss": self.hist_loss[:done].cpu(), "eigenvalues": self.hist_eig[:done].cpu()},
        }

    def load_state_dict(self, state: dict[str, Any], path: Path) -> None:
        try:
            self._load_core(state)
            if self.ema is not None and state["ema"] is None:
                raise ValueError("the checkpoint has no EMA weights but ema_decay is set")
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"checkpoint {path} does not match this model/optimizer/loss: {err}") from err
        world = int(state.get("world_size", 1))
        if world != self.world.world_size:
            raise CheckpointError(f"checkpoint {path} was written by a run on {world} process(es), this run has "
                                  f"{self.world.world_size}: resume with the same number (torchrun --nproc-per-node "
                                  f"{world} or neuralsvd run --nproc {world}); each rank continues its own random "
                                  "stream")
        rngs = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]  # a dict: one process
        restore_rng(rngs[self.world.rank], self.generator)
        self.rollbacks = int(state["rollbacks"])
        self.warm_start_steps = int(state.get("warm_start_steps", 0))  # absent in older checkpoints
        for rule, key in ((self.rescue, "rescue"), (self.revival, "revival")):
            if rule is not None and state.get(key) is not None:  # absent in older checkpoints
                rule.load_state_dict(state[key])
        self._set_lr_scale(float(state["lr_scale"]))
        done = min(self.step, self.hist_loss.shape[0])
        self.hist_loss[:done] = state["history"]["loss"][:done].to(self.hist_loss)
        self.hist_eig[:done] = state["history"]["eigenvalues"][:done].to(self.hist_eig)

    def final_modules(self) -> tuple[nn.Module, ...]:
        """The trained modules in eval mode, carrying the EMA weights if there is an EMA (copies)."""
        modules = self.modules
        if self.ema is not None:
            modules = tuple(copy.deepcopy(m) for m in modules)
            for p, e in zip((p for m in modules for p in m.parameters()), self.ema):
                p.data.copy_(e)
        for m in modules:
            m.eval()
        return modules

"""The training loop: :func:`fit` and its :class:`FitResult`."""

from __future__ import annotations

import contextlib
import copy
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn

from .losses.base import LossOutput, SpectralLoss
from .operators.base import Operator

__all__ = ["fit", "FitResult", "DivergenceError", "estimate_eigenvalues"]

OPTIMIZERS = ("adam", "rmsprop", "sgd")
SCHEDULES = ("cosine", "constant")
CHECKPOINT_NAME = "checkpoint.pt"


class DivergenceError(RuntimeError):
    """Training produced a non-finite loss or eigenvalue estimate."""


Model = nn.Module | tuple[nn.Module, nn.Module]


@dataclass
class FitResult:
    """The outcome of :func:`fit`.

    Attributes:
        model: the trained model (the EMA of the weights if ``ema_decay`` was set), in eval mode;
            for SVD a pair ``(left, right)``.
        operator: the operator that was decomposed.
        eigenvalues: ``(L,)`` final estimates in the operator's reporting convention, in mode order
            (leading first); for SVD the singular values (same tensor as ``singular_values``).
        learned_eigenvalues: ``(L,)`` the same estimates for the learned operator ``T`` (descending).
        order: ``(L,)`` permutation from model output columns to modes (leading first).
        norms: ``(L,)`` estimated ``L²(p)`` norms of the modes (SVD: of the left functions), used to
            normalize :meth:`eigenfunctions`.
        history: ``{"step": (S,), "loss": (S,), "eigenvalues": (S, L)}`` per training step: minibatch
            eigenvalue estimates in the reporting convention, columns in mode order (as ``eigenvalues``).
        steps, wall_seconds, steps_per_second: what the run did (this call only, when resumed).
    """

    model: Any
    operator: Operator
    eigenvalues: Tensor
    learned_eigenvalues: Tensor
    order: Tensor
    norms: Tensor
    history: dict[str, Tensor]
    steps: int
    wall_seconds: float
    steps_per_second: float
    right_norms: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def is_svd(self) -> bool:
        return isinstance(self.model, tuple)

    @property
    def singular_values(self) -> Tensor:
        return self.eigenvalues

    @property
    def norm_eigenvalues(self) -> Tensor:
        """The second read-out, from norms: ``‖f_l‖²`` (SVD: ``‖f_l‖‖g_l‖``), which tends to the learned
        ``T``'s eigenvalue at the NestedLoRA optimum, mapped to the reporting convention, in mode order.
        Its gap to :attr:`eigenvalues` (Rayleigh quotients) is a convergence diagnostic."""
        learned = self.norms * self.right_norms if self.is_svd else self.norms**2
        return self.operator.eigenvalues_from_learned(learned)

    def _modes(self, module: nn.Module, x: Tensor, norms: Tensor) -> Tensor:
        p = next(module.parameters(), None)
        if p is not None and x.is_floating_point():
            x = x.to(p)
        with torch.no_grad():
            return module(x)[:, self.order.to(x.device)] / norms.to(x.device)

    def eigenfunctions(self, x: Tensor) -> Tensor:
        """Learned eigenfunctions at ``x``, ``(n, L)``, unit norm, in the space of the operator's exact
        eigenfunctions (for Schrödinger: ``ψ = sqrt(p) f`` in ``L²(dx)``); SVD: the left functions."""
        module = self.model[0] if self.is_svd else self.model
        fx = self._modes(module, x, self.norms)
        return self.operator.eigenfunctions_from_model(fx.to(x.dtype) if x.is_floating_point() else fx, x)

    def left_functions(self, x: Tensor) -> Tensor:
        return self.eigenfunctions(x)

    def right_functions(self, y: Tensor) -> Tensor:
        """SVD only: learned right singular functions at ``y``, ``(n, L)``, unit norm."""
        if not self.is_svd:
            raise ValueError("right_functions exist for SVD results only (fit with a (left, right) model pair)")
        return self._modes(self.model[1], y, self.right_norms)


def _check_fit_args(model: Model, op: Operator, loss: SpectralLoss, steps: int, batch_size: int, optimizer: str,
                    lr: float, schedule: str, warmup: int, ema_decay: float | None, log_every: int,
                    eval_batches: int, eval_batch_size: int | None) -> bool:
    if not isinstance(op, Operator):
        raise TypeError(f"operator must be a neuralsvd.operators.Operator, got {type(op).__name__}")
    if not isinstance(loss, SpectralLoss):
        raise TypeError(f"loss must be a neuralsvd SpectralLoss (e.g. NestedLoRA), got {type(loss).__name__}")
    svd = isinstance(model, (tuple, list))
    modules = tuple(model) if svd else (model,)
    if svd and len(modules) != 2:
        raise ValueError(f"for SVD pass exactly two models (left, right), got {len(modules)}")
    for m in modules:
        if not isinstance(m, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module (or a pair of them for SVD), got {type(m).__name__}")
    if not svd and not op.self_adjoint:
        raise ValueError(f"{type(op).__name__} is not self-adjoint: pass a pair of models (left, right) for its SVD")
    counts = [("steps", steps, 0), ("batch_size", batch_size, 1), ("warmup", warmup, 0), ("log_every", log_every, 1),
              ("eval_batches", eval_batches, 1)]
    if eval_batch_size is not None:
        counts.append(("eval_batch_size", eval_batch_size, 1))
    for name, value, low in counts:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if batch_size < loss.min_batch_size:
        raise ValueError(f"batch_size={batch_size} is too small: {type(loss).__name__} needs at least "
                         f"{loss.min_batch_size} (it splits the batch into independent halves)")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if ema_decay is not None and not 0 <= ema_decay < 1:
        raise ValueError(f"ema_decay must be in [0, 1) or None, got {ema_decay!r}")
    return svd


def _make_optimizer(name: str, params: Sequence[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "rmsprop":  # the authors' settings
        return torch.optim.RMSprop(params, lr=lr, alpha=0.999, eps=1e-10)
    return torch.optim.SGD(params, lr=lr)


def _lr_factor(schedule: str, steps: int, warmup: int):
    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def _step_outputs(op: Operator, loss: SpectralLoss, model: Model, batch_size: int, generator: torch.Generator,
                  dtype: torch.dtype) -> LossOutput:
    if isinstance(model, tuple):
        x, y = op.sample_pair(batch_size, generator, dtype)
        return loss.svd(*op.apply_svd(model[0], model[1], x, y))
    x = op.sample(batch_size, generator, dtype)
    return loss(*op.apply(model, x))


def estimate_eigenvalues(model: Model, op: Operator, num_batches: int, batch_size: int,
                         generator: torch.Generator, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor | None]:
    """Rayleigh-quotient estimates of the learned ``T``'s eigenvalues from fresh batches.

    Uses ``op.evaluation_batches`` (``num_batches`` random batches; the whole population for finite
    operators). Returns ``(eigenvalues (L,), norms (L,), right_norms (L,) or None)`` with the pooled
    estimate ``mean f·Tf / mean f²`` (SVD: ``mean g·Tf / sqrt(mean f² mean g²)``).
    """
    svd = isinstance(model, tuple)
    sums: dict[str, Tensor] = {}
    counts = {"x": 0, "y": 0}
    with torch.no_grad():
        for batch in op.evaluation_batches(num_batches, batch_size, generator, dtype, svd):
            if svd:
                x, y = batch
                fx, gy, tfy, _ = op.apply_svd(model[0], model[1], x, y)
                terms = {"cross": (gy * tfy).sum(0), "ff": (fx * fx).sum(0), "gg": (gy * gy).sum(0)}
                counts["y"] += y.shape[0]
            else:
                x = batch
                fx, tfx = op.apply(model, x)
                terms = {"cross": (fx * tfx).sum(0), "ff": (fx * fx).sum(0)}
            counts["x"] += x.shape[0]
            for k, v in terms.items():
                sums[k] = sums.get(k, 0) + v.double()
    norms = (sums["ff"] / counts["x"]).sqrt()
    if svd:
        right = (sums["gg"] / counts["y"]).sqrt()
        return sums["cross"] / counts["y"] / (norms * right), norms, right
    return sums["cross"] / sums["ff"], norms, None


@contextlib.contextmanager
def _flush_denormals() -> Iterator[None]:
    """Flush denormal floats to zero (they make e.g. softplus of very negative inputs several times
    slower on CPUs; values below ~1e-38 change only). torch has no getter: the default is restored."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    return {"generator": generator.get_state(), "torch": torch.get_rng_state(), "python": random.getstate()}


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomic write: temporary file, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def fit(
    model: Model,
    operator: Operator,
    loss: SpectralLoss,
    steps: int = 10_000,
    batch_size: int = 128,
    optimizer: str = "adam",
    lr: float = 1e-3,
    schedule: str = "cosine",
    warmup: int = 0,
    ema_decay: float | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 1000,
    resume: bool = False,
    progress: bool = True,
    log_every: int = 100,
    eval_batches: int = 64,
    eval_batch_size: int | None = None,
) -> FitResult:
    """Learn the top ``L`` eigen- (or singular-) functions of ``operator`` by minimizing ``loss``.

    **Main arguments:**
        model: ``nn.Module`` ``x (n, d) -> (n, L)``; a pair ``(left, right)`` for SVD.
        operator: an :class:`~neuralsvd.operators.Operator`.
        loss: a :class:`~neuralsvd.losses.SpectralLoss`, e.g. ``NestedLoRA(L)``.
        steps, batch_size: optimization steps and samples per step.

    **Other arguments:**
        optimizer: ``"adam"``, ``"rmsprop"`` (α = 0.999, ε = 1e-10 as the authors) or ``"sgd"``; ``lr``.
        schedule: ``"cosine"`` (to zero at ``steps``) or ``"constant"``, after ``warmup`` linear steps.
        ema_decay: keep an exponential moving average of the weights and return it (e.g. 0.995).
        seed: seeds the sampling generator (and torch's global RNG).
        device, dtype: where and in which precision to train (default dtype: the model's).
        checkpoint_dir, checkpoint_every, resume: write ``checkpoint.pt`` every ``checkpoint_every``
            steps and at the end (atomically); with ``resume`` continue from it.
        progress, log_every: tqdm bar with loss and eigenvalue estimates every ``log_every`` steps.
        eval_batches, eval_batch_size: fresh batches for the final eigenvalue estimates.

    **Returns:** a :class:`FitResult`; modes are ordered leading first.

    **Raises:** ``ValueError``/``TypeError`` for bad input; :class:`DivergenceError` if the loss or the
    eigenvalue estimates become non-finite.
    """
    svd = _check_fit_args(model, operator, loss, steps, batch_size, optimizer, lr, schedule, warmup, ema_decay,
                          log_every, eval_batches, eval_batch_size)
    device = torch.device(device)
    modules = tuple(model) if svd else (model,)
    params = [p for m in modules for p in m.parameters()]
    dtype = dtype or (params[0].dtype if params else torch.get_default_dtype())
    for m in modules:
        m.to(device=device, dtype=dtype).train()
    operator.to(device)
    loss.to(device)
    model = tuple(modules) if svd else modules[0]
    torch.manual_seed(seed)
    generator = torch.Generator(device).manual_seed(seed)

    loss.attach(model)
    opt = _make_optimizer(optimizer, params, lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_factor(schedule, steps, warmup))
    ema = [p.detach().clone() for p in params] if ema_decay is not None else None
    num_modes = loss.num_modes
    hist_loss = torch.full((steps,), math.nan, dtype=torch.float64, device=device)
    hist_eig = torch.full((steps, num_modes), math.nan, dtype=torch.float64, device=device)
    start = 0
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None

    if resume:
        if ckpt_path is None or not ckpt_path.exists():
            raise FileNotFoundError(f"resume=True but no checkpoint at {ckpt_path}")
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
        for m, sd in zip(modules, state["models"]):
            m.load_state_dict(sd)
        opt.load_state_dict(state["optimizer"])
        loss.load_state_dict(state["loss"])
        sched.load_state_dict(state["scheduler"])
        if ema is not None:
            for e, s in zip(ema, state["ema"]):
                e.copy_(s)
        generator.set_state(state["rng"]["generator"].cpu() if device.type == "cpu" else state["rng"]["generator"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        random.setstate(state["rng"]["python"])
        start = int(state["step"])
        done = min(start, steps)
        hist_loss[:done] = state["history"]["loss"][:done].to(device)
        hist_eig[:done] = state["history"]["eigenvalues"][:done].to(device)

    def checkpoint(step: int) -> None:
        if ckpt_path is None:
            return
        _save_checkpoint(ckpt_path, {
            "step": step,
            "models": [m.state_dict() for m in modules],
            "optimizer": opt.state_dict(),
            "loss": loss.state_dict(),
            "scheduler": sched.state_dict(),
            "ema": ema,
            "rng": _rng_state(generator),
            "history": {"loss": hist_loss[:step].cpu(), "eigenvalues": hist_eig[:step].cpu()},
        })

    if start == 0:  # validate the problem once, on a real batch, before spending compute on it
        x0 = operator.sample_pair(batch_size, generator, dtype)[0] if svd else operator.sample(batch_size, generator, dtype)
        operator.validate(x0)
        generator.manual_seed(seed)

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, initial=start, desc=f"fit {type(operator).__name__}", dynamic_ncols=True)
    with _flush_denormals():
        t0 = time.perf_counter()
        for step in range(start, steps):
            out = _step_outputs(operator, loss, model, batch_size, generator, dtype)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            sched.step()
            if ema is not None:
                torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - ema_decay)
            hist_loss[step] = out.loss.detach()
            hist_eig[step] = out.eigenvalues
            if (step + 1) % log_every == 0 or step + 1 == steps:
                current = hist_loss[step].item()
                if not math.isfinite(current) or not bool(torch.isfinite(hist_eig[step]).all()):
                    raise DivergenceError(
                        f"non-finite loss ({current}) or eigenvalue estimate at step {step + 1}; "
                        f"try a smaller lr (now {lr}) or check the operator/potential for NaNs"
                    )
                if bar is not None:
                    shown = operator.eigenvalues_from_learned(hist_eig[step][: min(num_modes, 4)]).tolist()
                    bar.set_postfix_str(f"loss={current:.4g} eig=[{', '.join(f'{e:.4g}' for e in shown)}"
                                        f"{', ...' if num_modes > 4 else ''}]")
            if ckpt_path is not None and checkpoint_every > 0 and (step + 1) % checkpoint_every == 0:
                checkpoint(step + 1)
            if bar is not None:
                bar.update(1)
    wall = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    if ckpt_path is not None and start < steps:
        checkpoint(steps)

    if ema is not None:  # the returned model carries the averaged weights
        modules = tuple(copy.deepcopy(m) for m in modules)
        for p, e in zip((p for m in modules for p in m.parameters()), ema):
            p.data.copy_(e)
    for m in modules:
        m.eval()
    final = tuple(modules) if svd else loss.readout(modules[0])
    eval_gen = torch.Generator(device).manual_seed(seed + 1_000_003)
    learned, norms, right_norms = estimate_eigenvalues(final, operator, eval_batches, eval_batch_size or max(batch_size, 1024), eval_gen, dtype)
    if not bool(torch.isfinite(learned).all()):
        raise DivergenceError(f"non-finite final eigenvalue estimates {learned.tolist()}")
    order = torch.argsort(learned, descending=True)
    ran = steps - start
    history = {
        "step": torch.arange(1, steps + 1),
        "loss": hist_loss.cpu(),
        "eigenvalues": operator.eigenvalues_from_learned(hist_eig.cpu()[:, order.cpu()]),
    }
    return FitResult(
        model=final, operator=operator,
        eigenvalues=operator.eigenvalues_from_learned(learned[order]).cpu(),
        learned_eigenvalues=learned[order].cpu(), order=order.cpu(),
        norms=norms[order].cpu(), right_norms=None if right_norms is None else right_norms[order].cpu(),
        history=history, steps=steps, wall_seconds=wall,
        steps_per_second=ran / wall if wall > 0 else float("nan"),
    )

"""The training loop: :func:`fit` and its :class:`FitResult`."""

from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import CheckpointError, capture_rng, load_checkpoint, restore_rng, save_checkpoint
from .losses.base import LossOutput, SpectralLoss
from .operators.base import Operator
from .quadrature import Quadrature

__all__ = ["CheckpointError", "DivergenceError", "FitResult", "estimate_eigenvalues", "fit"]

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
        mixing: ``(L, L)`` or None: with the ``"ritz"`` readout, mode ``j`` is
            ``model(x)[:, order] @ mixing[:, j]`` (the Ritz functions; then ``norms`` are 1).
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
    mixing: Tensor | None = None
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
        Its gap to :attr:`eigenvalues` (Rayleigh quotients) is a convergence diagnostic. Not defined for
        the ``"ritz"`` readout (Ritz functions are normalized)."""
        if self.mixing is not None:
            raise ValueError("norm_eigenvalues is defined for the 'rayleigh' readout only")
        learned = self.norms * self.right_norms if self.is_svd else self.norms**2
        return self.operator.eigenvalues_from_learned(learned)

    def _modes(self, module: nn.Module, x: Tensor, norms: Tensor) -> Tensor:
        p = next(module.parameters(), None)
        if p is not None and x.is_floating_point():
            x = x.to(p)
        with torch.no_grad():
            out = module(x)[:, self.order.to(x.device)]
            if self.mixing is not None:
                out = out @ self.mixing.to(out)
            return out / norms.to(out)

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
    loss.use_population_batches(op.batch_is_population(batch_size, svd))
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


@dataclass
class Readout:
    """Final eigen/singular value estimates and how model outputs map to modes.

    Mode ``j`` is ``(model(x)[:, order] @ mixing)[:, j] / norms[j]`` (``mixing`` None: the identity).
    """

    eigenvalues: Tensor  # (L,) of the learned T, descending
    order: Tensor  # (L,) int64
    norms: Tensor  # (L,)
    right_norms: Tensor | None = None
    mixing: Tensor | None = None  # (L, L)


READOUTS = ("rayleigh", "ritz")


def estimate_eigenvalues(model: Model, op: Operator, num_batches: int, batch_size: int,
                         generator: torch.Generator, dtype: torch.dtype, readout: str = "rayleigh") -> Readout:
    """Eigenvalue estimates of the learned ``T``: integrated by ``op.evaluation_quadrature()`` when the
    operator has one (deterministic; e.g. the hydrogen and oscillator presets), else from fresh batches
    (``op.evaluation_batches``: ``num_batches`` random batches, the whole population for finite
    operators), pooled over batches.

    ``"rayleigh"``: per-mode quotients ``Σ f·Tf / Σ f²`` (SVD: ``Σ g·Tf / sqrt(Σ f² Σ g²)``), modes
    sorted descending. ``"ritz"`` (EVD only): Rayleigh–Ritz in the learned span, the generalized
    eigenproblem ``sym(A) c = λ B c`` with ``A = E[f Tfᵀ]``, ``B = E[f fᵀ]``: the best estimates the span
    allows (each ≤ the true eigenvalue of ``T`` up to sampling error, by interlacing), and mode
    functions ``f c`` that undo mixing between modes.
    """
    svd = isinstance(model, tuple)
    if readout not in READOUTS:
        raise ValueError(f"unknown readout {readout!r}; valid: {', '.join(READOUTS)}")
    if svd and readout == "ritz":
        raise ValueError("the 'ritz' readout is for self-adjoint operators (EVD); use 'rayleigh' for SVD")
    rule = None if svd else op.evaluation_quadrature()
    if rule is not None:
        return _readout_evd(*_quadrature_moments(model, op, rule, dtype), readout)
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
                fx, tfx = fx.double(), tfx.double()
                terms = {"a": fx.T @ tfx, "b": fx.T @ fx}  # (L, L) each
            counts["x"] += x.shape[0]
            for k, v in terms.items():
                sums[k] = sums.get(k, 0) + v.double()
    if svd:
        norms, right = (sums["ff"] / counts["x"]).sqrt(), (sums["gg"] / counts["y"]).sqrt()
        values = sums["cross"] / counts["y"] / (norms * right)
        order = torch.argsort(values, descending=True)
        return Readout(values[order], order, norms[order], right[order])
    return _readout_evd(sums["a"] / counts["x"], sums["b"] / counts["x"], readout)


def _quadrature_moments(model: nn.Module, op: Operator, rule: Quadrature, dtype: torch.dtype,
                        chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """``A = E_p[f Tfᵀ]`` and ``B = E_p[f fᵀ]`` integrated by ``rule`` (weights for ``L²(p)``)."""
    a = b = 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for i in range(0, len(rule), chunk):
            x = rule.points[i : i + chunk].to(device=device, dtype=dtype)
            w = rule.weights[i : i + chunk].to(device=device, dtype=torch.float64).unsqueeze(1)
            fx, tfx = op.apply(model, x)
            fx, tfx = fx.double(), tfx.double()
            a = a + fx.T @ (w * tfx)
            b = b + fx.T @ (w * fx)
    return a, b


def _readout_evd(a: Tensor, b: Tensor, readout: str) -> Readout:
    """Rayleigh quotients or Rayleigh–Ritz from ``A = E[f Tfᵀ]`` and ``B = E[f fᵀ]``, each (L, L)."""
    if readout == "rayleigh":
        values = a.diagonal() / b.diagonal()
        order = torch.argsort(values, descending=True)
        return Readout(values[order], order, b.diagonal()[order].sqrt())
    chol = torch.linalg.cholesky(b)  # B = R Rᵀ
    inv = torch.linalg.solve_triangular(chol, torch.eye(b.shape[0], dtype=b.dtype, device=b.device), upper=False)
    values, vecs = torch.linalg.eigh(inv @ (0.5 * (a + a.T)) @ inv.T)
    mixing = (inv.T @ vecs).flip(1)  # (L, L), columns: Ritz coefficients, descending; cᵀ B c = 1
    ident = torch.arange(b.shape[0], device=b.device)
    return Readout(values.flip(0), ident, torch.ones_like(values), mixing=mixing)


#: squared norm / eigenvalue outside this range flags a NestedLoRA mode as unconverged
NORM_RATIO_RANGE = (0.5, 2.0)


def _norm_ratio(loss: SpectralLoss, est: Readout, svd: bool, readout: str) -> Tensor | None:
    """``‖f_l‖² / λ_l`` per mode (SVD: ``‖f_l‖‖g_l‖ / σ_l``), 1 at the NestedLoRA optimum; warns about modes
    outside :data:`NORM_RATIO_RANGE`. None where it means nothing (other losses, the Ritz read-out)."""
    if not loss.norms_are_eigenvalues or readout != "rayleigh":
        return None
    learned = est.norms * est.right_norms if svd else est.norms**2
    ratio = (learned / est.eigenvalues).cpu()
    lo, hi = NORM_RATIO_RANGE
    bad = [(i, r) for i, r in enumerate(ratio.tolist()) if not lo <= r <= hi]
    if bad:
        listed = ", ".join(f"{i} ({r:.3g})" for i, r in bad)
        warnings.warn(
            f"modes {listed} look unconverged: squared norm / eigenvalue far from 1 (its value at the NestedLoRA "
            "optimum), so their eigenvalue estimates are unreliable; a low ratio is typical of a mode stuck near "
            "f = 0 or absorbing the residual of earlier modes. Train longer, or see docs/hydrogen-study.md",
            RuntimeWarning, stacklevel=3)
    return ratio


@contextlib.contextmanager
def _flush_denormals() -> Iterator[None]:
    """Flush denormal floats to zero (they make e.g. softplus of very negative inputs several times
    slower on CPUs; values below ~1e-38 change only). torch has no getter: the default is restored."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


class _Training:
    """The mutable state of one run: models, optimizer, schedule, EMA, loss buffers, RNG, history.

    ``state_dict``/``load_state_dict`` give the checkpoint; ``snapshot``/``restore`` the in-memory copy
    the divergence guard rolls back to (parameters, optimizer, schedule, EMA and loss state; the sampling
    stream is not rewound, so a retry sees fresh batches).
    """

    def __init__(self, modules: tuple[nn.Module, ...], svd: bool, operator: Operator, loss: SpectralLoss,
                 optimizer: str, lr: float, schedule: str, steps: int, warmup: int, ema_decay: float | None,
                 seed: int, device: torch.device, dtype: torch.dtype, batch_size: int):
        self.modules, self.svd, self.operator, self.loss = modules, svd, operator, loss
        self.model: Model = modules if svd else modules[0]
        self.params = [p for m in modules for p in m.parameters()]
        self.opt = _make_optimizer(optimizer, self.params, lr)
        self.factor = _lr_factor(schedule, steps, warmup)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self.factor)
        self.base_lr, self.ema_decay = lr, ema_decay
        self.ema = [p.detach().clone() for p in self.params] if ema_decay is not None else None
        self.generator = torch.Generator(device).manual_seed(seed)
        self.batch_size, self.dtype = batch_size, dtype
        self.step, self.lr_scale, self.rollbacks = 0, 1.0, 0
        self.hist_loss = torch.full((steps,), math.nan, dtype=torch.float64, device=device)
        self.hist_eig = torch.full((steps, loss.num_modes), math.nan, dtype=torch.float64, device=device)
        self.finite = torch.ones((), dtype=torch.bool, device=device)  # every step finite since the last check

    def train_step(self) -> None:
        out = _step_outputs(self.operator, self.loss, self.model, self.batch_size, self.generator, self.dtype)
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        self.opt.step()
        self.sched.step()
        if self.ema is not None:
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1.0 - self.ema_decay)
        loss = out.loss.detach()
        self.hist_loss[self.step] = loss
        self.hist_eig[self.step] = out.eigenvalues
        self.finite &= torch.isfinite(loss) & torch.isfinite(out.eigenvalues).all()  # no host sync
        self.step += 1

    def healthy(self) -> bool:
        """Whether every loss and eigenvalue estimate since the last call, and every parameter (hence every
        gradient applied), is finite. Synchronizes with the device."""
        ok = bool(self.finite) and all(bool(torch.isfinite(p).all()) for p in self.params)
        self.finite.fill_(True)
        return ok

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

    def state_dict(self) -> dict[str, Any]:
        done = self.step
        return {
            **self._core_state(),
            "rng": capture_rng(self.generator),
            "lr_scale": self.lr_scale,
            "rollbacks": self.rollbacks,
            "history": {"loss": self.hist_loss[:done].cpu(), "eigenvalues": self.hist_eig[:done].cpu()},
        }

    def load_state_dict(self, state: dict[str, Any], path: Path) -> None:
        try:
            self._load_core(state)
            if self.ema is not None and state["ema"] is None:
                raise ValueError("the checkpoint has no EMA weights but ema_decay is set")
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"checkpoint {path} does not match this model/optimizer/loss: {err}") from err
        restore_rng(state["rng"], self.generator)
        self.rollbacks = int(state["rollbacks"])
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


CHECKPOINT_KEYS = ("models", "optimizer", "scheduler", "loss", "ema", "step", "rng", "lr_scale", "rollbacks",
                   "history")


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
    max_rollbacks: int = 3,
    lr_backoff: float = 0.5,
    readout: str = "rayleigh",
    callback: Callable[[int, Model], None] | None = None,
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
        checkpoint_dir, checkpoint_every, resume: write ``checkpoint.pt`` atomically every
            ``checkpoint_every`` steps and at the end; with ``resume`` continue from it. On CPU a resumed
            run ends bitwise identical to an uninterrupted one.
        progress, log_every: tqdm bar with loss and eigenvalue estimates; every ``log_every`` steps the
            run is also checked for non-finite values (the only host synchronization).
        max_rollbacks, lr_backoff: divergence guard. A non-finite loss, eigenvalue estimate or parameter
            rolls the run back to the last healthy check, multiplies the learning rate by ``lr_backoff``
            and continues, at most ``max_rollbacks`` times; then :class:`DivergenceError`.
        eval_batches, eval_batch_size: fresh batches for the final eigenvalue estimates.
        readout: ``"rayleigh"`` (per-mode Rayleigh quotients) or ``"ritz"`` (Rayleigh–Ritz in the learned
            span; EVD only), see :func:`estimate_eigenvalues`.
        callback: ``callback(step, model)`` after every healthy ``log_every`` check, with the model as it
            would be returned now (EMA weights, the loss's read-out; for monitoring, e.g. error-vs-step
            curves; it must not train the model). It does not change the run's random streams.

    **Returns:** a :class:`FitResult`; modes are ordered leading first.

    **Raises:** ``ValueError``/``TypeError`` for bad input; :class:`~neuralsvd.checkpoint.CheckpointError`
    for an unusable checkpoint; :class:`DivergenceError` when the guard gives up.
    """
    svd = _check_fit_args(model, operator, loss, steps, batch_size, optimizer, lr, schedule, warmup, ema_decay,
                          log_every, eval_batches, eval_batch_size)
    if readout not in READOUTS or (svd and readout == "ritz"):
        raise ValueError(f"readout must be one of {READOUTS} ('ritz' only for self-adjoint operators), got {readout!r}")
    if isinstance(max_rollbacks, bool) or not isinstance(max_rollbacks, int) or max_rollbacks < 0:
        raise ValueError(f"max_rollbacks must be an integer >= 0, got {max_rollbacks!r}")
    if not 0 < lr_backoff < 1:
        raise ValueError(f"lr_backoff must be in (0, 1), got {lr_backoff!r}")
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 0:
        raise ValueError(f"checkpoint_every must be an integer >= 0 (0: only at the end), got {checkpoint_every!r}")
    device = torch.device(device)
    modules = tuple(model) if svd else (model,)
    first = next((p for m in modules for p in m.parameters()), None)
    dtype = dtype or (first.dtype if first is not None else torch.get_default_dtype())
    for m in modules:
        m.to(device=device, dtype=dtype).train()
    operator.to(device)
    loss.to(device)
    torch.manual_seed(seed)
    loss.attach(modules if svd else modules[0])
    run = _Training(modules, svd, operator, loss, optimizer, lr, schedule, steps, warmup, ema_decay, seed, device,
                    dtype, batch_size)
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    if resume:
        if ckpt_path is None:
            raise ValueError("resume=True needs checkpoint_dir")
        run.load_state_dict(load_checkpoint(ckpt_path, device, CHECKPOINT_KEYS), ckpt_path)
    else:  # validate the problem once, on a real batch, before spending compute on it
        x0 = operator.sample_pair(batch_size, run.generator, dtype)[0] if svd else operator.sample(batch_size, run.generator, dtype)
        operator.validate(x0)
        run.generator.manual_seed(seed)
    start = run.step

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, initial=min(start, steps), desc=f"fit {type(operator).__name__}", dynamic_ncols=True)
    last_good = run.snapshot()
    t0 = time.perf_counter()
    with _flush_denormals():
        while run.step < steps:
            run.train_step()
            step = run.step
            due_checkpoint = ckpt_path is not None and checkpoint_every > 0 and step % checkpoint_every == 0
            if step % log_every == 0 or step == steps or due_checkpoint:
                if not run.healthy():
                    if run.rollbacks >= max_rollbacks:
                        raise DivergenceError(
                            f"non-finite loss, eigenvalue estimate or parameter between steps {last_good['step']} and "
                            f"{step}, after {run.rollbacks} rollbacks with the learning rate lowered to "
                            f"{run.base_lr * run.lr_scale:.3g}; check the operator/potential for NaNs or lower lr")
                    run.roll_back(last_good, lr_backoff)
                    warnings.warn(f"non-finite values by step {step}: rolled back to step {run.step}, learning "
                                  f"rate x{lr_backoff} (rollback {run.rollbacks} of at most {max_rollbacks})",
                                  RuntimeWarning, stacklevel=2)
                    if bar is not None:
                        bar.n = run.step
                        bar.refresh()
                    continue
                last_good = run.snapshot()
                if callback is not None:
                    current = run.final_modules()
                    callback(step, tuple(current) if svd else loss.readout(current[0]))
                    for m in run.modules:
                        m.train()
                if bar is not None:
                    shown = operator.eigenvalues_from_learned(run.hist_eig[step - 1][: min(loss.num_modes, 4)]).tolist()
                    bar.set_postfix_str(f"loss={run.hist_loss[step - 1].item():.4g} eig=[{', '.join(f'{e:.4g}' for e in shown)}"
                                        f"{', ...' if loss.num_modes > 4 else ''}]")
                if due_checkpoint:
                    save_checkpoint(ckpt_path, run.state_dict())
            if bar is not None:
                bar.update(1)
    wall = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    if ckpt_path is not None and start < steps:
        save_checkpoint(ckpt_path, run.state_dict())

    modules = run.final_modules()
    final = tuple(modules) if svd else loss.readout(modules[0])
    eval_gen = torch.Generator(device).manual_seed(seed + 1_000_003)
    est = estimate_eigenvalues(final, operator, eval_batches, eval_batch_size or max(batch_size, 1024), eval_gen,
                               dtype, readout)
    if not bool(torch.isfinite(est.eigenvalues).all()):
        raise DivergenceError(f"non-finite final eigenvalue estimates {est.eigenvalues.tolist()}")
    order = est.order
    norm_ratio = _norm_ratio(loss, est, svd, readout)
    history = {
        "step": torch.arange(1, steps + 1),
        "loss": run.hist_loss.cpu(),
        "eigenvalues": operator.eigenvalues_from_learned(run.hist_eig.cpu()[:, order.cpu()]),  # per-mode batch
        # Rayleigh quotients; with the "ritz" readout the final modes are mixtures of these columns
    }
    ran = steps - start
    return FitResult(
        model=final, operator=operator,
        eigenvalues=operator.eigenvalues_from_learned(est.eigenvalues).cpu(),
        learned_eigenvalues=est.eigenvalues.cpu(), order=order.cpu(), norms=est.norms.cpu(),
        right_norms=None if est.right_norms is None else est.right_norms.cpu(),
        mixing=None if est.mixing is None else est.mixing.cpu(),
        history=history, steps=steps, wall_seconds=wall,
        steps_per_second=ran / wall if wall > 0 and ran > 0 else float("nan"),
        extras={"rollbacks": run.rollbacks, "lr_scale": run.lr_scale, "resumed_from": start,
                "norm_ratio": None if norm_ratio is None else norm_ratio.tolist()},
    )

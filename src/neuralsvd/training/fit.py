"""The training loop, :func:`fit`.

The pieces live next door: :mod:`~neuralsvd.training.result` (:class:`FitResult`), :mod:`~neuralsvd.training.readout`
(eigenvalue read-out, :func:`estimate_eigenvalues`), :mod:`~neuralsvd.training.state` (optimizer,
schedule, EMA, checkpoints, divergence guard) and :mod:`~neuralsvd.training.decomposition` (EVD or SVD). The
names below are importable from here as before.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .._validation import check_positive_int
from ..losses.base import SpectralLoss
from ..models.learning_rate import default_lr
from ..operators.base import Operator
from .calibration import INIT_RATIO, calibrate_output_scale
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .decomposition import Decomposition, Model, check_model
from .distributed import DataParallel, data_parallel, rank_seed
from .interrupts import StopRequests, TrainingInterrupted
from .readout import READOUTS, estimate_eigenvalues, norm_ratio
from .rescue import ModeRescue
from .resources import ResourceError, allocation_failures_as, check_device, check_memory, estimate_peak_memory
from .result import FitResult
from .revival import ModeRevival
from .state import (
    CHECKPOINT_KEYS,
    OPTIMIZERS,
    SCHEDULES,
    DivergenceError,
    TrainingState,
    flush_denormals,
)
from .warm_start import WARM_START, needs_warm_start
from .warm_start import warm_start as warm_start_modes

__all__ = [
    "FIT_OPTIONS",
    "CheckpointError",
    "DivergenceError",
    "FitResult",
    "ResourceError",
    "TrainingInterrupted",
    "estimate_eigenvalues",
    "estimate_fit_memory",
    "fit",
]

CHECKPOINT_NAME = "checkpoint.pt"


def fit(
    model: Model,
    operator: Operator,
    loss: SpectralLoss,
    *,
    steps: int = 10_000,
    batch_size: int = 128,
    optimizer: str = "adam",
    lr: float | None = None,
    schedule: str = "stable-cosine",
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
    revive: bool = True,
    rescue: bool = True,
    init_ratio: float | None = INIT_RATIO,
    warm_start: int | None = WARM_START,
    compile: bool = False,
    callback: Callable[[int, Model], None] | None = None,
    distributed: bool | None = None,
) -> FitResult:
    """Learn the top ``L`` eigen- (or singular-) functions of ``operator`` by minimizing ``loss``.

    **Main arguments:**
        model: ``nn.Module`` ``x (n, d) -> (n, L)``; a pair ``(left, right)`` for SVD.
        operator: an :class:`~neuralsvd.operators.Operator`.
        loss: a :class:`~neuralsvd.losses.SpectralLoss`, e.g. ``NestedLoRA(L)``.
        steps, batch_size: optimization steps and samples per step. When every batch is the operator's
            whole finite population (:meth:`~neuralsvd.operators.Operator.batch_is_population`), the
            loss is told so and uses exact full-batch moments.

    **Other arguments** (keyword-only):
        optimizer: ``"adam"``, ``"rmsprop"`` (α = 0.999, ε = 1e-10 as the authors) or ``"sgd"``; ``lr``
            (``None``: :func:`~neuralsvd.models.default_lr` of the model: ``1e-3`` for the 128-wide networks,
            ``1e-3 · 384 / Σ hidden widths`` for others, ``1e-2`` for ``Tabular``).
        schedule: ``"stable-cosine"`` (default: the full rate for 70% of the steps, then a cosine to zero at
            ``steps``; modes that find their shape late still get time at the full rate), ``"cosine"`` (to
            zero at ``steps``) or ``"constant"``, after ``warmup`` linear steps.
        ema_decay: keep an exponential moving average of the weights and return it (e.g. 0.995).
        seed: seeds the sampling generator (and torch's global RNG).
        device, dtype: where and in which precision to train (default dtype: the model's).
        checkpoint_dir, checkpoint_every, resume: write ``checkpoint.pt`` atomically every
            ``checkpoint_every`` steps and at the end; with ``resume`` continue from it. On CPU a resumed
            run ends bitwise identical to an uninterrupted one. With a ``checkpoint_dir``, SIGINT (Ctrl-C)
            and SIGTERM (preemption) finish the current step, save a checkpoint and raise
            :class:`~neuralsvd.training.interrupts.TrainingInterrupted` (main thread only; the previous handlers
            are restored when ``fit`` returns); a second signal aborts at once.
        progress, log_every: tqdm bar with loss and eigenvalue estimates; every ``log_every`` steps the
            run is also checked for non-finite values (the only host synchronization).
        max_rollbacks, lr_backoff: divergence guard. A non-finite loss, eigenvalue estimate or parameter
            rolls the run back to the last healthy check, multiplies the learning rate by ``lr_backoff``
            and continues, at most ``max_rollbacks`` times; then :class:`DivergenceError`.
        eval_batches, eval_batch_size: fresh batches for the final eigenvalue estimates.
        readout: ``"rayleigh"`` (per-mode Rayleigh quotients) or ``"ritz"`` (Rayleigh–Ritz in the learned
            span; EVD only), see :func:`~neuralsvd.training.readout.estimate_eigenvalues`.
        revive: re-initialize a mode that collapsed to ``f ≈ 0``, a stationary point of NestedLoRA
            (checked every ``log_every`` steps, warning; never at the optimum, see :mod:`~neuralsvd.training.revival`).
        rescue: warm-start again a mode that mostly copies earlier modes (checked every ``log_every`` steps;
            NestedLoRA, EVD, models whose modes have parameters of their own; never at the optimum, see
            :mod:`~neuralsvd.training.rescue`; ``FitResult.extras["rescued_modes"]`` (mode → tries),
            ``["rescue_steps"]``, ``["rescues"]`` (one record per try)).
        init_ratio: before the first step, shrink each mode of a NestedLoRA loss (a loss with a norm
            estimator) whose ``‖f_l‖²`` exceeds ``init_ratio · |ρ_l|`` (``ρ_l`` its Rayleigh quotient) to that
            cap, through the model's fixed output gain (models with ``scale_outputs``: ParallelMLP, MLP;
            once per model, not on resume; :mod:`~neuralsvd.training.calibration`). ``None``: the model as given.
        warm_start: when a mode of the first batch has a Rayleigh quotient ``ρ_l ≤ 0`` (its best size under
            NestedLoRA is zero: typical of a random network on a quickly growing potential), first train
            the modes' shapes on a scale-free objective until every quotient is positive (at most this
            many extra steps, and at most ``steps // 4``; then each mode is sized at ``‖f_l‖² = ρ_l`` instead of the cap), see
            :mod:`~neuralsvd.training.warm_start`. EVD with a NestedLoRA loss only; not on resume; ``None`` or 0: off.
            ``FitResult.extras["warm_start_steps"]`` says how many steps it took.
        compile: run the model, operator and loss of the training step through ``torch.compile``
            (the first steps pay the compilation; see the scaling benchmark for when it pays off).
        callback: ``callback(step, model)`` after every healthy ``log_every`` check, with the model as it
            would be returned now (EMA weights, the loss's read-out; for monitoring, e.g. error-vs-step
            curves; it must not train the model). It does not change the run's random streams.
        distributed: data-parallel training (:mod:`neuralsvd.training.distributed`). ``None`` (default): when this
            process is a rank of an initialized ``torch.distributed`` process group, or was launched by
            ``torchrun``; ``True``: the same, an error without one; ``False``: never. Then ``batch_size``
            is the *global* batch: each of the ``P`` ranks draws ``batch_size / P`` points from its own
            random stream (seeded from ``seed`` and the rank), the update equals the one-process update
            on the global batch, a CUDA ``device`` without index means ``cuda:LOCAL_RANK``, only rank 0
            writes checkpoints (holding every rank's random streams; resuming needs the same number of
            ranks), the divergence guard and a stop on SIGINT/SIGTERM are decided at the ``log_every``
            checks on all ranks at once, and every rank returns the same result.

    **Returns:** a :class:`FitResult`; modes are ordered leading first.

    **Raises:** ``ValueError``/``TypeError`` for bad input; :class:`~neuralsvd.training.checkpoint.CheckpointError`
    for an unusable checkpoint; :class:`DivergenceError` when the guard gives up;
    :class:`~neuralsvd.training.resources.ResourceError` before training when the device does not exist or the
    estimated peak memory exceeds what is available, and during training when an allocation fails (the
    last checkpoint is left intact); :class:`~neuralsvd.training.interrupts.TrainingInterrupted` on a signal;
    ``OSError`` when a checkpoint cannot be written (the previous one is intact).
    """
    world = data_parallel(distributed, device)
    lr = default_lr(model) if lr is None else lr
    rank_batch = _rank_batch(batch_size, world)
    dec = _check_fit_args(model, operator, loss, steps, rank_batch, optimizer, lr, schedule, warmup, ema_decay,
                          log_every, eval_batches, eval_batch_size, max_rollbacks, lr_backoff, checkpoint_every,
                          readout, init_ratio, warm_start)
    device = check_device(world.device(device))
    modules = dec.modules(model)
    first = next((p for m in modules for p in m.parameters()), None)
    dtype = dtype or (first.dtype if first is not None else torch.get_default_dtype())
    held = sum(p.numel() * p.element_size() for m in modules for p in m.parameters() if p.device == device)
    check_memory(estimate_fit_memory(model, operator, loss.num_modes, batch_size=rank_batch, steps=steps, optimizer=optimizer,
                                     ema_decay=ema_decay, dtype=dtype, eval_batch_size=eval_batch_size),
                 device, held=held)
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    saved = {"step": None}  # the step of the last checkpoint this call wrote or resumed from

    def save() -> None:
        state = run.state_dict()  # a collective: every rank takes part, rank 0 writes
        if world.is_main:
            save_checkpoint(ckpt_path, state)
        saved["step"] = run.step

    def where() -> str:
        if saved["step"] is None:
            return "no checkpoint was written"
        return f"the last checkpoint {ckpt_path} (step {saved['step']}) is intact"

    with StopRequests(enabled=ckpt_path is not None) as stop:
        try:
            with allocation_failures_as(f"out of memory on {device} while setting up the run"):
                for m in modules:
                    m.to(device=device, dtype=dtype).train()
                    world.broadcast_([*m.parameters(), *m.buffers()])  # every rank starts from rank 0's
                operator.to(device)
                loss.to(device)
                torch.manual_seed(rank_seed(seed, world.rank))
                loss.use_data_parallel(world)
                loss.attach(dec.assemble(modules))
                loss.prepare(operator)
                run = TrainingState(modules, dec, operator, loss, optimizer, lr, schedule, steps, warmup, ema_decay,
                                    seed, device, dtype, rank_batch, world, compile)
                if rescue and loss.norms_are_eigenvalues and not dec.is_svd:
                    run.rescue = ModeRescue(modules[0], operator, lambda n, g: dec.sample(operator, n, g, dtype),
                                            rank_batch, seed, world.rank, lr, loss.batch_mean, world.average_gradients)
                run.revival = ModeRevival(modules, seed) if revive else None
                if resume:
                    if ckpt_path is None:
                        raise ValueError("resume=True needs checkpoint_dir")
                    run.load_state_dict(load_checkpoint(ckpt_path, device, CHECKPOINT_KEYS), ckpt_path)
                    saved["step"] = run.step
                else:  # validate the problem once, on a real batch, before spending compute on it
                    batch0 = dec.sample(operator, rank_batch, run.generator, dtype)
                    operator.validate(dec.inputs(batch0))
                    # the statistics are global-batch means: every rank takes the same decisions
                    if (warm_start and loss.norms_are_eigenvalues and not dec.is_svd
                            and needs_warm_start(modules[0], operator, batch0, loss.batch_mean)):
                        run.warm_start_steps = warm_start_modes(
                            modules[0], operator, lambda: dec.sample(operator, rank_batch, run.generator, dtype),
                            lr, min(warm_start, steps // 4), mean=loss.batch_mean, average_gradients=world.average_gradients)
                    elif init_ratio is not None and loss.norms_are_eigenvalues:
                        calibrate_output_scale(modules, operator, batch0, init_ratio, mean=loss.batch_mean)
                    run.generator.manual_seed(rank_seed(seed, world.rank))
            start = run.step
            bar = _ProgressBar(progress and world.is_main, steps, start, operator, loss, run)
            last_good = run.snapshot()
            t0 = time.perf_counter()
            oom = lambda: f"out of memory on {device} at step {run.step + 1}; {where()}"
            with flush_denormals(), allocation_failures_as(oom):
                while run.step < steps:
                    run.train_step()
                    step = run.step
                    due_checkpoint = ckpt_path is not None and checkpoint_every > 0 and step % checkpoint_every == 0
                    checked = step % log_every == 0 or step == steps or due_checkpoint
                    if checked:
                        if not run.guard(last_good, max_rollbacks, lr_backoff):
                            bar.rewind(run.step)
                            continue
                        if run.revival is not None and run.last_eigenvalues is not None:
                            run.revival(run.last_norms, run.last_eigenvalues, step, run.opt, run.ema, loss)
                        if run.rescue is not None and step < steps:
                            run.rescue(step, run.opt, run.ema, loss)
                        last_good = run.snapshot()
                        if callback is not None:
                            callback(step, dec.final_model(loss, dec.assemble(run.final_modules())))
                            for m in run.modules:
                                m.train()
                        bar.show(step)
                        if due_checkpoint:
                            save()
                    bar.update()
                    signum = _stop_signal(stop.signal, world, checked)
                    if signum is not None:  # Ctrl-C or SIGTERM: save this step and stop
                        if not checked and not run.guard(last_good, max_rollbacks, lr_backoff):
                            bar.rewind(run.step)  # rolled back to the last healthy check: save that
                        if saved["step"] != run.step:
                            save()
                        bar.close()
                        raise TrainingInterrupted(signum, ckpt_path, run.step, saved=True)
            wall = time.perf_counter() - t0
            bar.close()
            if ckpt_path is not None and start < steps:
                save()
            if stop.signal is not None:
                raise TrainingInterrupted(stop.signal, ckpt_path, run.step, saved=True)
        except TrainingInterrupted as err:
            if err.saved:
                raise
            raise TrainingInterrupted(err.signal, ckpt_path if saved["step"] is not None else None,
                                      saved["step"]) from None
    with allocation_failures_as(lambda: f"out of memory on {device} in the final read-out (training is complete; "
                                f"{where()})"):
        return _result(run, dec, operator, loss, steps, start, wall, seed, eval_batches,
                       eval_batch_size or max(batch_size, 1024), dtype, readout)


def _rank_batch(batch_size: int, world: DataParallel) -> int:
    """Each rank's share of the global ``batch_size``."""
    check_positive_int("batch_size", batch_size)
    if batch_size % world.world_size:
        raise ValueError(f"batch_size={batch_size} must be a multiple of the number of data-parallel processes "
                         f"({world.world_size}): it is the global batch, split evenly over the ranks")
    return batch_size // world.world_size


def _stop_signal(signum: int | None, world: DataParallel, checked: bool) -> int | None:
    """The signal to stop on after this step, if any. In one process: as soon as one arrived. Data-parallel:
    at the checks only, on every rank at once when one arrived on any rank (ranks in a collective must
    not leave it); a rank that saw none stops on the others' signal."""
    if not world.active:
        return signum
    if not checked:
        return None
    agreed = world.maximum(signum or 0)
    return agreed or None


def estimate_fit_memory(model: Model, operator: Operator, num_modes: int, *, batch_size: int, steps: int,
                        optimizer: str = "adam", ema_decay: float | None = None, dtype: torch.dtype | None = None,
                        eval_batch_size: int | None = None):
    """Estimated peak memory of ``fit(model, operator, loss, ...)`` for a loss of ``num_modes`` modes (a
    :class:`~neuralsvd.training.resources.MemoryEstimate`); works on a model built on the ``meta`` device, so a
    run can be checked before its weights are allocated."""
    dec = check_model(model)
    modules = dec.modules(model)
    first = next((p for m in modules for p in m.parameters()), None)
    dtype = dtype or (first.dtype if first is not None else torch.get_default_dtype())
    dim = getattr(operator, "dim", None)
    laplacian = getattr(operator, "laplacian_method", None) is not None
    return estimate_peak_memory(modules, num_modes, int(dim) if isinstance(dim, int) else 1,
                                batch_size=batch_size, steps=steps, optimizer=optimizer, ema_decay=ema_decay,
                                dtype=dtype, laplacian=laplacian, eval_batch_size=eval_batch_size)


def _result(run: TrainingState, dec: Decomposition, operator: Operator, loss: SpectralLoss, steps: int, start: int,
            wall: float, seed: int, eval_batches: int, eval_batch_size: int, dtype: torch.dtype,
            readout: str) -> FitResult:
    """The final read-out of a finished run as a :class:`FitResult`."""
    final = dec.final_model(loss, dec.assemble(run.final_modules()))
    eval_gen = torch.Generator(run.generator.device).manual_seed(seed + 1_000_003)
    est = estimate_eigenvalues(final, operator, eval_batches, eval_batch_size, eval_gen, dtype, readout)
    if not bool(torch.isfinite(est.eigenvalues).all()):
        raise DivergenceError(f"non-finite final eigenvalue estimates {est.eigenvalues.tolist()}")
    order = est.order
    ratio = norm_ratio(loss, est, dec, readout)
    history = {
        "step": torch.arange(1, steps + 1),
        "loss": run.hist_loss.cpu(),
        "eigenvalues": operator.eigenvalues_from_learned(run.hist_eig.cpu()[:, order.cpu()]),  # per-mode batch
        # Rayleigh quotients; with the "ritz" readout the final modes are mixtures of these columns
    }
    ran = steps - start
    stderr = None
    if est.stderr is not None:  # through the (affine) map to the reporting convention
        stderr = (operator.eigenvalues_from_learned(est.eigenvalues + est.stderr)
                  - operator.eigenvalues_from_learned(est.eigenvalues)).abs().cpu()
    return FitResult(
        model=final, operator=operator,
        eigenvalues=operator.eigenvalues_from_learned(est.eigenvalues).cpu(),
        learned_eigenvalues=est.eigenvalues.cpu(), order=order.cpu(), norms=est.norms.cpu(),
        right_norms=None if est.right_norms is None else est.right_norms.cpu(),
        mixing=None if est.mixing is None else est.mixing.cpu(), eigenvalue_stderr=stderr,
        history=history, steps=steps, wall_seconds=wall,
        steps_per_second=ran / wall if wall > 0 and ran > 0 else float("nan"),
        extras={"warm_start_steps": run.warm_start_steps, "rollbacks": run.rollbacks, "lr_scale": run.lr_scale, "resumed_from": start,
                "rescued_modes": {} if run.rescue is None else dict(run.rescue.count),
                "rescue_steps": 0 if run.rescue is None else run.rescue.steps,
                "rescues": [] if run.rescue is None else [dict(r) for r in run.rescue.log],
                "norm_ratio": None if ratio is None else ratio.tolist()},
    )


class _ProgressBar:
    """tqdm bar with the loss and the first eigenvalue estimates (a no-op when ``progress`` is off)."""

    def __init__(self, progress: bool, steps: int, start: int, operator: Operator, loss: SpectralLoss,
                 run: TrainingState):
        self.operator, self.loss, self.run, self.bar = operator, loss, run, None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=steps, initial=min(start, steps), desc=f"fit {type(operator).__name__}",
                            dynamic_ncols=True)

    def show(self, step: int) -> None:
        if self.bar is None:
            return
        L = self.loss.num_modes
        shown = self.operator.eigenvalues_from_learned(self.run.hist_eig[step - 1][: min(L, 4)]).tolist()
        self.bar.set_postfix_str(f"loss={self.run.hist_loss[step - 1].item():.4g} "
                                 f"eig=[{', '.join(f'{e:.4g}' for e in shown)}{', ...' if L > 4 else ''}]")

    def rewind(self, step: int) -> None:
        if self.bar is not None:
            self.bar.n = step
            self.bar.refresh()

    def update(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _check_fit_args(model: Model, op: Operator, loss: SpectralLoss, steps: int, batch_size: int, optimizer: str,
                    lr: float, schedule: str, warmup: int, ema_decay: float | None, log_every: int,
                    eval_batches: int, eval_batch_size: int | None, max_rollbacks: int, lr_backoff: float,
                    checkpoint_every: int, readout: str, init_ratio: float | None,
                    warm_start: int | None) -> Decomposition:
    """Validate the arguments of :func:`fit`, tell the loss whether batches are the population, and
    return the decomposition (EVD or SVD)."""
    if not isinstance(op, Operator):
        raise TypeError(f"operator must be a neuralsvd.operators.Operator, got {type(op).__name__}")
    if not isinstance(loss, SpectralLoss):
        raise TypeError(f"loss must be a neuralsvd SpectralLoss (e.g. NestedLoRA), got {type(loss).__name__}")
    dec = check_model(model)
    if not dec.is_svd and not op.self_adjoint:
        raise ValueError(f"{type(op).__name__} is not self-adjoint: pass a pair of models (left, right) for its SVD")
    for name, value, low in [("steps", steps, 0), ("batch_size", batch_size, 1), ("warmup", warmup, 0),
                             ("log_every", log_every, 1), ("eval_batches", eval_batches, 1),
                             ("max_rollbacks", max_rollbacks, 0)]:
        check_positive_int(name, value, low)
    if eval_batch_size is not None:
        check_positive_int("eval_batch_size", eval_batch_size)
    check_positive_int("checkpoint_every", checkpoint_every, 0, "0: only at the end")
    loss.use_population_batches(op.batch_is_population(batch_size, dec.is_svd))
    if batch_size < loss.min_batch_size:
        raise ValueError(f"batch_size={batch_size} is too small: {type(loss).__name__} needs at least "
                         f"{loss.min_batch_size} (it splits the batch into independent halves)")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if init_ratio is not None and not (isinstance(init_ratio, (int, float)) and 0 < init_ratio < math.inf):
        raise ValueError(f"init_ratio must be a positive number or None, got {init_ratio!r}")
    if warm_start is not None:
        check_positive_int("warm_start", warm_start, 0, "None or 0: off")
    if ema_decay is not None and not 0 <= ema_decay < 1:
        raise ValueError(f"ema_decay must be in [0, 1) or None, got {ema_decay!r}")
    if not 0 < lr_backoff < 1:
        raise ValueError(f"lr_backoff must be in (0, 1), got {lr_backoff!r}")
    if readout not in READOUTS or (dec.is_svd and readout == "ritz"):
        raise ValueError(f"readout must be one of {READOUTS} ('ritz' only for self-adjoint operators), got {readout!r}")
    return dec


#: the options of :func:`fit` after ``(model, operator, loss)``, in order (for configs and the CLI)
FIT_OPTIONS = tuple(fit.__code__.co_varnames[3 : 3 + fit.__code__.co_kwonlyargcount])

"""What the machine can serve: the device exists, the run's estimated peak memory fits, and allocation
failures during training become one clear :class:`ResourceError`.

The memory estimate counts parameters with their gradients, optimizer moments, EMA and the divergence
guard's snapshot; the activations kept for the backward pass (batch x modes x widths for the library's
MLPs), the Laplacian's derivative channels (``d + 1`` per hidden unit), the batch's outputs and the
per-step history. It is meant to catch requests that are off by orders of magnitude, not to budget
tightly: set ``NEURALSVD_NO_MEMORY_CHECK=1`` to skip it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

__all__ = ["MemoryEstimate", "ResourceError", "allocation_failures_as", "available_memory", "check_device",
           "check_memory", "estimate_peak_memory", "format_bytes", "is_allocation_failure"]

#: optimizer moments per parameter
_OPTIMIZER_STATES = {"adam": 2, "rmsprop": 1, "sgd": 0}


class ResourceError(RuntimeError):
    """The machine cannot serve the request: the device does not exist or there is not enough memory."""


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"  # pragma: no cover


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a :class:`torch.device`, after checking that it exists here; raises ``ValueError``
    for a malformed name and :class:`ResourceError` for a device this machine does not have."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r}: expected cpu, cuda, cuda:N or mps ({err})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ResourceError(f"device {str(device)!r} asked for, but CUDA is not available ({why}); "
                                "use --device cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ResourceError(f"device {str(device)!r} does not exist: {count} CUDA device(s) visible "
                                f"(cuda:0 .. cuda:{count - 1})")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ResourceError(f"device {str(device)!r} asked for, but MPS is not available; use --device cpu")
    elif dev.type not in ("cpu", "meta"):
        try:
            torch.empty(1, device=dev)
        except Exception as err:  # noqa: BLE001 - each backend fails in its own way
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ResourceError(f"device {str(device)!r} is not usable here: {first}") from None
    return dev


def _proc_meminfo() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_limit() -> int | None:
    """Memory left under a cgroup v2 limit (containers, batch schedulers), if there is one."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
    except (OSError, ValueError):
        return None


def available_memory(device: torch.device) -> tuple[int, str] | None:
    """``(bytes, where)``: memory available for a new run on ``device`` (None when unknown). CPU: psutil
    if installed, else ``/proc/meminfo`` (MemAvailable) or ``os.sysconf``, capped by a cgroup limit;
    CUDA: ``torch.cuda.mem_get_info``."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"free on {device}"
    if device.type != "cpu":
        return None
    avail = None
    try:
        import psutil  # optional

        avail = int(psutil.virtual_memory().available)
    except ImportError:
        avail = _proc_meminfo()
        if avail is None:
            with contextlib.suppress(ValueError, OSError, AttributeError):
                avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    cgroup = _cgroup_limit()
    if cgroup is not None and (avail is None or cgroup < avail):
        return max(cgroup, 0), "available under the container's memory limit"
    return (avail, "available RAM") if avail is not None else None


@dataclass
class MemoryEstimate:
    """Estimated peak bytes of a training run, with its parts (for the message)."""

    parts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        top = sorted(self.parts.items(), key=lambda kv: -kv[1])[:3]
        return ", ".join(f"{name} {format_bytes(b)}" for name, b in top if b > 0)


def _mlp_activations(module: nn.Module, n: int, channels: int) -> tuple[int, int] | None:
    """(values kept for the backward pass, peak no-grad derivative channels) of a library MLP, in
    elements; None for other modules."""
    groups = getattr(module, "groups", None)
    weights = getattr(module, "weights", None)
    first = getattr(module, "first_weight", None)
    if groups is None or weights is None or first is None:
        return None
    widths = [first.shape[-1], *(w.shape[-1] for w in weights)]
    kept = 2 * groups * n * sum(widths)  # pre-activation and activation of every hidden layer
    chans = 3 * channels * groups * n * max(widths) if channels else 0  # channels, their update, temporaries
    return kept, chans


def estimate_peak_memory(modules: Sequence[nn.Module], num_modes: int, in_features: int, *, batch_size: int,
                         steps: int, optimizer: str, ema_decay: float | None, dtype: torch.dtype,
                         laplacian: bool, eval_batch_size: int | None = None) -> MemoryEstimate:
    """Estimated peak memory of :func:`~neuralsvd.fit` on these modules (a model, or the pair of an SVD).

    ``laplacian``: the operator pushes ``d + 1`` derivative channels (gradient and Laplacian) through the
    network. Modules other than the library's MLPs are counted by their outputs only (a lower bound).
    """
    size = torch.empty((), dtype=dtype, device="meta").element_size()
    n, L = batch_size, num_modes
    params = sum(p.numel() for m in modules for p in m.parameters())
    moments = _OPTIMIZER_STATES.get(optimizer, 2) + (ema_decay is not None)
    channels = in_features + 1 if laplacian else 0
    kept = chans = 0
    for m in modules:
        acts = _mlp_activations(m, n, channels)
        if acts is None:
            acts = (2 * n * L, 3 * channels * n * L)
        kept, chans = kept + acts[0], max(chans, acts[1])
    eval_n = max(eval_batch_size or max(batch_size, 1024), 1)
    eval_chans = 0
    for m in modules:
        acts = _mlp_activations(m, eval_n, channels)
        eval_chans = max(eval_chans, (acts[0] // 2 + acts[1]) if acts is not None else 3 * (channels + 1) * eval_n * L)
    step = kept + chans + n * (in_features + 1) * (channels + 1) + 6 * n * L
    return MemoryEstimate({
        # weights, gradients, optimizer moments and EMA, twice (the divergence guard's snapshot)
        "parameters and optimizer state": params * size * (2 + 2 * (1 + moments)),
        "activations": max(step, eval_chans) * size,
        "history": 3 * 8 * steps * (L + 1),
        "loss (L x L matrices)": 4 * 8 * L * L,
    })


def check_memory(estimate: MemoryEstimate, device: torch.device, held: int = 0) -> None:
    """Raise :class:`ResourceError` when ``estimate`` exceeds the memory available on ``device`` (plus
    ``held`` bytes the run already occupies there, e.g. its model). ``NEURALSVD_NO_MEMORY_CHECK=1`` skips."""
    if os.environ.get("NEURALSVD_NO_MEMORY_CHECK", "") not in ("", "0"):
        return
    avail = available_memory(device)
    if avail is None:
        return
    limit, where = avail[0] + held, avail[1]
    if estimate.total > limit:
        raise ResourceError(
            f"this run needs about {format_bytes(estimate.total)} of memory ({estimate.describe()}) but "
            f"{format_bytes(limit)} is {where}; lower --batch-size or --modes or the widths (model.hidden) "
            "(NEURALSVD_NO_MEMORY_CHECK=1 skips this estimate)")


def is_allocation_failure(err: BaseException) -> bool:
    """Whether ``err`` is the allocator giving up (CPU or GPU out of memory)."""
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return True
    if isinstance(err, RuntimeError):
        text = str(err).lower()
        return any(s in text for s in ("out of memory", "can't allocate memory", "cannot allocate memory",
                                       "failed to allocate", "allocation failed", "defaultcpuallocator"))
    return False


@contextlib.contextmanager
def allocation_failures_as(message: str | Callable[[], str]) -> Iterator[None]:
    """Turn an allocation failure inside the block into a one-line :class:`ResourceError` starting with
    ``message`` (or what ``message()`` returns then)."""
    try:
        yield
    except (MemoryError, RuntimeError) as err:
        if not is_allocation_failure(err):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        text = message() if callable(message) else message
        raise ResourceError(f"{text}: {first[:300]}") from None

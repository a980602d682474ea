"""Checkpoint files: atomic writes, safe reads (``weights_only``), and the process RNG states.

A checkpoint is a plain dict of tensors and Python scalars/containers, written to a temporary file,
fsynced and renamed over the old one (a crash leaves either the old or the new file, never half a file),
and read with ``torch.load(weights_only=True)``: no code from a file is ever executed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

__all__ = ["CheckpointError", "FolderLockedError", "atomic_write", "capture_rng", "load_checkpoint", "lock_folder",
           "restore_rng", "save_checkpoint"]

LOCK_NAME = ".neuralsvd.lock"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: unreadable (corrupted, truncated) or from a different model/run."""


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None], durable: bool = True) -> Path:
    """Write a file atomically: ``write(fh)`` into ``path.tmp``, flush (and fsync if ``durable``), rename
    over ``path``. On any failure (disk full, an interrupt) the temporary file is removed and ``path`` is
    left as it was; an ``OSError`` is re-raised with the path and that guarantee in its message."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, OSError):
            reason = err.strerror or str(err)
            raise OSError(err.errno, f"could not write {path}: {reason}; nothing was replaced (the previous "
                                     f"{path.name}, if any, is intact)") from err
        raise
    if durable:
        with contextlib.suppress(OSError):  # make the rename itself durable (not possible everywhere)
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    return path


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename); on failure the previous
    checkpoint is untouched and no temporary file is left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda fh: torch.save(state, fh))


class FolderLockedError(RuntimeError):
    """Another live process is writing to this output folder."""


@contextlib.contextmanager
def lock_folder(folder: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (its ``.neuralsvd.lock`` file) for the block: a second process
    asking for it gets :class:`FolderLockedError` naming the holder's pid. The lock is ``flock`` on an
    open file, so the operating system releases it when the holder exits or crashes (even ``kill -9``):
    a stale lock file never blocks. Where ``fcntl`` does not exist the block runs unlocked."""
    folder = Path(folder)
    path = folder / LOCK_NAME
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield path
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise FolderLockedError(f"{folder} is in use by another neuralsvd run (pid {holder}); wait for it "
                                    "to finish or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock; the file stays (unlinking it would race with a waiting run)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; raise :class:`CheckpointError` with the path
    and the reason if it is unreadable or lacks one of the ``required`` keys (``FileNotFoundError`` if
    it is missing)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - whatever a damaged file makes the unpickler raise
        raise CheckpointError(f"checkpoint {path} is unreadable (corrupted or truncated?): {err}. "
                              "Nothing was overwritten; delete it to start over.") from err
    missing = [k for k in required if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}: not written by this version of neuralsvd")
    return state


def capture_rng(generator: torch.Generator) -> dict[str, Any]:
    """States of the sampling generator and of torch's, numpy's and Python's global RNGs."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "generator": generator.get_state(),
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached": float(cached)},
        "python": random.getstate(),
    }


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    """Inverse of :func:`capture_rng`."""
    generator.set_state(state["generator"].cpu())
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate(state["python"])

"""Checkpoint files: atomic writes, safe reads (``weights_only``), and the process RNG states.

A checkpoint is a plain dict of tensors and Python scalars/containers, written to a temporary file,
fsynced and renamed over the old one (a crash leaves either the old or the new file, never half a file),
and read with ``torch.load(weights_only=True)``: no code from a file is ever executed.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "capture_rng", "restore_rng"]


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: unreadable (corrupted, truncated) or from a different model/run."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


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

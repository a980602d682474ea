"""Figures of trajectory problems: the learned Koopman singular functions and the implied timescales."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .plotting import _new_figure, _save
from .result import FitResult

__all__ = ["plot_koopman_functions", "plot_timescales"]


def plot_koopman_functions(result: FitResult, path: str | Path | None = None, resolution: int = 80) -> Any:
    """The learned left singular functions (the constant excluded), one panel per mode, over the first two
    coordinates (the others at their data mean) or along the first (``d = 1``), on the central 99% of the
    training frames; the title gives ``σ`` and the timescale. Returns the figure."""
    op = result.operator
    count = min(op.num_pairs, 50_000)
    frames = torch.cat(op.lagged_pairs(torch.arange(count), dtype=torch.float64), 0).numpy()  # (2 count, d)
    lo, hi = np.percentile(frames, 0.5, axis=0), np.percentile(frames, 99.5, axis=0)
    sigma = result.singular_values[1:].double().cpu().numpy()
    num = sigma.shape[0]
    with np.errstate(divide="ignore"):
        timescales = -op.lag / np.log(np.clip(sigma, 1e-300, 1 - 1e-16))
    cols = min(num, 4)
    rows = -(-num // cols)
    fig = _new_figure(3.2 * cols, 2.8 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    if op.dim == 1:
        x = np.linspace(lo[0], hi[0], 400)[:, None]
        values = result.left_functions(torch.from_numpy(x))[:, 1:].double().cpu().numpy()
    else:
        a, b = np.linspace(lo[0], hi[0], resolution), np.linspace(lo[1], hi[1], resolution)
        grid = np.tile(frames.mean(0), (resolution * resolution, 1))
        ga, gb = np.meshgrid(a, b, indexing="xy")
        grid[:, 0], grid[:, 1] = ga.ravel(), gb.ravel()
        values = result.left_functions(torch.from_numpy(grid))[:, 1:].double().cpu().numpy()
    for k, ax in enumerate(axes):
        if k >= num:
            ax.set_axis_off()
            continue
        title = f"mode {k + 1}: σ = {sigma[k]:.4f}, t = {timescales[k]:.3g}"
        if op.dim == 1:
            ax.plot(x[:, 0], values[:, k])
            ax.set_xlabel("x₀")
        else:
            image = values[:, k].reshape(resolution, resolution)
            limit = np.abs(image).max() or 1.0
            ax.imshow(image, origin="lower", extent=(lo[0], hi[0], lo[1], hi[1]), aspect="auto", cmap="RdBu_r",
                      vmin=-limit, vmax=limit)
            ax.set_xlabel("x₀")
            ax.set_ylabel("x₁")
        ax.set_title(title, fontsize=9)
    _save(fig, path)
    return fig


def plot_timescales(timescales: Sequence[float], reference: Sequence[float] | np.ndarray | None = None,
                    path: str | Path | None = None) -> Any:
    """Implied timescales (frames) per mode, learned and (if given) reference, on a log axis."""
    learned = np.asarray(timescales, dtype=np.float64)
    modes = np.arange(1, learned.shape[0] + 1)
    fig = _new_figure(4.5, 3.2)
    ax = fig.subplots()
    ax.semilogy(modes, learned, "o", label="learned")
    if reference is not None:
        ax.semilogy(modes, np.asarray(reference, dtype=np.float64), "x", markersize=9, label="reference")
    ax.set_xlabel("mode (beyond the constant)")
    ax.set_ylabel("implied timescale (frames)")
    ax.set_xticks(modes)
    ax.legend()
    _save(fig, path)
    return fig

"""Figures for operators defined by data, where :func:`neuralsvd.plotting.plot_eigenfunctions` (functions
on ``R`` or ``R²``) does not apply: functions on graph nodes, and two-view embeddings.

Same conventions as :mod:`neuralsvd.plotting`: Agg figures without pyplot, returned and optionally saved.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..operators.base import Operator
from ..training.evaluation import _chunked
from ..training.result import FitResult
from .spectra import (
    CHUNK,
    MAX_COLUMNS,
    _curve_panel,
    _float64_learned,
    _new_figure,
    _overlap_panel,
    _save,
    aligned_eigenfunctions,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_node_functions", "plot_two_view_embedding"]


def plot_node_functions(
    result: FitResult, operator: Operator | None = None, path: str | Path | None = None
) -> Figure:
    """Learned functions on the nodes of a finite operator (graphs, matrices) against the node index.

    One panel per mode: the learned function (aligned to the exact one inside degenerate blocks, see
    :func:`~neuralsvd.plotting.aligned_eigenfunctions`) and, dashed, the exact one when there is a closed
    form; a last panel shows the overlaps ``|⟨ψ̂_i|ψ̂_j⟩|`` of the normalized learned functions. Nodes are
    the points of the operator's :meth:`~neuralsvd.operators.Operator.quadrature`.
    """
    op = operator if operator is not None else result.operator
    num_modes = result.eigenvalues.shape[0]
    learned, quad = _float64_learned(result, op)
    values = _chunked(learned, quad.points, CHUNK).double()  # (N, L)
    gram = quad.inner(values, values)  # (L, L)
    try:
        exact_values = op.exact_eigenvalues(num_modes).double().tolist()
        exact = op.exact_eigenfunctions(quad.points, num_modes).double().cpu().numpy()  # (N, L)
        shown = aligned_eigenfunctions(result, op, quad.points).cpu().numpy()
    except NotImplementedError:
        exact_values, exact = None, None
        shown = (values * gram.diagonal().rsqrt()).cpu().numpy()
    nodes = torch.arange(values.shape[0]).numpy()
    ncols = min(num_modes, MAX_COLUMNS)
    rows = math.ceil(num_modes / ncols)
    fig = _new_figure(2.3 * ncols + 2.9, 2.5 * rows)
    gs = fig.add_gridspec(rows, ncols + 1, width_ratios=[1.0] * ncols + [1.5])
    for mode in range(num_modes):
        row, col = divmod(mode, ncols)
        title = f"mode {mode}: {result.eigenvalues[mode].item():.4g}"
        if exact_values is not None:
            title += f"\nexact {exact_values[mode]:.4g}"
        _curve_panel(
            fig.add_subplot(gs[row, col]),
            nodes,
            shown[:, mode],
            None if exact is None else exact[:, mode],
            title,
            legend=mode == 0,
        )
    _overlap_panel(fig, fig.add_subplot(gs[:, ncols]), gram)
    fig.suptitle(f"{type(op).__name__}: learned functions on the nodes (x axis: node index)", fontsize=9)
    _save(fig, path)
    return fig


def plot_two_view_embedding(
    result: FitResult, x: Tensor, y: Tensor, labels: Tensor, path: str | Path | None = None
) -> Figure:
    """The first two non-constant singular functions of a paired-sample fit on held-out pairs.

    Panels: ``(φ_1(x), φ_2(x))`` of the ``x`` view and ``(ψ_1(y), ψ_2(y))`` of the ``y`` view, coloured by
    ``labels``, and the learned singular values. Shapes: ``x (n, dx)``, ``y (n, dy)``, ``labels (n,)``.
    """
    if result.singular_values.shape[0] < 3:
        raise ValueError("plot_two_view_embedding needs the constant and at least two more modes")
    left = result.left_functions(x)[:, 1:3].double().cpu().numpy()  # (n, 2)
    right = result.right_functions(y)[:, 1:3].double().cpu().numpy()
    colors = torch.as_tensor(labels).cpu().numpy()
    fig = _new_figure(13.5, 4.2)
    axes = fig.subplots(1, 3)
    for ax, points, name in ((axes[0], left, "φ"), (axes[1], right, "ψ")):
        scatter = ax.scatter(points[:, 0], points[:, 1], c=colors, cmap="tab10", s=6, vmin=-0.5, vmax=9.5)
        ax.set(xlabel=f"{name}_1", ylabel=f"{name}_2", title=f"{'x' if name == 'φ' else 'y'} view (held out)")
    fig.colorbar(scatter, ax=axes[1], label="label")
    sigma = result.singular_values.double().cpu().numpy()
    axes[2].bar(range(sigma.shape[0]), sigma, color="C0")
    axes[2].set(
        xlabel="mode", ylabel="σ", title="singular values (mode 0: the pinned constant)", ylim=(0, 1.05)
    )
    for ax in axes:
        ax.title.set_fontsize(9)
    _save(fig, path)
    return fig

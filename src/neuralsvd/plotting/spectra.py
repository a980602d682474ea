"""Figures of a fit: learned vs true eigenfunctions, training curves and method comparisons.

matplotlib is imported lazily, inside the functions. Figures are built on the Agg canvas directly
(:class:`matplotlib.figure.Figure`, not pyplot), so nothing is registered with pyplot's figure manager:
a figure is freed with its last reference, repeated calls do not leak, and no screen is needed.

Learned eigenfunctions are only defined up to a rotation inside each degenerate eigenspace (and a sign);
before they are drawn next to the true ones they are aligned to them block by block by orthogonal
Procrustes (:func:`aligned_eigenfunctions`), with inner products from the operator's quadrature.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ..numerics import metrics
from ..numerics.quadrature import Quadrature
from ..operators.base import Operator
from ..training.evaluation import _chunked, _float64_copy, inner_products
from ..training.result import FitResult

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "COMPARISON_METRICS",
    "aligned_eigenfunctions",
    "plot_comparison",
    "plot_eigenfunctions",
    "plot_training_curve",
]

#: resolution of saved PNGs
DPI = 110
#: the default plot extent holds this fraction of the highest mode's mass
MASS_FRACTION = 0.999
#: at most this many modes per row of :func:`plot_eigenfunctions`; more wrap onto further rows
MAX_COLUMNS = 8
#: fraction of the steps averaged by the moving average of :func:`plot_training_curve`
SMOOTHING_FRACTION = 0.01
#: the metrics (keys of :func:`neuralsvd.evaluate`'s dict) shown by :func:`plot_comparison`
COMPARISON_METRICS = ("mean_eigenvalue_relative_error", "angle_distance", "subspace_distance_avg",
                      "subspace_distance_all", "orthogonality_error")
CHUNK = 8192
DIVERGING_CMAP = "RdBu_r"

Function = Callable[[Tensor], Tensor]


# --- figure plumbing ----------------------------------------------------------------------------------

def _new_figure(width: float, height: float) -> Figure:
    """A pyplot-free figure on the Agg canvas (freed with its last reference)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path | None) -> None:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI, format="png")


def _numpy(values: Any) -> np.ndarray:
    """Tensor, array or nested list -> float64 numpy array."""
    return torch.as_tensor(values).detach().cpu().double().numpy()


# --- learned functions, inner products and alignment ---------------------------------------------------

def _float64_learned(result: FitResult, op: Operator) -> tuple[Function, Quadrature]:
    """The learned eigenfunctions of a float64 copy of the model, and ``op``'s quadrature on its device
    (float64 weights; points keep their dtype, e.g. indices for finite operators)."""
    r64 = _float64_copy(result)
    module = r64.decomposition.primary(r64.model)
    param = next(module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    quad = op.quadrature()
    return r64.eigenfunctions, Quadrature(quad.points.to(device), quad.weights.to(device, torch.float64))


def _inv_norms(gram: Tensor) -> Tensor:
    """``1 / ‖ψ̂_l‖`` from the gram diagonal, ``(L,)``."""
    return gram.diagonal().clamp_min(torch.finfo(gram.dtype).tiny).rsqrt()


def _align(values: Tensor, gram: Tensor, cross: Tensor, blocks: list[list[int]]) -> Tensor:
    """Normalize ``values (n, L)`` of the learned functions and rotate each block onto the true basis."""
    inv = _inv_norms(gram)  # (L,)
    out = torch.empty_like(values)  # (n, L)
    for block in blocks:
        rotation, _ = metrics.procrustes_alignment(gram, cross, block)  # (k, k)
        out[:, block] = (values[:, block] * inv[block]) @ rotation
    return out


def _alignment(learned: Function, op: Operator, quad: Quadrature, num_modes: int
               ) -> tuple[Tensor, Tensor, list[list[int]]]:
    """``(gram (L, L), cross (L, L), blocks)`` on ``quad``, blocks of equal exact eigenvalue."""
    gram, cross, _ = inner_products(learned, op.exact_eigenfunctions, quad, num_modes, CHUNK)
    return gram, cross, metrics.degenerate_blocks(op.exact_eigenvalues(num_modes))


def aligned_eigenfunctions(result: FitResult, operator: Operator | None, x: Tensor) -> Tensor:
    """Learned eigenfunctions at ``x (n, d)``, normalized and aligned to the true ones, ``(n, L)`` float64.

    Inside each block of equal exact eigenvalue the learned functions are rotated by the orthogonal
    Procrustes solution (:func:`neuralsvd.metrics.procrustes_alignment`) that best matches them to the
    true eigenfunctions, with inner products from ``operator.quadrature()``; the model is evaluated in
    float64 on a copy. ``operator`` defaults to ``result.operator`` and needs closed-form eigenfunctions.
    """
    op = operator if operator is not None else result.operator
    num_modes = result.eigenvalues.shape[0]
    learned, quad = _float64_learned(result, op)
    gram, cross, blocks = _alignment(learned, op, quad, num_modes)
    x = x.to(quad.points.device)
    values = _chunked(learned, x.double() if x.is_floating_point() else x, CHUNK).double()  # (n, L)
    return _align(values, gram, cross, blocks)


def _mass_extent(points: Tensor, weights: Tensor, values: Tensor) -> float:
    """Half-width ``R`` of the smallest centred box ``[-R, R]^d`` holding :data:`MASS_FRACTION` of
    ``∫ values²`` (quadrature ``points (N, d)``, ``weights (N,)``, ``values (N,)``), rounded up to two
    significant digits."""
    radius = points.abs().amax(1)  # (N,) sup-norm: the box is a ball of this norm
    order = torch.argsort(radius)
    mass = (weights * values * values)[order].cumsum(0)  # (N,)
    index = int(torch.searchsorted(mass, MASS_FRACTION * mass[-1]).clamp(max=radius.shape[0] - 1))
    r = float(radius[order][index])
    if r <= 0:
        raise ValueError("cannot choose a plot extent: the highest mode has no mass; pass extent=")
    exponent = math.floor(math.log10(r)) - 1  # of the second significant digit
    if exponent >= 0:
        return float(math.ceil(r / 10**exponent) * 10**exponent)
    return math.ceil(r * 10**-exponent) / 10**-exponent  # exact powers of ten: 2.9, not 2.9000000000000004


def _spatial_dim(result: FitResult, op: Operator) -> int:
    module = result.decomposition.primary(result.model)
    dim = getattr(op, "dim", None) or getattr(module, "in_features", None)
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"plot_eigenfunctions draws functions on R^d; {type(op).__name__} has no input "
                         f"dimension (got {dim!r})")
    return dim


def _plane_grid(axis: Tensor, dim: int) -> Tensor:
    """The ``(r², dim)`` points of the ``x_0``–``x_1`` plane through the origin on ``axis (r,)`` squared
    (row index ``x_1``), other coordinates 0."""
    gx, gy = torch.meshgrid(axis, axis, indexing="xy")  # (r, r): row index is y
    plane = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)  # (r², 2)
    return torch.cat([plane, plane.new_zeros(plane.shape[0], dim - 2)], 1)


# --- eigenfunction figure ---------------------------------------------------------------------------------

def plot_eigenfunctions(result: FitResult, operator: Operator | None = None, path: str | Path | None = None,
                        extent: float | None = None, resolution: int = 121) -> Figure:
    """Learned eigenfunctions next to the true ones, and the overlaps of the learned functions.

    2D problems: a row of images of the learned ``ψ̂_l`` on ``[-extent, extent]²`` (aligned to the truth
    inside degenerate blocks, see :func:`aligned_eigenfunctions`) above a row of the true ``ψ_l``, with a
    diverging colormap and symmetric limits shared per mode; modes beyond :data:`MAX_COLUMNS` wrap onto
    further rows. Problems on ``R^d``, ``d > 2``: the same images on the ``x_0``–``x_1`` plane through the
    origin (other coordinates 0; alignment and norms still from the whole space), with one color limit
    for all modes, so that modes vanishing on that plane (e.g. ``x_5 ψ_0``) show as blank rather than as
    magnified noise. 1D problems: one panel per mode with the learned and true curves. A final panel shows
    ``|⟨ψ̂_i|ψ̂_j⟩|`` of the normalized, unaligned learned functions. Without a closed form only the
    learned functions (normalized, unaligned) and the overlap panel are drawn.

    Args:
        result: a fit of a self-adjoint operator on ``R^d``.
        operator: defaults to ``result.operator``; needs a :meth:`~neuralsvd.operators.Operator.quadrature`.
        path: save the figure there as PNG (``DPI`` dots per inch).
        extent: half-width of the plotted box; default: the box (in ``x_0, x_1``) holding 99.9% of ``|ψ|²``
            of the highest mode (the exact one when there is a closed form).
        resolution: grid points per axis.

    Returns the :class:`matplotlib.figure.Figure` (not registered with pyplot).
    """
    op = operator if operator is not None else result.operator
    dim = _spatial_dim(result, op)
    num_modes = result.eigenvalues.shape[0]
    learned, quad = _float64_learned(result, op)
    try:
        exact_values = op.exact_eigenvalues(num_modes).double()  # (L,)
        highest = op.exact_eigenfunctions(quad.points, num_modes)[:, -1].double()  # (N,)
    except NotImplementedError:
        exact_values = None
    if exact_values is not None:
        gram, cross, blocks = _alignment(learned, op, quad, num_modes)
    else:
        learned_q = _chunked(learned, quad.points, CHUNK).double()  # (N, L)
        gram = quad.inner(learned_q, learned_q)
        highest = learned_q[:, -1]
    if extent is None:
        extent = _mass_extent(quad.points[:, :2], quad.weights, highest)

    axis = torch.linspace(-extent, extent, resolution, dtype=torch.float64, device=quad.points.device)  # (r,)
    grid = axis.unsqueeze(1) if dim == 1 else _plane_grid(axis, dim)  # (r, 1) or (r², d)
    values = _chunked(learned, grid, CHUNK).double()  # (n, L)
    if exact_values is not None:
        learned_grid = _align(values, gram, cross, blocks).cpu().numpy()  # (n, L)
        exact_grid = op.exact_eigenfunctions(grid, num_modes).double().cpu().numpy()  # (n, L)
    else:
        learned_grid = (values * _inv_norms(gram)).cpu().numpy()
        exact_grid = None

    ncols = min(num_modes, MAX_COLUMNS)
    groups = math.ceil(num_modes / ncols)
    rows_per_group = 2 if dim >= 2 and exact_grid is not None else 1
    panel = 2.3 if dim == 1 else 1.9
    common = None  # d > 2: one color limit for every mode of the slice
    if dim > 2:
        common = max(float(np.abs(learned_grid).max()),
                     0.0 if exact_grid is None else float(np.abs(exact_grid).max())) or 1.0
    fig = _new_figure(panel * ncols + 2.9, (panel + 0.5) * rows_per_group * groups)
    gs = fig.add_gridspec(rows_per_group * groups, ncols + 1, width_ratios=[1.0] * ncols + [1.5])
    estimates = result.eigenvalues.double().tolist()
    for mode in range(num_modes):
        group, col = divmod(mode, ncols)
        title = f"mode {mode}: {estimates[mode]:.4g}"
        if exact_values is not None:
            title += f"\nexact {exact_values[mode].item():.4g}"
        ax = fig.add_subplot(gs[group * rows_per_group, col])
        if dim == 1:
            _curve_panel(ax, axis.cpu().numpy(), learned_grid[:, mode],
                         None if exact_grid is None else exact_grid[:, mode], title, legend=mode == 0)
            continue
        shape = (resolution, resolution)
        learned_image = learned_grid[:, mode].reshape(shape)  # (r, r)
        exact_image = None if exact_grid is None else exact_grid[:, mode].reshape(shape)  # (r, r)
        limit = common or max(float(np.abs(learned_image).max()),
                              0.0 if exact_image is None else float(np.abs(exact_image).max())) or 1.0
        _image_panel(ax, learned_image, extent, limit, title, "learned" if col == 0 else None)
        if exact_image is not None:
            _image_panel(fig.add_subplot(gs[group * rows_per_group + 1, col]), exact_image, extent, limit,
                         f"exact ψ_{mode}: {exact_values[mode].item():.4g}", "exact" if col == 0 else None)
    _overlap_panel(fig, fig.add_subplot(gs[:rows_per_group, ncols]), gram)
    kind = "aligned to the exact ones in degenerate blocks" if exact_values is not None else "no closed form"
    where = f"\nslice x0–x1 through the origin of R^{dim} (other coordinates 0)" if dim > 2 else ""
    fig.suptitle(f"{type(op).__name__}: learned eigenfunctions ({kind}); titles: learned / exact eigenvalue"
                 + where, fontsize=9)
    _save(fig, path)
    return fig


def _image_panel(ax: Axes, image: np.ndarray, extent: float, limit: float, title: str,
                 ylabel: str | None) -> None:
    """One 2D mode ``image (r, r)`` (row index y) on ``[-extent, extent]²``, colors in ``±limit``."""
    ax.imshow(image, origin="lower", extent=(-extent, extent, -extent, extent), cmap=DIVERGING_CMAP,
              vmin=-limit, vmax=limit, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.tick_params(labelsize=6)
    if ylabel is not None:
        ax.set_ylabel(ylabel)


def _curve_panel(ax: Axes, x: np.ndarray, learned: np.ndarray, exact: np.ndarray | None, title: str,
                 legend: bool) -> None:
    """One 1D mode: learned ``(n,)`` (solid) and exact ``(n,)`` (dashed) on ``x (n,)``."""
    if exact is not None:
        ax.plot(x, exact, "k--", lw=1.2, label="exact")
    ax.plot(x, learned, color="C0", lw=1.2, label="learned")
    ax.axhline(0.0, color="0.8", lw=0.5)
    ax.set_title(title, fontsize=8)
    ax.tick_params(labelsize=6)
    if legend:
        ax.legend(fontsize=7)


def _overlap_panel(fig: Figure, ax: Axes, gram: Tensor) -> None:
    """Heatmap of ``|C|`` with ``C`` the normalized ``gram (L, L)``."""
    inv = _inv_norms(gram)
    overlap = (inv[:, None] * gram * inv[None, :]).abs().cpu().numpy()  # (L, L)
    num_modes = overlap.shape[0]
    im = ax.imshow(overlap, vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
    if num_modes <= 16:
        ax.set_xticks(range(num_modes))
        ax.set_yticks(range(num_modes))
    ax.tick_params(labelsize=6)
    ax.set_title("|⟨ψ̂_i|ψ̂_j⟩| (normalized, unaligned)", fontsize=8)
    fig.colorbar(im, ax=ax, shrink=0.6)


# --- training curve ---------------------------------------------------------------------------------------

def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` rows of ``values (S, ...)`` -> ``(S - window + 1, ...)``; NaN where
    the window holds a non-finite value."""
    finite = np.isfinite(values)
    zero = np.zeros((1,) + values.shape[1:])
    total = np.concatenate([zero, np.cumsum(np.where(finite, values, 0.0), 0)])  # (S + 1, ...)
    count = np.concatenate([zero, np.cumsum(finite, 0)])
    sums, counts = total[window:] - total[:-window], count[window:] - count[:-window]
    return np.where(counts == window, sums / window, np.nan)


def plot_training_curve(history: Mapping[str, Any], exact_eigenvalues: Sequence[float] | Tensor | None = None,
                        path: str | Path | None = None) -> Figure:
    """Eigenvalue estimates, their relative errors and the loss against the training step.

    Per mode, the raw minibatch estimates are drawn faintly and a trailing moving average over
    :data:`SMOOTHING_FRACTION` of the steps on top; exact values are dashed horizontal lines.

    Args:
        history: :attr:`FitResult.history`: ``"step" (S,)``, ``"loss" (S,)`` and ``"eigenvalues" (S, L)``
            (tensors, arrays or lists), columns in mode order.
        exact_eigenvalues: ``(L,)`` in mode order; adds a panel of ``|λ̂ - λ| / |λ|`` (log scale).
        path: save the figure there as PNG.

    Returns the figure: panels eigenvalues, [relative error,] loss.
    """
    steps = _numpy(history["step"])  # (S,)
    loss = _numpy(history["loss"])  # (S,)
    estimates = _numpy(history["eigenvalues"]).reshape(steps.shape[0], -1)  # (S, L)
    num_steps, num_modes = estimates.shape
    if num_steps == 0:
        raise ValueError("history is empty: nothing to plot")
    exact = None if exact_eigenvalues is None else _numpy(exact_eigenvalues).reshape(-1)  # (L,)
    if exact is not None and exact.shape[0] != num_modes:
        raise ValueError(f"exact_eigenvalues has {exact.shape[0]} values, the history {num_modes} modes")

    window = max(1, round(SMOOTHING_FRACTION * num_steps))
    smooth_steps = steps[window - 1:]  # (S',)
    smooth = _moving_average(estimates, window)  # (S', L)
    panels = 3 if exact is not None else 2
    fig = _new_figure(4.6 * panels, 3.8)
    axes = fig.subplots(1, panels)
    colors = [f"C{i % 10}" for i in range(num_modes)]
    ax = axes[0]
    for mode in range(num_modes):
        ax.plot(steps, estimates[:, mode], color=colors[mode], alpha=0.2, lw=0.6)
        ax.plot(smooth_steps, smooth[:, mode], color=colors[mode], lw=1.3, label=f"mode {mode}")
        if exact is not None:
            ax.axhline(exact[mode], color=colors[mode], ls="--", lw=0.9)
    dashed = ", dashed: exact" if exact is not None else ""
    ax.set(xlabel="step", ylabel="eigenvalue estimate",
           title=f"eigenvalues (moving average of {window} steps{dashed})")
    ax.legend(fontsize=7, ncol=max(1, math.ceil(num_modes / 8)))
    if exact is not None:
        ax = axes[1]
        with np.errstate(divide="ignore", invalid="ignore"):
            relative = np.abs(smooth - exact) / np.abs(exact)  # (S', L)
        relative[~np.isfinite(relative) | (relative <= 0)] = np.nan
        for mode in range(num_modes):
            ax.plot(smooth_steps, relative[:, mode], color=colors[mode], lw=1.3)
        ax.set_yscale("log")
        ax.set(xlabel="step", ylabel="|λ̂ - λ| / |λ|", title="relative eigenvalue error (moving average)")
    ax = axes[-1]
    ax.plot(steps, loss, color="0.5", alpha=0.3, lw=0.6)
    smooth_loss = _moving_average(loss, window)  # (S',)
    ax.plot(smooth_steps, smooth_loss, color="k", lw=1.3)
    typical = np.nanmedian(np.abs(smooth_loss)) if np.isfinite(smooth_loss).any() else 0.0
    if typical > 0:  # symlog: early transients of large loss do not flatten the rest of the curve
        ax.set_yscale("symlog", linthresh=10.0 ** math.floor(math.log10(typical)))
    ax.set(xlabel="step", ylabel="loss", title="loss (symlog)" if typical > 0 else "loss")
    for ax in axes:
        ax.title.set_fontsize(9)
    _save(fig, path)
    return fig


# --- method comparison ------------------------------------------------------------------------------------

def _metric_values(records: Sequence[Mapping[str, Any]], method: str, metric: str) -> list[float]:
    """The finite values of ``metric`` over the records of ``method`` (missing or None: skipped)."""
    values = [r.get(metric) for r in records if str(r["method"]) == method]
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def plot_comparison(records: Sequence[Mapping[str, Any]], path: str | Path | None = None) -> Figure:
    """One log-scale bar panel per metric of :data:`COMPARISON_METRICS`, one bar per method.

    Args:
        records: dicts with a ``"method"`` name and the metrics (floats, or None where not available);
            records with the same method are averaged, with min-max error bars when there are several.
        path: save the figure there as PNG.

    Bars without any value are marked "n/a" (non-positive means, which a log axis cannot show, by their
    value).
    """
    if not records:
        raise ValueError("plot_comparison needs at least one record")
    methods: list[str] = []
    for record in records:
        if "method" not in record:
            raise ValueError(f"every record needs a 'method' key; got keys {sorted(record)}")
        if str(record["method"]) not in methods:
            methods.append(str(record["method"]))

    fig = _new_figure(max(3.0, 0.55 * len(methods) + 1.4) * len(COMPARISON_METRICS), 3.8)
    axes = fig.subplots(1, len(COMPARISON_METRICS))
    positions = np.arange(len(methods))  # (M,)
    colors = [f"C{i % 10}" for i in range(len(methods))]
    for ax, metric in zip(axes, COMPARISON_METRICS):
        per_method = [_metric_values(records, m, metric) for m in methods]
        means = np.array([np.mean(v) if v else np.nan for v in per_method])  # (M,)
        shown = means > 0  # (M,) a log axis shows positive values only
        if shown.any():
            ax.set_yscale("log")
            ax.bar(positions[shown], means[shown], color=[c for c, s in zip(colors, shown) if s])
            spread = [i for i, v in enumerate(per_method) if len(v) > 1 and shown[i]]
            if spread:
                low = [means[i] - min(per_method[i]) for i in spread]
                high = [max(per_method[i]) - means[i] for i in spread]
                ax.errorbar(positions[spread], means[spread], yerr=[low, high], fmt="none", ecolor="k",
                            capsize=3)
            for i in np.flatnonzero(shown):
                top = max(per_method[i])
                ax.annotate(f"{means[i]:.2g}", (positions[i], top), xytext=(0, 2), textcoords="offset points",
                            ha="center", va="bottom", fontsize=7)
            ax.margins(y=0.15)
        else:
            ax.set_yticks([])
        for i in np.flatnonzero(~shown):
            ax.text(positions[i], 0.02, "n/a" if np.isnan(means[i]) else f"{means[i]:.2g}",
                    transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=8, color="0.4")
        tilted = len(methods) > 2
        ax.set_xticks(positions, methods, rotation=30 if tilted else 0, ha="right" if tilted else "center",
                      fontsize=8)
        ax.set_xlim(-0.6, len(methods) - 0.4)
        ax.set_title(metric.replace("_", " "), fontsize=9)
    fig.suptitle("comparison of methods (mean over runs, min-max bars)", fontsize=10)
    _save(fig, path)
    return fig

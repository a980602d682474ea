"""Figures of :mod:`neuralsvd.plotting`: files written, panel counts, and the alignment they rely on."""

from __future__ import annotations

import gc
import math
import weakref

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import neuralsvd as nsvd
from neuralsvd.plotting import spectra as plotting
from neuralsvd.numerics.quadrature import Quadrature, box
from neuralsvd.operators import HarmonicOscillator, Hydrogen2D, Operator, Schrodinger

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def result2d() -> nsvd.FitResult:
    return nsvd.fit(nsvd.models.ParallelMLP(2, 3, hidden=(16, 16)), HarmonicOscillator(2), nsvd.NestedLoRA(3),
                    steps=20, batch_size=64, progress=False, eval_batches=2, eval_batch_size=128)


def _image_axes(fig) -> list:
    return [ax for ax in fig.axes if ax.images]


def _assert_png(path) -> None:
    data = path.read_bytes()
    assert len(data) > 1000 and data.startswith(PNG_MAGIC)


def test_eigenfunctions_2d_writes_png_with_learned_exact_and_overlap_panels(result2d, tmp_path):
    path = tmp_path / "sub" / "eigenfunctions.png"
    fig = plotting.plot_eigenfunctions(result2d, path=path, resolution=41)
    _assert_png(path)
    assert len(_image_axes(fig)) == 2 * 3 + 1  # learned and exact per mode, plus the overlap heatmap
    learned, exact = _image_axes(fig)[0].images[0], _image_axes(fig)[1].images[0]
    assert learned.get_clim() == exact.get_clim()  # shared symmetric limits per mode
    assert -learned.get_clim()[0] == learned.get_clim()[1] > 0
    assert learned.get_extent() == [-2.9, 2.9, -2.9, 2.9]  # 99.9% of |ψ_2|² lies in [-2.89, 2.89]²
    overlap = _image_axes(fig)[-1].images[0].get_array()
    assert overlap.shape == (3, 3) and np.allclose(overlap.diagonal(), 1.0)


class _NoClosedForm(Schrodinger):
    """A Schrödinger operator without closed forms, with a cheap quadrature (the default is 2¹⁸ points)."""

    def quadrature(self) -> Quadrature:
        return box([8.0] * 2, 4, 10)


def test_eigenfunctions_without_closed_form_draws_learned_only(result2d, tmp_path):
    op = result2d.operator
    generic = _NoClosedForm(op.potential, 2, shift=op.shift, sampler=op.sampler)  # same physics
    path = tmp_path / "generic.png"
    fig = plotting.plot_eigenfunctions(result2d, generic, path=path, extent=3.0, resolution=31)
    _assert_png(path)
    assert len(_image_axes(fig)) == 3 + 1


def test_eigenfunctions_1d_draws_curves(tmp_path):
    result = nsvd.fit(nsvd.models.ParallelMLP(1, 2, hidden=(8,)), HarmonicOscillator(1), nsvd.NestedLoRA(2),
                      steps=5, batch_size=32, progress=False, eval_batches=1, eval_batch_size=64)
    path = tmp_path / "curves.png"
    fig = plotting.plot_eigenfunctions(result, path=path, resolution=50)
    _assert_png(path)
    assert len(_image_axes(fig)) == 1  # only the overlap heatmap
    curves = [ax for ax in fig.axes if len(ax.lines) >= 2 and not ax.images]
    assert len(curves) == 2


def test_figures_are_not_retained(result2d):
    ref = weakref.ref(plotting.plot_training_curve(result2d.history))
    gc.collect()
    assert ref() is None


class _RotatedExact(nn.Module):
    """A "model" whose learned eigenfunctions are the exact ones rotated by ``q (L, L)``: outputs ``ψ q``
    over the operator's map to ``ψ`` (``sqrt(p)``, times the cusp factor at a charge), so that
    ``FitResult.eigenfunctions = ψ q``."""

    def __init__(self, op: Schrodinger, q: Tensor):
        super().__init__()
        self.op = op
        self.register_buffer("q", q)

    def forward(self, x: Tensor) -> Tensor:
        psi = self.op.exact_eigenfunctions(x, self.q.shape[0])  # (n, L)
        return (psi @ self.q.to(psi)) / self.op.eigenfunctions_from_model(torch.ones_like(psi[:, :1]), x)


def _block_rotation(blocks: list[list[int]], generator: torch.Generator) -> Tensor:
    """Block-diagonal random orthogonal matrix (random rotations and reflections inside each block)."""
    size = sum(len(b) for b in blocks)
    q = torch.zeros(size, size, dtype=torch.float64)
    for b in blocks:
        qb, _ = torch.linalg.qr(torch.randn(len(b), len(b), dtype=torch.float64, generator=generator))
        q[b[0]: b[-1] + 1, b[0]: b[-1] + 1] = qb
    return q


@pytest.mark.parametrize(("op", "num_modes", "extent"),
                         [(HarmonicOscillator(2), 6, 4.0), (Hydrogen2D(), 9, 40.0)])
def test_alignment_recovers_rotated_exact_eigenfunctions(op: Operator, num_modes: int, extent: float):
    blocks = nsvd.metrics.degenerate_blocks(op.exact_eigenvalues(num_modes))
    assert max(len(b) for b in blocks) >= 2
    q = _block_rotation(blocks, torch.Generator().manual_seed(0))
    result = nsvd.FitResult(
        model=_RotatedExact(op, q), operator=op, eigenvalues=op.exact_eigenvalues(num_modes),
        learned_eigenvalues=torch.zeros(num_modes), order=torch.arange(num_modes),
        norms=torch.ones(num_modes, dtype=torch.float64), history={}, steps=0, wall_seconds=0.0,
        steps_per_second=math.nan,
    )
    axis = torch.linspace(-extent, extent, 33, dtype=torch.float64)
    gx, gy = torch.meshgrid(axis, axis, indexing="xy")
    grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)  # (n, 2)
    exact = op.exact_eigenfunctions(grid, num_modes)  # (n, L)
    assert (result.eigenfunctions(grid) - exact).abs().max() > 0.01  # the rotation is not trivial
    aligned = plotting.aligned_eigenfunctions(result, op, grid)
    assert aligned.shape == (grid.shape[0], num_modes)
    assert (aligned - exact).abs().max() < 1e-8


def test_training_curve_with_and_without_exact_values(result2d, tmp_path):
    with_exact = tmp_path / "train.png"
    fig = plotting.plot_training_curve(result2d.history, result2d.operator.exact_eigenvalues(3), with_exact)
    _assert_png(with_exact)
    assert len(fig.axes) == 3
    assert fig.axes[1].get_yscale() == "log"
    without = tmp_path / "train_plain.png"
    fig = plotting.plot_training_curve(result2d.history, path=without)
    _assert_png(without)
    assert len(fig.axes) == 2
    with pytest.raises(ValueError, match="exact_eigenvalues has 2 values"):
        plotting.plot_training_curve(result2d.history, [1.0, 2.0])


def test_moving_average_is_a_trailing_mean_with_nan_gaps():
    values = torch.tensor([1.0, 2.0, 3.0, float("nan"), 5.0, 6.0, 7.0]).numpy()
    smooth = plotting._moving_average(values, 2)
    assert smooth.tolist()[:2] == [1.5, 2.5]
    assert all(math.isnan(v) for v in smooth[2:4]) and smooth.tolist()[4:] == [5.5, 6.5]


def test_comparison_with_missing_metric_and_repeated_methods(tmp_path):
    def record(method: str, scale: float, angle: float | None) -> dict:
        return {"method": method, "mean_eigenvalue_relative_error": 1e-3 * scale, "angle_distance": angle,
                "subspace_distance_avg": 1e-4 * scale, "subspace_distance_all": 2e-4 * scale,
                "orthogonality_error": 1e-6 * scale}

    records = [record("nestedlora", 1.0, 1e-3), record("nestedlora", 3.0, 2e-3), record("spin", 10.0, None)]
    path = tmp_path / "comparison.png"
    fig = plotting.plot_comparison(records, path)
    _assert_png(path)
    assert len(fig.axes) == len(plotting.COMPARISON_METRICS) == 5
    angle = fig.axes[plotting.COMPARISON_METRICS.index("angle_distance")]
    assert angle.get_yscale() == "log"
    assert len(angle.patches) == 1 and "n/a" in [t.get_text() for t in angle.texts]
    eig = fig.axes[0]
    assert [p.get_height() for p in eig.patches] == pytest.approx([2e-3, 1e-2])  # means over runs
    with pytest.raises(ValueError, match="method"):
        plotting.plot_comparison([{"angle_distance": 0.1}])


@pytest.mark.parametrize("dim", [3, 10])
def test_eigenfunctions_above_2d_draw_aligned_slices_through_the_origin(dim, tmp_path):
    """d > 2: images on the x0–x1 plane; with exact functions rotated inside the (d-fold) first shell
    the aligned learned images equal the exact ones, and the shell states along x_2.. vanish there."""
    op = HarmonicOscillator(dim)
    num_modes = dim + 1  # ground state and the first shell
    blocks = nsvd.metrics.degenerate_blocks(op.exact_eigenvalues(num_modes))
    assert [len(b) for b in blocks] == [1, dim]
    result = nsvd.FitResult(
        model=_RotatedExact(op, _block_rotation(blocks, torch.Generator().manual_seed(1))), operator=op,
        eigenvalues=op.exact_eigenvalues(num_modes), learned_eigenvalues=torch.zeros(num_modes),
        order=torch.arange(num_modes), norms=torch.ones(num_modes, dtype=torch.float64), history={}, steps=0,
        wall_seconds=0.0, steps_per_second=math.nan,
    )
    path = tmp_path / "slices.png"
    fig = plotting.plot_eigenfunctions(result, path=path, resolution=21)
    _assert_png(path)
    images = _image_axes(fig)
    assert len(images) == 2 * num_modes + 1
    learned = [ax.images[0].get_array() for ax in images[:-1:2]]  # the wrapped rows alternate learned/exact
    exact = [ax.images[0].get_array() for ax in images[1:-1:2]]
    peak = max(float(np.abs(e).max()) for e in exact)
    for mode in range(num_modes):
        # the rule's error (QMC in d = 10) enters through the alignment only: ~1e-3 of the peak
        assert np.abs(learned[mode] - exact[mode]).max() < 2e-2 * peak, mode
    # modes in order: ψ_0, then x_{d-1} ψ_0, ..., x_0 ψ_0 (ties in lexicographic multi-index order)
    assert [float(np.abs(e).max()) > 0.1 * peak for e in exact] == [True] + [False] * (dim - 2) + [True, True]
    assert len({ax.images[0].get_clim() for ax in images[:-1]}) == 1  # one color limit for every mode
    assert "slice x0–x1" in fig.get_suptitle()


class _TiltedExact(nn.Module):
    """Ratio-form model of the exact states ``0..L-1`` with mode 1 tilted by ``θ`` towards state ``L``."""

    def __init__(self, op: Schrodinger, num_modes: int, theta: float):
        super().__init__()
        self.op, self.num_modes, self.theta = op, num_modes, theta

    def forward(self, x: Tensor) -> Tensor:
        psi = self.op.exact_eigenfunctions(x, self.num_modes + 1)  # (n, L + 1)
        out = psi[:, :-1].clone()
        out[:, 1] = math.cos(self.theta) * psi[:, 1] + math.sin(self.theta) * psi[:, -1]
        return out * torch.exp(-0.5 * self.op.sampler.log_prob(x)).unsqueeze(1)


@pytest.mark.parametrize("theta", [0.0, 0.3])
def test_evaluate_in_10d_measures_against_the_rule_orthonormalized_states(theta):
    """On the randomized QMC rule (error ~1e-4 on the exact states) the exact states score 0, and a tilt
    by θ out of the wanted space gives subspace distance (all) sin²θ / L (closed form)."""
    op, num_modes = HarmonicOscillator(10), 11
    result = nsvd.FitResult(
        model=_TiltedExact(op, num_modes, theta), operator=op, eigenvalues=op.exact_eigenvalues(num_modes),
        learned_eigenvalues=torch.zeros(num_modes), order=torch.arange(num_modes),
        norms=torch.ones(num_modes, dtype=torch.float64), history={}, steps=0, wall_seconds=0.0,
        steps_per_second=math.nan,
    )
    report = nsvd.evaluate(result)
    assert 1e-5 < report["quadrature_error"] < 5e-4  # the rule is not exact ...
    expected = math.sin(theta) ** 2 / num_modes
    if theta == 0.0:  # ... yet the exact states score 0 (angles: to second order in the rule's error)
        assert report["subspace_distance_all"] < 1e-12 and report["angle_distance"] < 1e-7
    else:
        assert report["subspace_distance_all"] == pytest.approx(expected, rel=2e-2)

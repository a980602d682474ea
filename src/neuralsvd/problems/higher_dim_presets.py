"""Closed-form problems beyond the plane, registered into :mod:`.registry`: the Dirichlet Laplacian on the
unit hypercube (``box-laplacian``, any dimension) and the 3D hydrogen atom (``hydrogen3d``).

Their eigenfunction figure is a 2D slice through the domain (learned, aligned inside degenerate blocks,
above exact), drawn by :func:`plot_slice`.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import operators
from ..numerics import sampling
from ..operators.base import Operator
from .config import ExperimentConfig, ModelConfig, TrainConfig
from .registry import Problem, register

__all__ = ["plot_slice"]

#: most modes drawn by :func:`plot_slice`
MAX_SLICE_MODES = 16


def plot_slice(result: Any, operator: Operator, path: Any, origin: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
               extent: tuple[float, float], resolution: int = 61) -> None:
    """Learned eigenfunctions (normalized, aligned to the exact ones in degenerate blocks) above the exact
    ones on the plane ``origin + s u + t v``, ``s, t ∈ extent``; saved as PNG at ``path``.

    Shapes: ``origin``, ``u``, ``v`` are ``(d,)``."""
    from matplotlib.figure import Figure

    from ..plotting import aligned_eigenfunctions

    num_modes = min(result.eigenvalues.shape[0], MAX_SLICE_MODES)
    axis = torch.linspace(*extent, resolution, dtype=torch.float64)
    s, t = torch.meshgrid(axis, axis, indexing="xy")  # (r, r)
    grid = origin + s.reshape(-1, 1) * u + t.reshape(-1, 1) * v  # (r², d)
    learned = aligned_eigenfunctions(result, operator, grid).cpu()[:, :num_modes]  # (r², L)
    exact = operator.exact_eigenfunctions(grid, num_modes).double()  # (r², L)
    truth = operator.exact_eigenvalues(num_modes).tolist()
    fig = Figure(figsize=(1.6 * num_modes, 3.6))
    for mode in range(num_modes):
        limit = float(max(learned[:, mode].abs().max(), exact[:, mode].abs().max())) or 1.0
        for row, (values, label) in enumerate(((learned, "learned"), (exact, "exact"))):
            ax = fig.add_subplot(2, num_modes, row * num_modes + mode + 1)
            ax.imshow(values[:, mode].reshape(resolution, resolution).numpy(), origin="lower", cmap="RdBu_r",
                      vmin=-limit, vmax=limit, extent=(*extent, *extent))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{label} {mode}\n{(result.eigenvalues[mode] if row == 0 else truth[mode]):.5g}", fontsize=7)
    fig.suptitle(f"{type(operator).__name__}: a 2D slice (learned aligned in degenerate blocks; titles: eigenvalues)",
                 fontsize=8)
    fig.savefig(path, dpi=80, format="png")


# --- box-laplacian ----------------------------------------------------------------------------------------

def _box_operator(p: dict[str, Any]) -> Operator:
    return operators.BoxLaplacian(dim=p["dim"], shift=p["shift"], scale=p["scale"], laplacian=p["laplacian"],
                                  quadrature_points=p["quadrature_points"])


def _box_plot(result: Any, config: ExperimentConfig, path: Any) -> None:
    """The ``(x_0, x_1)`` plane with the other coordinates at 1/4 (where no first-shell mode vanishes)."""
    d = result.operator.dim
    eye = torch.eye(d, dtype=torch.float64)
    plot_slice(result, result.operator, path, torch.full((d,), 0.25, dtype=torch.float64) * (1 - eye[0] - eye[1]),
               eye[0], eye[1] if d > 1 else 0 * eye[0], (0.0, 1.0))


def _box_laplacian() -> ExperimentConfig:
    """-Δ on [0, 1]^5 with zero boundary values, 6 modes (the ground state and the 5-fold first shell).

    T = (d + 6) π² + Δ (``shift=None``), uniform samples, a boundary factor in the model (``box=(0, 1)``);
    the model is separable (sums of two products of 1D tanh MLPs, :class:`~neuralsvd.models.separable.SeparableMLP`);
    the joint nesting (with the sequential one, modes of this model die: f -> 0). See
    docs/box-and-hydrogen3d.md for the generic ``parallel_mlp`` next to it.
    """
    return ExperimentConfig(
        problem="box-laplacian", method="neuralsvd-joint", modes=6,
        operator=dict(dim=5, shift=None, scale=1.0, laplacian="exact", quadrature_points=2**16),
        model=ModelConfig(kind="separable", rank=2, hidden=(32, 32), activation="tanh", box=(0.0, 1.0)),
        train=TrainConfig(steps=12_000, batch_size=256, optimizer="adam", lr=2e-3, schedule="cosine"),
    )


# --- hydrogen3d -------------------------------------------------------------------------------------------

def _hydrogen3d_operator(p: dict[str, Any]) -> Operator:
    scales = p["sampler_exp_scale"]
    scales = [scales] if isinstance(scales, (int, float)) else list(scales)
    sampler = sampling.Mixture([sampling.RadialExponential(3, a) for a in scales]) if len(scales) > 1 else \
        sampling.RadialExponential(3, scales[0])
    return operators.Hydrogen3D(charge=p["charge"], kinetic=p["kinetic"], scale=p["scale"], shift=p["shift"],
                                sampler=sampler, laplacian=p["laplacian"], model_output=p["model_output"],
                                cusps=p.get("cusps", "auto"))


def _hydrogen3d_plot(result: Any, config: ExperimentConfig, path: Any) -> None:
    """A plane through the nucleus in general position (no real harmonic with l ≤ 2 vanishes on it)."""
    u = torch.tensor([1.0, 0.4, 0.25], dtype=torch.float64)
    u = u / u.norm()
    v = torch.linalg.cross(u, torch.tensor([0.3, -0.2, 1.0], dtype=torch.float64))
    radius = 12 * result.operator.bohr_radius
    plot_slice(result, result.operator, path, torch.zeros(3, dtype=torch.float64), u, v / v.norm(), (-radius, radius))


def _hydrogen3d() -> ExperimentConfig:
    """3D hydrogen H = -½Δ - 1/r (atomic units), 14 modes (n ≤ 3: 1 + 4 + 9).

    The 2D ``hydrogen`` preset's recipe: the model is ψ itself (``model_output="psi"``), with ``|x|`` as an
    input and a per-mode envelope; samples from an equal mixture of radial exponentials ``∝ e^{-r/a}``;
    10k steps (with ``fit``'s default initial-size cap; docs/box-and-hydrogen3d.md §4 has the numbers).
    """
    return ExperimentConfig(
        problem="hydrogen3d", modes=14,  # no rescue, as the 2D preset (docs/convergence-study.md §11)
        operator=dict(charge=1.0, kinetic=0.5, scale=100.0, shift=0.0, sampler_exp_scale=(0.25, 1.0, 4.0),
                      laplacian="exact", model_output="psi", cusps=None),
        model=ModelConfig(hidden=(128, 128, 128), activation="softplus", radial=True, envelope=True,
                          envelope_scale="spread"),
        train=TrainConfig(steps=10_000, batch_size=128, optimizer="adam", lr=1e-3, schedule="cosine", rescue=False),
    )


register(
    Problem("box-laplacian", "Dirichlet Laplacian -Δ on [0, 1]^d (default d = 5, 6 modes: ground state + first shell)",
            _box_laplacian, _box_operator, plot=_box_plot),
    Problem("hydrogen3d", "3D hydrogen atom H = -½Δ - 1/|x| (default 14 modes, n ≤ 3)",
            _hydrogen3d, _hydrogen3d_operator, plot=_hydrogen3d_plot),
)

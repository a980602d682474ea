"""Problems defined by trajectories: Koopman / transfer-operator singular functions (registered into
:data:`~neuralsvd.experiments.registry.PROBLEMS`; names in DESIGN §3).

* ``trajectory``: the user's ``.npy`` file(s), ``--set data.path=traj.npy --set data.lag=TAU --modes L``
  (``data.KEY`` is ``operator.KEY``); the last ``validation_fraction`` of every trajectory is held out.
* ``ou-process``: an Ornstein–Uhlenbeck process with anisotropic rates (closed form:
  :class:`~neuralsvd.dynamics.OrnsteinUhlenbeck`), exact transitions; held-out data simulated afresh.
* ``langevin-double-well``: overdamped Langevin dynamics in a 2D double well
  (:class:`~neuralsvd.dynamics.LangevinDoubleWell`), with the generator's finite-difference reference.

``--modes L`` counts the modes beyond the constant, which is pinned (:attr:`Problem.pinned_modes`); results
and ``eigenvalues`` in metrics.json hold ``L + 1`` singular values, the constant's first. metrics.json
also gets ``singular_values`` and ``timescales`` (in frames, slowest first; the constant excluded),
``vamp2`` (VAMP-2 on held-out data, the constant's +1 included: at most ``L + 1``) and ``vamp2_train``,
``koopman_eigenvalues`` (real and imaginary parts, :mod:`neuralsvd.koopman`); the presets add
``exact_timescales`` / ``reference_*`` fields. Figures: ``eigenfunctions.png`` (the learned functions over
the first two coordinates, or along the first) and ``timescales.png``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..dynamics import LangevinDoubleWell, OrnsteinUhlenbeck, implied_timescales
from ..evaluation import evaluate
from ..koopman import koopman_model
from ..models import Standardize
from ..operators.base import Operator
from ..operators.trajectory import Trajectories, TrajectoryOperator
from ..result import FitResult
from .config import ConfigError, ExperimentConfig, ModelConfig, TrainConfig
from .registry import Problem, make_model, register

__all__ = ["DYNAMICS_PROBLEMS", "trajectory_metrics"]

#: lagged pairs used by the post-training statistics (standardization, eigenvalues, VAMP-2)
METRIC_PAIRS = 1_000_000


def _train_config(steps: int) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=512, optimizer="adam", lr=1e-3, schedule="cosine")


def _with_held_out(operator: TrajectoryOperator, held_out: Trajectories | None) -> TrajectoryOperator:
    operator.held_out = held_out  # the data of metrics.json's "vamp2" (None: no held-out score)
    return operator


# --- trajectory (the user's files) ----------------------------------------------------------------------


def _trajectory() -> ExperimentConfig:
    return ExperimentConfig(
        problem="trajectory",
        modes=3,
        operator={"path": None, "lag": 1, "reversible": True, "validation_fraction": 0.1,
                  "evaluation_pairs": METRIC_PAIRS},
        model=ModelConfig(hidden=(64, 64), activation="sin"),
        train=_train_config(5000),
    )


def _prepare_trajectory(config: ExperimentConfig) -> None:
    """Resolve ``data.path`` to absolute paths (config.json then rebuilds the operator from anywhere)."""
    path = config.operator.get("path")
    if path is None:
        raise ConfigError("trajectory needs its data: --set data.path=traj.npy (or a list, "
                          "--set \"data.path=['a.npy','b.npy']\") and --set data.lag=TAU")
    paths = path if isinstance(path, (list, tuple)) else [path]
    if not paths or not all(isinstance(p, str) for p in paths):
        raise ConfigError(f"data.path must be a .npy path or a list of them, got {path!r}")
    resolved = [str(Path(p).expanduser().resolve()) for p in paths]
    config.operator["path"] = resolved if isinstance(path, (list, tuple)) else resolved[0]


def _trajectory_operator(p: dict[str, Any]) -> Operator:
    data = Trajectories(p["path"])
    data.check_lag(p["lag"])
    held_out = None
    if p["validation_fraction"]:
        data, held_out = data.split(p["validation_fraction"], p["lag"])
    return _with_held_out(
        TrajectoryOperator(data, p["lag"], p["reversible"], evaluation_pairs=p["evaluation_pairs"]), held_out)


# --- ou-process ------------------------------------------------------------------------------------------


def _ou_process() -> ExperimentConfig:
    """2D, rates (1, 0.6), frames dt = 1 apart, a million independent transitions (trajectories of 2 frames:
    the data's own sampling error stays well below 1% in every timescale), lag 1; 5 modes beyond the constant
    (generator eigenvalues 0.6, 1, 1.2, 1.6, 1.8)."""
    return ExperimentConfig(
        problem="ou-process",
        modes=5,
        operator={"rates": (1.0, 0.6), "dt": 1.0, "frames": 2, "trajectories": 1_000_000, "lag": 1,
                  "reversible": True, "data_seed": 0, "held_out_trajectories": 100_000,
                  "evaluation_pairs": METRIC_PAIRS},
        model=ModelConfig(hidden=(64, 64), activation="sin"),
        train=_train_config(12_000),
    )


@functools.lru_cache(maxsize=2)
def _simulated(kind: str, key: str) -> tuple[np.ndarray, np.ndarray, Any]:
    """``(training, held-out, system)`` of a simulated preset (cached: metrics, figures and load reuse it)."""
    p = json.loads(key)
    if kind == "ou":
        system: Any = OrnsteinUhlenbeck(p["rates"], p["dt"])
    else:
        system = LangevinDoubleWell(p["barrier"], p["stiffness"], p["curvature"], p["beta"], p["dt"], p["substeps"])
    train = system.simulate(p["frames"], p["trajectories"], seed=p["data_seed"])
    held_out = system.simulate(p["frames"], p["held_out_trajectories"], seed=p["data_seed"] + 1)
    return train, held_out, system


def _ou_operator(p: dict[str, Any]) -> Operator:
    train, held_out, system = _simulated("ou", json.dumps(p, sort_keys=True))
    reference = system.reference(p["lag"])
    op = TrajectoryOperator(train, p["lag"], p["reversible"], evaluation_pairs=p["evaluation_pairs"],
                            reference=reference)
    return _with_held_out(op, Trajectories(held_out))


def _ou_metrics(result: FitResult, config: ExperimentConfig) -> dict[str, Any]:
    out = trajectory_metrics(result, config)
    lag = config.operator["lag"]
    exact = implied_timescales(result.operator.exact_eigenvalues(config.modes + 1)[1:], lag)
    out["exact_timescales"] = exact.tolist()
    rel = np.abs(np.asarray(out["timescales"]) / exact - 1)
    out["timescale_relative_error"] = rel.tolist()
    out["max_timescale_relative_error"] = float(rel.max())
    return out


# --- langevin-double-well --------------------------------------------------------------------------------


def _double_well() -> ExperimentConfig:
    """``V = (x² - 1)² + (y - (x² - 1)/2)²`` at β = 1 (generator eigenvalues 0.649, 1.589, 2.460 for the three
    slow modes), frames dt = 0.05 apart (10 Euler–Maruyama steps each), 400 trajectories of 10 000 frames,
    lag 10 frames (σ ≈ 0.72, 0.45, 0.29)."""
    return ExperimentConfig(
        problem="langevin-double-well",
        modes=3,
        operator={"barrier": 1.0, "stiffness": 2.0, "curvature": 0.5, "beta": 1.0, "dt": 0.05, "substeps": 10,
                  "frames": 10_000, "trajectories": 400, "held_out_trajectories": 40, "lag": 10,
                  "reversible": True, "data_seed": 0, "reference_points": 128, "reference_half_width": 4.0,
                  "evaluation_pairs": 4_000_000},
        model=ModelConfig(hidden=(64, 64), activation="sin"),
        train=_train_config(6000),
    )


def _double_well_operator(p: dict[str, Any]) -> Operator:
    train, held_out, _ = _simulated("double-well", json.dumps(p, sort_keys=True))
    op = TrajectoryOperator(train, p["lag"], p["reversible"], evaluation_pairs=p["evaluation_pairs"])
    return _with_held_out(op, Trajectories(held_out))


@functools.lru_cache(maxsize=2)
def _double_well_reference(key: str, num_modes: int) -> Any:
    p = json.loads(key)
    system = LangevinDoubleWell(p["barrier"], p["stiffness"], p["curvature"], p["beta"], p["dt"], p["substeps"])
    return system.reference(p["lag"], num_modes, points=p["reference_points"], half_width=p["reference_half_width"])


def _double_well_metrics(result: FitResult, config: ExperimentConfig) -> dict[str, Any]:
    out = trajectory_metrics(result, config)
    p, num = config.operator, config.modes + 1
    ref = _double_well_reference(json.dumps(p, sort_keys=True), num)
    report = evaluate(result, ref)
    sigma = ref.exact_eigenvalues(num).numpy()
    timescales = implied_timescales(sigma[1:], p["lag"])
    rel = np.abs(np.asarray(out["timescales"]) / timescales - 1)
    out.update({
        "reference": "generator -β⁻¹Δ + U (U = β|∇V|²/4 - ΔV/2) by finite differences, three grids + Richardson",
        "reference_grid": ref.grid.describe(),
        "reference_generator_eigenvalues": ref.rates[:num].tolist(),
        "reference_error_estimate": ref.error_estimate[:num].tolist(),
        "reference_singular_values": sigma.tolist(),
        "reference_timescales": timescales.tolist(),
        "reference_timescale_relative_error": rel.tolist(),
        "reference_max_timescale_relative_error": float(rel.max()),
    })
    for key in ("subspace_distance_all", "subspace_distance_avg", "angle_distance", "subspace_distance_blocks"):
        out[f"reference_{key}"] = report[key]
    return out


# --- shared: models, metrics, figures --------------------------------------------------------------------


def _koopman_models(config: ExperimentConfig, operator: Operator) -> Any:
    """Standardized inputs (statistics of the first 100 000 pairs' frames) and ``config.modes`` networks behind
    the pinned constant: one model (reversible) or a (left, right) pair."""
    if config.modes < 1:
        raise ConfigError(f"modes counts the modes beyond the constant: at least 1, got {config.modes}")
    count = min(operator.num_pairs, 100_000)
    frames = torch.cat(operator.lagged_pairs(torch.arange(count)), 0)  # (2 count, d)

    def network() -> nn.Module:
        return nn.Sequential(Standardize(frames), make_model(config, operator.dim))

    if operator.reversible:
        return operator.pinned_model(network())
    return operator.pinned_models(network(), network())


def trajectory_metrics(result: FitResult, config: ExperimentConfig) -> dict[str, Any]:
    """The metrics.json fields of every trajectory problem (module docstring)."""
    op = result.operator
    lag = op.lag
    model = koopman_model(result, op.trajectories, lag, METRIC_PAIRS, config.seed)
    eig = model.eigenvalues_
    return {
        "lag": lag,
        "singular_values": model.singular_values_.tolist(),
        "timescales": model.timescales_.tolist(),
        "vamp2": None if op.held_out is None else model.score(op.held_out, max_pairs=METRIC_PAIRS, seed=config.seed),
        "vamp2_train": model.score(op.trajectories, max_pairs=METRIC_PAIRS, seed=config.seed),
        "koopman_eigenvalues": {"real": eig.real.tolist(), "imag": eig.imag.tolist()},
    }


def _plot(result: FitResult, config: ExperimentConfig, path: Path) -> None:
    from ..plotting_dynamics import plot_koopman_functions, plot_timescales

    timescales = implied_timescales(result.singular_values[1:], config.operator["lag"])
    reference = None
    if config.problem == "ou-process":
        reference = implied_timescales(result.operator.exact_eigenvalues(config.modes + 1)[1:], config.operator["lag"])
    elif config.problem == "langevin-double-well":
        ref = _double_well_reference(json.dumps(config.operator, sort_keys=True), config.modes + 1)
        reference = implied_timescales(ref.exact_eigenvalues(config.modes + 1)[1:], config.operator["lag"])
    plot_koopman_functions(result, path=path)
    plot_timescales(timescales, reference, path=path.with_name("timescales.png"))


DYNAMICS_PROBLEMS: dict[str, Problem] = {
    p.name: p
    for p in (
        Problem("trajectory", "Koopman singular functions of your trajectories: --set data.path=traj.npy "
                "--set data.lag=TAU (--modes: beyond the constant)", _trajectory, _trajectory_operator,
                _koopman_models, extra_metrics=trajectory_metrics, plot=_plot, prepare=_prepare_trajectory,
                pinned_modes=1),
        Problem("ou-process", "Ornstein-Uhlenbeck, 2D anisotropic (closed form: Hermite functions; 5 modes "
                "beyond the constant)", _ou_process, _ou_operator, _koopman_models, extra_metrics=_ou_metrics,
                plot=_plot, pinned_modes=1),
        Problem("langevin-double-well", "overdamped Langevin in a 2D double well (generator reference by finite "
                "differences; 3 slow modes)", _double_well, _double_well_operator, _koopman_models,
                extra_metrics=_double_well_metrics, plot=_plot, pinned_modes=1),
    )
}

register(*DYNAMICS_PROBLEMS.values())

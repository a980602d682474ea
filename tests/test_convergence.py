"""Long convergence runs against closed forms (marked slow: `python -m pytest -m slow`).

The oscillator acceptance: 2D H = -Δ + |x|², 10 modes (n ≤ 3), 10,000 steps at batch 128 with
the `oscillator` preset: mean relative energy error ≤ 2e-2 and subspace distance (avg over shells)
≤ 5e-2, in each of 3 seeds. Energies alone hide mixing, so the subspace distance is asserted too.
"""

from __future__ import annotations

import pytest

from neuralsvd.cli.run import run
from neuralsvd.problems import get_problem

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_oscillator_preset_converges(seed, tmp_path):
    config = get_problem("oscillator").default_config().with_overrides([f"seed={seed}"])
    assert (config.modes, config.train.steps, config.train.batch_size) == (10, 10_000, 128)
    metrics = run(config, tmp_path, progress=False, echo=lambda s: None)
    assert metrics["mean_eigenvalue_relative_error"] <= 2e-2
    assert metrics["subspace_distance_avg"] <= 5e-2


def test_hydrogen_demo_meets_the_nine_mode_goal(tmp_path):
    """The default `neuralsvd run hydrogen` demo (9 modes, the accuracy goal): mean relative energy error
    ≤ 1e-2 (about 13 minutes on one core), the ground state to 1e-5, subspace distance (all) ≤ 1e-2, and
    every mode converged in the NestedLoRA sense (‖f‖²/λ within [0.5, 2])."""
    metrics = run(get_problem("hydrogen").default_config(), tmp_path, progress=False, echo=lambda s: None)
    assert metrics["mean_eigenvalue_relative_error"] <= 1e-2
    assert metrics["eigenvalue_relative_error"][0] <= 1e-5
    assert metrics["subspace_distance_all"] <= 1e-2
    assert all(0.5 <= r <= 2.0 for r in metrics["norm_ratio"])


def test_hydrogen_sixteen_modes_meet_the_goal(tmp_path):
    """`neuralsvd run hydrogen --modes 16 --steps 50000 --seed 0` (the preset's sampler and batch, 256,
    chosen from the modes; about 30 minutes on one core): mean relative energy error ≤ 5e-3, every shell
    within it, subspace distance (all) ≤ 1e-3, every mode converged. Measured: 1.41e-3, 1.9e-4
    (docs/hydrogen-study.md §10)."""
    config = get_problem("hydrogen").default_config().with_overrides(["modes=16", "train.steps=50000", "seed=0"])
    metrics = run(config, tmp_path, progress=False, echo=lambda s: None)
    assert metrics["batch_size"] == 256
    assert metrics["mean_eigenvalue_relative_error"] <= 5e-3
    assert metrics["subspace_distance_all"] <= 1e-3
    errors = metrics["eigenvalue_relative_error"]
    for n in range(4):  # shell n holds the 2n + 1 modes n² .. (n + 1)² - 1
        shell = errors[n * n:(n + 1) ** 2]
        assert sum(shell) / len(shell) <= 5e-3
    assert all(0.5 <= r <= 2.0 for r in metrics["norm_ratio"])
    assert metrics["status"] == "ok"

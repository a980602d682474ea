"""The ``schrodinger`` problem end to end: a potential from the command line, automatic settings, the grid
reference in metrics.json and the figure; errors for bad potentials."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from neuralsvd import cli, load
from neuralsvd.problems import ExperimentConfig, get_problem, make_operator

TINY = ["--set", "model.hidden=(16,)", "--set", "train.eval_batches=2", "--set", "operator.reference_points=32",
        "--no-progress"]
ANISO = "operator.potential=x0**2 + 2.25*x1**2"  # E = (2 n0 + 1) + 1.5 (2 n1 + 1): 2.5, 4.5, 5.5


@pytest.fixture(scope="module")
def aniso_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("schrodinger")
    assert cli.main(["run", "schrodinger", "--set", ANISO, "--set", "operator.dim=2", "--modes", "3",
                     "--steps", "20", "--out", str(out), *TINY]) == 0
    return out


def test_metrics_hold_the_reference(aniso_run):
    m = json.loads((aniso_run / "metrics.json").read_text())
    exact = np.array([2.5, 4.5, 5.5])
    ref, err = np.array(m["reference_eigenvalues"]), np.array(m["reference_error_estimate"])
    assert ref.shape == err.shape == (3,)
    assert (np.abs(ref - exact) <= err).all() and (err / exact < 0.1).all()
    assert np.abs(np.array(m["reference_eigenvalues_finest_grid"]) - exact).max() <= err.max() * 1.5
    rel = np.abs(np.array(m["eigenvalues"]) - ref) / np.abs(ref)
    np.testing.assert_allclose(m["reference_eigenvalue_relative_error"], rel, rtol=1e-9)
    assert m["reference_mean_eigenvalue_relative_error"] == pytest.approx(rel.mean())
    for key in ("reference_subspace_distance_all", "reference_angle_distance", "reference_subspace_distance_avg"):
        assert 0 <= m[key] <= 1, key
    assert m["reference_grid"]["points_per_axis"] == [16, 32, 64]
    assert m["exact_eigenvalues"] is None and m["potential"] == "x0**2 + 2.25*x1**2"
    # the automatic shift: above the highest wanted energy, recorded with its reason
    assert m["shift"] > ref[-1] and "E_2 + max(E_2 - E_0" in m["auto_choices"]["shift"]
    assert (aniso_run / "eigenfunctions.png").stat().st_size > 0


def test_chosen_settings_are_recorded_and_reused(aniso_run):
    config = json.loads((aniso_run / "config.json").read_text())
    m = json.loads((aniso_run / "metrics.json").read_text())
    op = config["operator"]
    assert op["shift"] == m["shift"] and isinstance(op["sampler_std"], float)
    assert isinstance(config["model"]["envelope_scale"], float)
    result = load(aniso_run)  # rebuilt from config.json: no "auto" left
    assert result.operator.shift == m["shift"]
    np.testing.assert_allclose(result.eigenvalues.tolist(), m["eigenvalues"])


def test_reference_none(tmp_path):
    assert cli.main(["run", "schrodinger", "--modes", "2", "--steps", "5", "--reference", "none",
                     "--out", str(tmp_path), *TINY]) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["reference"] is None and "reference_eigenvalues" not in m


@pytest.mark.parametrize(("potential", "extra", "message"), [
    ("x0**2 + y**2", [], "unknown name 'y'; valid names: x0, x1, r, pi, e"),
    ("x0**2 + x2**2", [], "variable x2 needs dimension at least 3"),
    ("os.system(1)", [], "attribute access"),
    ("open(1)", [], "unknown function 'open'"),
    ("x0**2 - x1**4", [], "unbounded below"),
    ("log(x0) + x1**2", ["--set", "operator.shift=10.0", "--set", "operator.sampler_std=2.0",
                         "--set", "model.envelope_scale=5.0", "--reference", "none"],
     "not finite at .* of 4096 sampler points"),
    ("r**2", ["--set", "operator.dim=4"],
     "automatic operator.shift, operator.sampler_std, model.envelope_scale come from a grid solve, .* dim ≤ 3"),
    ("r**2", ["--set", "operator.dim=4", "--set", "operator.shift=20.0", "--set", "operator.sampler_std=2.0",
              "--set", "model.envelope_scale=5.0", "--reference", "grid"], "grid reference solves dim ≤ 3"),
    ("r**2", ["--set", "operator.reference_points=10"], "reference_points must be a positive multiple of 4"),
])
def test_bad_potentials_fail_with_a_message(tmp_path, capsys, potential, extra, message):
    argv = ["run", "schrodinger", "--set", f"operator.potential={potential}", "--steps", "2", "--modes", "2",
            "--out", str(tmp_path), *TINY, *extra]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err


def test_a_failing_reference_leaves_the_run_intact(tmp_path, capsys):
    """A potential without bound states (no box holds them) and a hand-set shift: training runs, the
    reference is reported as missing."""
    argv = ["run", "schrodinger", "--set", "operator.potential=-exp(-r**2)", "--set", "operator.shift=1.0",
            "--set", "operator.sampler_std=2.0", "--set", "model.envelope_scale=5.0", "--modes", "2", "--steps", "5",
            "--out", str(tmp_path), *TINY]
    assert cli.main(argv) == 0
    assert "no grid reference: the grid reference found no box" in capsys.readouterr().out
    assert json.loads((tmp_path / "metrics.json").read_text())["reference"] is None


def test_reference_flag_needs_a_reference_solver(capsys):
    assert cli.main(["run", "oscillator", "--reference", "grid", "--steps", "2"]) == 2
    assert "problem 'oscillator' has no reference solver" in capsys.readouterr().err


def test_callable_potential(tmp_path, monkeypatch):
    (tmp_path / "user_wells.py").write_text("def bowl(x):\n    return 4.0 * (x * x).sum(1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = get_problem("schrodinger").default_config().with_overrides(
        ["operator.potential=user_wells:bowl", "modes=1"])
    op = make_operator(config)  # E_0 = 2 ω = 4 for V = 4 |x|² (ω = 2)
    assert isinstance(config.operator["shift"], float) and op.shift > 4
    assert isinstance(config, ExperimentConfig) and config.operator["auto_choices"]["shift"].startswith(f"{op.shift:g}")


def test_automatic_sampler_adds_a_core_component_only_for_a_tight_ground_state():
    """3D Coulomb: the ground state (extent ≈ 1: ⟨x_a²⟩ = 1 for e^{-r}) is far tighter than the n = 2 shell,
    so the sampler is an equal mixture with a component at the ground state's scale; the 1:1.5 oscillator
    (ground extent 0.41 of the modes') keeps one Gaussian at twice the modes' extent."""
    coulomb = get_problem("schrodinger").default_config().with_overrides(
        ["operator.potential=-2/sqrt(x0**2+x1**2+x2**2)", "operator.dim=3", "modes=5"])
    op = make_operator(coulomb)
    core, wide = coulomb.operator["sampler_std"]
    assert 0.8 < core < 1.4 and wide > 3 * core  # the true ground-state extent is 1
    assert "an equal mixture" in coulomb.operator["auto_choices"]["sampler_std"]
    assert len(op.sampler.components) == 2
    aniso = get_problem("schrodinger").default_config().with_overrides([ANISO, "operator.dim=2", "modes=7"])
    make_operator(aniso)
    assert isinstance(aniso.operator["sampler_std"], float) and aniso.operator["sampler_std"] == pytest.approx(3.5)


def test_cusps_are_off_by_default_and_on_by_request():
    """The command line keeps its automatic sampler's answer to a Coulomb singularity (no cusp factor);
    ``operator.cusps=auto`` asks the operator to find the charge (Z = 2 at the origin)."""
    base = ["operator.potential=-2/sqrt(x0**2+x1**2+x2**2)", "operator.dim=3", "modes=5"]
    assert make_operator(get_problem("schrodinger").default_config().with_overrides(base)).charges == []
    op = make_operator(get_problem("schrodinger").default_config().with_overrides([*base, "operator.cusps=auto"]))
    assert len(op.charges) == 1 and op.charges[0].charge == pytest.approx(2.0, rel=1e-9)
    assert max(abs(c) for c in op.charges[0].center) < 1e-9

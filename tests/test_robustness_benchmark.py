"""The robustness benchmark: its reference solvers against closed forms, its success rule on synthetic runs,
its problems' consistency, and a quick run with the library defaults scored against the references."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _benchmarks import load_benchmark

ref = load_benchmark("robustness_references")
bench = load_benchmark("robustness")


# ---------------------------------------------------------------- reference solvers vs closed forms

@pytest.mark.parametrize(("potential", "exact", "half_width", "center"), [
    (lambda t: t**2, ref.oscillator_levels([1.0], 5), 8.0, 0.0),
    (lambda t: 6.25 * t**2, ref.oscillator_levels([2.5], 5), 5.0, 0.0),
    (lambda t: -20 / np.cosh(t) ** 2, ref.poschl_teller_levels(4.0, 4), 12.0, 0.0),
    (lambda t: 16 * (1 - np.exp(-t)) ** 2, ref.morse_levels(16.0, 1.0, 3), 7.0, 2.5),
])
def test_fd_1d_matches_closed_form(potential, exact, half_width, center):
    levels, bound = ref.fd_levels_1d(potential, len(exact), half_width, center=center)
    np.testing.assert_allclose(levels, exact, rtol=0, atol=1e-5)
    assert np.all(np.abs(levels - exact) <= bound + 1e-9)  # the stated bound holds
    assert bound.max() < 1e-4


@pytest.mark.parametrize(("potential", "dim", "ang", "exact"), [
    (lambda r: -2 / r, 3, 0, [-1.0, -0.25, -1 / 9]),  # 3D hydrogen (Z = 2): -1/n², n > l
    (lambda r: -2 / r, 3, 1, [-0.25, -1 / 9]),
    (lambda r: -1 / r, 2, 0, [-1.0, -1 / 9, -1 / 25]),  # 2D hydrogen: -1/(2n+1)², n ≥ |m|
    (lambda r: -1 / r, 2, 2, [-1 / 25]),
    (lambda r: r**2, 3, 0, [3.0, 7.0]),  # 3D oscillator: 2(2k + l) + 3
    (lambda r: r**2, 2, 1, [4.0, 8.0]),  # 2D oscillator: 2(2k + |m|) + 2
])
def test_radial_levels_match_closed_forms(potential, dim, ang, exact):
    levels = ref.radial_levels(potential, dim, ang, len(exact), radius=40.0 if exact[0] > 0 else 80.0)
    np.testing.assert_allclose(levels, exact, rtol=1e-7, atol=1e-9)


def test_fd_1d_converges_at_fourth_order_after_extrapolation():
    errors = [abs(ref.fd_levels_1d(lambda t: t**2, 3, 8.0, points=n)[0][2] - 5.0) for n in (200, 401)]
    assert errors[1] < errors[0] / 10  # h/2: O(h^4) gives /16


@pytest.mark.parametrize(("potential", "exact"), [
    (lambda x: x[:, 0] ** 2 + (1.7 * x[:, 1]) ** 2, ref.oscillator_levels([1.0, 1.7], 4)),
    (lambda x: x[:, 0] ** 2 + x[:, 1] ** 2 + 0.8 * x[:, 0] * x[:, 1],
     ref.normal_mode_levels(np.array([[1.0, 0.4], [0.4, 1.0]]), 4)),  # non-separable on the grid
])
def test_fd_2d_matches_closed_form(potential, exact):
    levels, bound = ref.fd_levels_2d(potential, 4, 7.0, points=60)
    np.testing.assert_allclose(levels, exact, rtol=2e-4)
    assert np.all(np.abs(levels - exact) <= bound)


def test_closed_forms():
    np.testing.assert_allclose(ref.oscillator_levels([1.0, 1.7], 4), [2.7, 4.7, 6.1, 6.7])
    np.testing.assert_allclose(ref.normal_mode_levels(np.diag([1.0, 2.89]), 4), [2.7, 4.7, 6.1, 6.7])
    np.testing.assert_allclose(ref.hydrogen3d_levels(2.0, 6), [-1, -0.25, -0.25, -0.25, -0.25, -1 / 9])
    np.testing.assert_allclose(ref.hydrogen2d_levels(1.0, 5), [-1, -1 / 9, -1 / 9, -1 / 9, -1 / 25])
    np.testing.assert_allclose(ref.tensor_sum_levels([np.array([1.0, 3.0]), np.array([0.0, 0.5])], 3), [1, 1.5, 3])
    with pytest.raises(ValueError, match="bound levels"):
        ref.poschl_teller_levels(2.0, 3)


def test_top_eigenvalues_of_cycle_graph_and_gaussian_kernel():
    n = 40  # normalized adjacency of the cycle: cos(2πk/n)
    a = np.roll(np.eye(n), 1, axis=1) + np.roll(np.eye(n), -1, axis=1)
    exact = np.sort(np.cos(2 * np.pi * np.arange(n) / n))[::-1][:4]
    np.testing.assert_allclose(ref.top_eigenvalues(a / 2, 4), exact, atol=1e-12)
    # RBF kernel exp(-γ|x-y|²) under N(0, s²) (GPML §4.3.1): λ_k = sqrt(2a/A) B^k with a = 1/(4s²),
    # c = sqrt(a² + 2aγ), A = a + γ + c, B = γ/A; discretized on Gauss–Hermite nodes (weights w):
    # the eigenvalues of W^½ K W^½ converge exponentially to the operator's
    gamma, s = 0.5, 1.3
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    x, w = nodes * s, weights / weights.sum()
    a_ = 1 / (4 * s**2)
    big_a = a_ + gamma + np.sqrt(a_**2 + 2 * a_ * gamma)
    exact = np.sqrt(2 * a_ / big_a) * (gamma / big_a) ** np.arange(4)
    matrix = np.sqrt(w)[:, None] * np.exp(-gamma * (x[:, None] - x[None, :]) ** 2) * np.sqrt(w)[None, :]
    np.testing.assert_allclose(ref.top_eigenvalues(matrix, 4), exact, rtol=1e-9)


# ---------------------------------------------------------------- the problems

@pytest.mark.parametrize("suite", ["main", "holdout"])
def test_suites_are_large_enough_and_disjoint(suite):
    probs = bench.problems(suite)
    assert len(probs) >= {"main": 12, "holdout": 6}[suite]
    assert not set(bench.problems("main")) & set(bench.problems("holdout"))


@pytest.mark.parametrize("suite", ["main", "holdout"])
def test_operator_potential_equals_reference_potential(suite):
    """The operator's V is the formula the reference solves (separable: the sum of the axis potentials)."""
    x = torch.randn(64, 4, dtype=torch.float64) * 1.5 + 0.1
    for p in bench.problems(suite).values():
        if p.potential is None:
            continue
        xd = x[:, : p.dim]
        op = p.build_operator()
        np.testing.assert_allclose(op.potential(xd).numpy(), p.potential(xd.numpy(), np), rtol=1e-12)
        if p.axes:
            np.testing.assert_allclose(sum(a(xd.numpy(), np) for a in p.axes), p.potential(xd.numpy(), np),
                                       rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("suite", ["main", "holdout"])
def test_shift_is_above_every_wanted_level(suite):
    """Cheap references only (closed forms and 1D FD): the learned operator's top L are the wanted levels."""
    for p in bench.problems(suite).values():
        if p.potential is None or "2D FD" in p.how:
            continue
        levels, bound = p.reference()
        assert levels.shape == (p.modes,) and np.all(np.diff(levels) >= -1e-12)
        assert bound.max() < 1e-4
        assert p.build_operator().shift > levels.max(), p.name


@pytest.mark.parametrize("suite", ["main", "holdout"])
def test_closed_forms_agree_with_their_fd_check(suite):
    """``reference(verify=True)`` of a closed-form problem is an FD solve (per axis; hydrogen: radial)."""
    checked = 0
    for p in bench.problems(suite).values():
        if p.how.startswith("closed form") and p.dim <= 3 and "normal modes" not in p.how:
            np.testing.assert_allclose(p.reference(verify=True)[0], p.reference()[0], rtol=1e-6, atol=1e-6)
            checked += 1
    assert checked >= 3


# ---------------------------------------------------------------- the success rule

@pytest.mark.parametrize(("levels", "ratio", "success", "failed"), [
    ([1.0, 3.0, 5.0], [1.0, 0.9, 1.2], True, []),
    ([1.005, 3.02, 5.0], [1.0, 1.0, 1.0], True, []),  # 3.02: error 0.02 / max(3, 0.4) < 1%
    ([1.0, 3.05, 5.0], [1.0, 1.0, 1.0], False, [(1, "error")]),
    ([1.0, 3.0, 5.0], [1.0, 0.3, 1.0], False, [(1, "norm")]),
    ([1.0, 3.0, 3.0], [1.0, 1.0, 0.01], False, [(2, "error+norm")]),  # a lost mode: level 5 missing
    ([5.0, 1.0, 3.0], [1.0, 1.0, 3.0], False, [(1, "norm")]),  # unsorted: ratios follow their levels
    ([1.0, 3.0, 5.0], None, True, []),  # no norm-ratio diagnostic (e.g. NeuralEF): levels alone
])
def test_score(levels, ratio, success, failed):
    out = bench.score(levels, [1.0, 3.0, 5.0], ratio)
    assert out["success"] is success
    assert [(f["level"], f["why"]) for f in out["failures"]] == failed


def test_score_descending_and_near_zero_levels():
    assert bench.score([0.5, 0.2, 0.1], [0.1, 0.5, 0.2], [1, 1, 1], ascending=False)["success"]
    out = bench.score([0.003, 4.0, 10.0], [0.0, 4.0, 10.0], None)  # |0.003 - 0| / (10 / 10)
    assert out["success"] and out["errors"][0] == pytest.approx(0.003)
    with pytest.raises(ValueError, match="same shape"):
        bench.score([1.0], [1.0, 2.0], None)


def test_tables_count_runs():
    rows = [{"problem": "p", "method": "m", "size": "default", "seed": s, "success": s == 0, "max_error": 0.1 * s,
             "seconds": 2.0, "cpu_seconds": 1.5, "status": "ok", "failures": [], "warnings": []} for s in range(3)]
    rows[1]["failures"], rows[1]["norm_ratio"] = [{"why": "error+norm"}], [0.01]
    assert bench.summary(rows)[0] == {"method": "m", "size": "default", "runs": 3, "successes": 1,
                                      "success_rate": pytest.approx(1 / 3), "norm_failures": 1, "median_error": pytest.approx(0.1),
                                      "median_seconds": 2.0, "median_cpu_seconds": 1.5}
    assert "| p | 1/3 |" in bench.problem_table(rows)


def test_merge_and_plot(tmp_path, capsys):
    rows = [{"problem": p, "method": "neuralsvd", "size": "default", "seed": s, "success": s == 0,
             "max_error": None if s == 2 else 0.02 * s, "seconds": 2.0, "cpu_seconds": 1.0, "steps": 9, "status": "ok",
             "failures": [], "warnings": []} for p in ("a", "b") for s in range(3)]
    rows[2] = {**rows[2], "status": "failed", "error": "DivergenceError: x"}
    for k, part in enumerate((rows[:3], rows[3:])):
        (tmp_path / f"{k}.json").write_text(json.dumps({"command": f"c{k}", "suite": "main", "wall_seconds": 1.0,
                                                         "problems": {}, "runs": part}))
    rerun = {**rows[1], "success": True, "max_error": 0.001}  # a rerun of ("a", seed 1) replaces it, in place
    (tmp_path / "2.json").write_text(json.dumps({"command": "c2", "suite": "main", "wall_seconds": 1.0,
                                                 "problems": {}, "runs": [rerun]}))
    merged = tmp_path / "all.json"
    assert bench.main(["--load", *(str(tmp_path / f"{k}.json") for k in range(3)), "--json", str(merged),
                       "--plot", str(tmp_path / "all.png")]) == 0
    printed = capsys.readouterr().out
    assert "| neuralsvd | default | 3/6 | 50% | – |" in printed and "a neuralsvd default seed 2: failed" in printed
    payload = json.loads(merged.read_text())
    assert payload["command"] == ["c0", "c1", "c2"]
    assert [(r["problem"], r["seed"], r["success"]) for r in payload["runs"]][:3] == [("a", 0, True), ("a", 1, True),
                                                                                      ("a", 2, False)]
    assert (tmp_path / "all.png").stat().st_size > 10_000


# ---------------------------------------------------------------- the quick run (library defaults)

def test_quick_run_passes_with_library_defaults(tmp_path, capsys):
    """The quick problems with NeuralSVD's defaults, one seed: every level within 1% of the independent
    reference and healthy norm ratios (a regression of the defaults fails here)."""
    out = tmp_path / "quick.json"
    assert bench.main(["--quick", "--methods", "neuralsvd", "--sizes", "default", "--json", str(out)]) == 0
    assert "command: python benchmarks/robustness.py --quick" in capsys.readouterr().out
    payload = json.loads(out.read_text())
    rows = payload["runs"]
    assert [r["problem"] for r in rows] == list(bench.QUICK)
    for r in rows:
        ref_levels = payload["problems"][r["problem"]]["levels"]
        assert r["success"], (r["problem"], r["levels"], ref_levels, r["failures"])
        np.testing.assert_allclose(sorted(r["levels"]), sorted(ref_levels), rtol=bench.TOLERANCE)

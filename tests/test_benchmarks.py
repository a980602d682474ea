"""The hydrogen ablation benchmark runs end to end (tiny budget) and its curves agree with the final read-out."""

from __future__ import annotations

import json

import pytest
from _benchmarks import load_benchmark


def test_hydrogen_ablation_smoke(tmp_path, capsys):
    bench = load_benchmark("hydrogen_accuracy")
    out = tmp_path / "ablation.json"
    assert bench.main(["--variants", "ratio-gauss,best", "--steps", "20", "--seeds", "0", "--modes", "2",
                       "--eval-every", "10", "--set", "model.hidden=(16, 16)", "--plot", str(tmp_path / "c.png"),
                       "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "command: python benchmarks/hydrogen_accuracy.py" in printed and "best" in printed
    runs = json.loads(out.read_text())["runs"]
    assert [r["variant"] for r in runs] == ["ratio-gauss", "best"]
    for r in runs:
        assert [c["step"] for c in r["curve"]] == [10, 20]
        # the last curve point is the returned model on the same quadrature read-out
        assert r["curve"][-1]["mean_rel_error"] == pytest.approx(r["mean_rel_error"], rel=1e-6)
        assert r["curve"][-1]["subspace_distance_all"] == pytest.approx(r["subspace_distance_all"], rel=1e-6)
    assert (tmp_path / "c.png").stat().st_size > 10_000


def test_hydrogen_ablation_rejects_unknown_variant():
    with pytest.raises(SystemExit):
        load_benchmark("hydrogen_accuracy").main(["--variants", "nope"])


def test_gradient_noise_smoke(tmp_path):
    """Per-mode signal and noise of each estimator at two stops; NeuralEF's terms add up to its update."""
    bench = load_benchmark("gradient_noise")
    out = tmp_path / "noise.json"
    assert bench.main(["--at", "10", "20", "--batches", "4", "--set", "modes=3", "--set", "model.hidden=(8, 8)",
                       "--json", str(out), "--plot", str(tmp_path / "n.png")]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["step"] for r in rows] == [10, 20]
    rep = rows[0]["report"]
    assert set(rep) == {"nestedlora-seq", "nestedlora-seq-cv", "neuralef"}
    for est in rep.values():
        assert len(est["total"]["signal"]) == 3 and all(s > 0 for s in est["total"]["signal"])
    # the control variate changes only the deflation moments: the operator term is the same estimator
    assert rep["nestedlora-seq"]["operator"] == rep["nestedlora-seq-cv"]["operator"]
    assert rep["nestedlora-seq"]["deflation-0"]["noise"][0] == 0.0  # the ground state has no deflation
    assert (tmp_path / "n.png").stat().st_size > 10_000


def test_short_budget_smoke(tmp_path):
    bench = load_benchmark("short_budget")
    out = tmp_path / "short.json"
    assert bench.main(["--problems", "user2d", "--methods", "neuralsvd-seq,neuralef", "--steps", "20",
                       "--seeds", "0", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["method"] for r in rows] == ["neuralsvd-seq", "neuralef"]
    assert all(len(r["eigenvalues"]) == 4 and r["mean_rel_error"] > 0 for r in rows)


def test_hydrogen_ablation_runs_each_method_on_each_variant(tmp_path):
    out = tmp_path / "methods.json"
    assert load_benchmark("hydrogen_accuracy").main(
        ["--variants", "best", "--methods", "neuralsvd-seq-paper,neuralef", "--steps", "10", "--seeds", "0",
         "--modes", "2", "--eval-every", "10", "--set", "model.hidden=(8, 8)", "--json", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert [r["variant"] for r in runs] == ["best/neuralsvd-seq-paper", "best/neuralef"]
    assert runs[0]["mean_rel_error"] != runs[1]["mean_rel_error"]


def test_scaling_smoke(tmp_path, capsys):
    """One process, weak and strong rows, a tiny model: the table, the command and positive rates."""
    out = tmp_path / "scaling.json"
    assert load_benchmark("scaling").main(["--processes", "1", "--no-compile", "--modes", "2", "--batch", "16", "--steps", "6",
                                  "--check", "3", "--set", "model.hidden=(8, 8)", "--json", str(out)]) == 0
    assert "command: python benchmarks/scaling.py" in capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    assert [(r["kind"], r["global_batch"]) for r in rows] == [("weak", 16), ("strong", 32)]
    assert all(r["samples_per_second"] > 0 and r["efficiency"] == 1.0 for r in rows)


def test_dimension_smoke(tmp_path, capsys):
    """Step cost and stochastic-Tf noise per d; exact states in ratio form (linear first shell) have an
    exact stochastic Tf, the network at initialization does not."""
    bench = load_benchmark("dimension")
    out = tmp_path / "dim.json"
    assert bench.main(["--dims", "3", "5", "--probes", "1", "2", "--rounds", "1", "--steps-per-round", "1",
                       "--draws", "3", "--batch", "16", "--set", "model.hidden=(8, 8)", "--json", str(out),
                       "--plot", str(tmp_path / "dim.png")]) == 0
    assert "command: python benchmarks/dimension.py" in capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    assert [(r["dim"], r["modes"]) for r in rows] == [(3, 4), (5, 6)]
    for r in rows:
        assert set(r["cpu_s"]) == {"exact", "hutchinson-1", "hutchinson-2"} and min(r["cpu_s"].values()) > 0
        for k in ("1", "2"):
            assert r["noise"][k]["exact-states"]["noise"] < 1e-10
            assert r["noise"][k]["init"]["noise"] > 1e-4
    assert (tmp_path / "dim.png").stat().st_size > 10_000


def test_cancellation_ratio_by_hand():
    """1 when the output weights are parallel to the hidden features (Cauchy–Schwarz equality, one
    point, zero bias); ``‖w‖‖h‖/|w·h|`` for any other weights; the ratio ignores the output's scale."""
    import torch

    from neuralsvd.models import ParallelMLP

    bench = load_benchmark("output_conditioning")
    torch.manual_seed(0)
    mlp = ParallelMLP(2, 3, hidden=(8, 8)).double()
    x = torch.randn(1, 2, dtype=torch.float64)
    with torch.no_grad():
        h = mlp.hidden(x)[0][:, 0]  # (L, H)
        # the output layer on `hidden` is the model's output (no envelope here)
        assert torch.allclose((h * mlp.out_weight[..., 0]).sum(1) + mlp.out_bias[:, 0, 0], mlp(x)[0], rtol=1e-12)
    with torch.no_grad():
        mlp.out_weight[0, :, 0] = 3.0 * h[0]
    ratio = bench.cancellation_ratio(mlp, x)
    assert ratio[0].item() == pytest.approx(1.0, rel=1e-12)
    w = mlp.out_weight[1:, :, 0]
    expected = w.norm(dim=1) * h[1:].norm(dim=1) / (w * h[1:]).sum(1).abs()
    assert torch.allclose(ratio[1:], expected.detach(), rtol=1e-12)
    assert bool((ratio >= 1 - 1e-12).all())
    with torch.no_grad():  # zero biases: rescaling a mode's output weights leaves its ratio unchanged
        mlp.out_weight[1] *= 5.0
    assert torch.allclose(bench.cancellation_ratio(mlp, x), ratio, rtol=1e-12)


def test_output_conditioning_smoke(tmp_path, capsys):
    """A tiny oscillator run: block weights and outside weight sum to one per mode; a record per run."""
    from neuralsvd.cli import main as cli

    bench = load_benchmark("output_conditioning")
    run_dir = tmp_path / "run"
    assert cli(["run", "oscillator", "--modes", "3", "--steps", "20", "--set", "model.hidden=(8, 8)", "--no-progress",
                "--out", str(run_dir)]) == 0
    out = tmp_path / "cond.json"
    assert bench.main([str(run_dir), "--exact", "6", "--samples", "256", "--json", str(out)]) == 0
    assert "command: python benchmarks/output_conditioning.py" in capsys.readouterr().out
    rec = json.loads(out.read_text())["records"][0]
    for w, rest, r in zip(rec["block_weights"], rec["outside"], rec["cancellation_ratio"]):
        assert sum(w) + rest == pytest.approx(1.0, abs=1e-12) and rest > -1e-9 and r >= 1


# ---- benchmarks/dynamics.py: its reference solvers against closed forms and independent discretizations


def test_dynamics_generator_1d_matches_ou_closed_form():
    """The 1D generator solver on ``V = θx²/2`` (D = 1) returns the OU eigenvalues ``-kθ``."""
    import numpy as np

    bench = load_benchmark("dynamics")
    theta = 1.7
    lam = bench.generator_1d_eigenvalues(lambda x: 0.5 * theta * x**2, 1.0, -8.0, 8.0, 5, n=1000)
    assert np.allclose(lam, -theta * np.arange(5), rtol=1e-6, atol=1e-9)
    # a double well is not exactly solvable; the extrapolated value agrees with a 4x finer unextrapolated grid
    dw = lambda x: (x**2 - 1) ** 2
    fine = bench._sqra_eigenvalues(dw, 0.25, -3.0, 3.0, 16000, 3)
    assert np.allclose(bench.generator_1d_eigenvalues(dw, 0.25, -3.0, 3.0, 3, n=2000)[1:], fine[1:], rtol=1e-5)


def test_dynamics_ou_reference_and_exact_sampler():
    """OU preset: reference timescales are the closed form ``1/(Δt Σ k_i θ_i)``, the Hermite functions are
    orthonormal under the stationary law, and on the simulated trajectory each one decays by its σ per lag."""
    import numpy as np

    bench = load_benchmark("dynamics")
    system = bench.make_ou(1.0)
    rates = np.array([1.0, 1.3, 2.0, 2.3, 2.6])  # (1,0), (0,1), (2,0), (1,1), (0,2) for θ = (1, 1.3)
    assert np.allclose(system.timescales, 1 / (rates * 0.5), rtol=1e-12)
    assert np.allclose(system.sigma, np.exp(-rates * 0.5 * system.lag), rtol=1e-12)
    psi = system.eigenfunctions(system.stationary)
    assert np.allclose(psi.T @ psi / len(psi), np.eye(5), atol=0.03)
    x = np.concatenate([system.eigenfunctions(t[:-system.lag]) for t in system.train])
    y = np.concatenate([system.eigenfunctions(t[system.lag:]) for t in system.train])
    assert np.allclose((x * y).mean(0) / (x * x).mean(0), system.sigma, atol=0.03)
    # closed-form VAMP-2 of the true eigenfunctions: 1 + Σ σ²
    assert bench.vamp2(system.eigenfunctions, system.test, system.lag) == pytest.approx(
        1 + np.sum(system.sigma**2), abs=0.05)


def test_dynamics_logistic_reference_against_ulam_and_population_covariances():
    """The noisy logistic map's eigenvalues from the (2M+1)² matrix agree with an Ulam discretization of
    its transition kernel; the least-squares operator on an invariant span recovers them exactly from the
    population covariances, and approximately from a simulated trajectory."""
    import numpy as np

    bench = load_benchmark("dynamics")
    m = 10
    true = bench.logistic_eigenvalues(m)
    n = 800
    x = (np.arange(n) + 0.5) / n
    z = (x[None, :] - bench.logistic_map(x)[:, None] + 0.5) % 1 - 0.5
    kernel = np.cos(np.pi * z) ** (2 * m)
    ulam = np.linalg.eigvals(kernel / kernel.sum(1, keepdims=True))
    ulam = ulam[np.argsort(-np.abs(ulam))]
    assert np.allclose(ulam[:5], true[:5], atol=1e-6)
    assert abs(true[0] - 1) < 1e-10 and abs(true[1]) > 0.2 and true[1].imag != 0  # a complex pair: not normal

    # span(1, α_1..α_2M) = span(α_0..α_2M) is invariant under the Koopman operator
    alphas = lambda u: np.stack([bench.logistic_noise_feature(bench.logistic_map(u[:, 0]), i, m)
                                 for i in range(1, 2 * m + 1)], axis=1)
    pop = bench.top_eigenvalues(*bench.logistic_population_covariances(alphas, m), 3)
    assert bench.directed_hausdorff(pop, true[:3]) < 1e-8
    traj = bench.simulate_logistic(m, 20_000, np.random.default_rng(0))[:, None]
    emp = bench.top_eigenvalues(*bench.logistic_empirical_covariances(alphas, [traj]), 3)
    assert bench.directed_hausdorff(emp, true[:3]) < 0.05
    assert bench.directed_hausdorff(np.array([1, 5, 6]), np.array([2, 4, 7])) == 1.0  # kooplearn's example


def test_dynamics_logistic_reference_matches_kooplearn():
    kooplearn = pytest.importorskip("kooplearn.datasets")
    import numpy as np

    bench = load_benchmark("dynamics")
    theirs = kooplearn.compute_logistic_map_eig(M=10)
    theirs = theirs[np.argsort(-np.abs(theirs))]
    assert np.allclose(bench.logistic_eigenvalues(10)[:6], theirs[:6], atol=1e-6)


def test_dynamics_vamp2_matches_deeptime():
    pytest.importorskip("deeptime")
    from deeptime.decomposition import VAMP

    bench = load_benchmark("dynamics")
    system = bench.make_ou(0.25)
    model = VAMP(lagtime=system.lag, observable_transform=system.eigenfunctions).fit(system.test).fetch_model()
    assert bench.vamp2(system.eigenfunctions, system.test, system.lag) == pytest.approx(model.score(2), rel=1e-6)


def test_dynamics_skips_missing_peers(monkeypatch, capsys, tmp_path):
    """Without deeptime/kooplearn the peers and the systems simulated by deeptime are skipped, not failed."""
    bench = load_benchmark("dynamics")
    real = bench.has
    monkeypatch.setattr(bench, "has", lambda p: p not in ("deeptime", "kooplearn") and real(p))
    out = tmp_path / "d.json"
    assert bench.main(["--systems", "ou,prinz", "--methods", "vampnet,tica", "--seeds", "0", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "command: python benchmarks/dynamics.py" in printed
    lines = [line.split() for line in printed.splitlines()]
    assert ["prinz", "skipped:", "deeptime", "not", "installed"] in lines
    assert ["ou", "vampnet", "skipped:", "deeptime", "not", "installed"] in lines
    assert ["ou", "tica", "skipped:", "deeptime", "not", "installed"] in lines
    assert json.loads(out.read_text())["systems"]["ou"]["methods"] == {}


def test_dynamics_smoke_neuralsvd_on_ou(tmp_path, capsys):
    """A few NeuralKoopman steps on the OU system: the table, the command, every score in its range."""
    bench = load_benchmark("dynamics")
    out = tmp_path / "d.json"
    assert bench.main(["--systems", "ou", "--methods", "neuralsvd", "--seeds", "0", "1", "--seeds-for", "neuralsvd=1",
                       "--scale", "0.05", "--epochs-scale", "0.2", "--json", str(out),
                       "--plot", str(tmp_path / "d.png")]) == 0
    assert "command: python benchmarks/dynamics.py" in capsys.readouterr().out
    res = json.loads(out.read_text())["systems"]["ou"]
    assert res["steps"] == 2 * 10  # 2 epochs of 2495 pairs at batch 256
    (run,) = res["methods"]["neuralsvd"]["runs"]
    assert 1.0 <= run["vamp2"] <= 1 + res["modes"] and len(run["timescales"]) == res["modes"] == 5
    assert 0.0 <= run["subspace_distance"] <= 1.0 and len(run["timescale_rel_error"]) == 5
    assert run["vamp2"] == pytest.approx(run["own_score"], abs=1e-6)  # our VAMP-2 is the estimator's score
    assert (tmp_path / "d.png").stat().st_size > 10_000


@pytest.mark.slow
def test_trajectory_memory_does_not_grow_with_the_file(tmp_path):
    """Training on a memory-mapped trajectory: the process's own memory (RssAnon) is the same for a 0.8 MB and
    a 32 MB file (a copy of the data would add 32 MB)."""
    bench = load_benchmark("trajectory_memory")
    small, large = (bench.measure(frames, 20, tmp_path) for frames in (100_000, 4_000_000))
    assert large["file_bytes"] > 30 * 2**20
    assert large["rss_anon_kib"] - small["rss_anon_kib"] < 8 * 1024

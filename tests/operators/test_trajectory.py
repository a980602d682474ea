"""Koopman / transfer operators from trajectories: the OU closed form against Gaussian quadrature, the
lagged-pair sampler's statistics, the reversible estimate's symmetry, VAMP scores and the eigenvalue step
against closed forms, bad input, resume after SIGTERM, the estimator and the CLI."""

from __future__ import annotations

import json
import math
import pickle
import signal

import numpy as np
import pytest
import torch
from _runs import assert_identical_runs, on_sample

import neuralsvd as nsvd
from neuralsvd.dynamics import LangevinDoubleWell, OrnsteinUhlenbeck, implied_timescales
from neuralsvd.experiments import get_problem, run
from neuralsvd.fit import estimate_eigenvalues
from neuralsvd.interrupts import TrainingInterrupted
from neuralsvd.koopman import koopman_matrix, sorted_eigenvalues, vamp_score
from neuralsvd.models import ParallelMLP
from neuralsvd.operators import Trajectories, TrajectoryOperator
from neuralsvd.operators.kernel import gaussian_quadrature

F64 = torch.float64


# -- closed forms ------------------------------------------------------------------------------------------------
def test_ou_hermite_functions_are_the_transfer_operator_eigenfunctions():
    """E[φ_k(X_s) | X_0 = x] = e^{-s E_k} φ_k(x) with the exact Gaussian transition integrated by quadrature,
    the functions orthonormal in L²(N(0, I)), and the spectrum ordered as Σ k_i θ_i."""
    ou = OrnsteinUhlenbeck([1.0, 0.6], dt=0.5)
    lag, L = 2, 8
    ref = ou.reference(lag)
    sigma = ref.exact_eigenvalues(L)
    np.testing.assert_allclose(ou.generator_eigenvalues(L), [0, 0.6, 1.0, 1.2, 1.6, 1.8, 2.0, 2.2], atol=1e-12)
    np.testing.assert_allclose(sigma.numpy(), np.exp(-1.0 * ou.generator_eigenvalues(L)), rtol=1e-12)
    s = lag * ou.dt
    a = torch.tensor(np.exp(-ou.rates * s), dtype=F64)
    for x in torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=F64):
        rule = gaussian_quadrature(a * x, torch.diag((1 - a**2).sqrt()))
        lhs = (rule.weights[:, None] * ou.eigenfunctions(rule.points, L)).sum(0)
        np.testing.assert_allclose(lhs.numpy(), (sigma * ou.eigenfunctions(x[None], L)[0]).numpy(), atol=1e-9)
    quad = ref.quadrature()
    values = ou.eigenfunctions(quad.points, L)
    np.testing.assert_allclose(quad.inner(values, values).numpy(), np.eye(L), atol=1e-10)
    np.testing.assert_allclose(implied_timescales(sigma[1:], lag), 1 / (ou.dt * ou.generator_eigenvalues(L)[1:]),
                               rtol=1e-12)


def test_ou_simulation_has_the_exact_lagged_covariance():
    ou = OrnsteinUhlenbeck([1.0, 0.25], dt=0.5)
    x = ou.simulate(3, 200_000, seed=1).astype(np.float64)  # (N, 3, 2)
    for lag in (1, 2):
        cov = (x[:, 0] * x[:, lag]).mean(0)  # E[x_i(0) x_i(lag dt)] = e^{-θ_i lag dt}
        np.testing.assert_allclose(cov, np.exp(-ou.rates * lag * ou.dt), atol=6e-3)  # 5σ of 1e6^-½·1.2


def test_double_well_reference_is_the_ou_spectrum_for_a_quadratic_potential():
    """With barrier → a harmonic well the generator's finite-difference reference must give OU's E_k = k·V''.
    V = h (x² - 1)² is not quadratic, so check the machinery on the Schrödinger form at a known case: the
    effective potential of V = κ/2 y² + h (x²-1)² separates, and E_1 of the y part is κ."""
    system = LangevinDoubleWell(barrier=1.0, stiffness=3.0, curvature=0.0, beta=1.0)
    ref = system.reference(1, 6, points=64, half_width=4.0)
    rates = ref.rates
    assert abs(rates[0]) < 2e-3  # the constant: E_0 = 0
    assert np.isclose(rates, 3.0, atol=1e-2).any()  # the y mode, E = κ
    x_modes = rates[~np.isclose(rates, 3.0, atol=1e-2)]
    quad = ref.quadrature()  # the L²(μ) rule: weights sum to 1, the functions orthonormal
    assert float(quad.weights.sum()) == pytest.approx(1.0, abs=1e-8)
    values = ref.exact_eigenfunctions(quad.points, 4)
    np.testing.assert_allclose(quad.inner(values, values).numpy(), np.eye(4), atol=1e-6)
    assert np.isclose(x_modes[1] + 3.0, rates, atol=1e-2).any()  # separable: sums of the two 1D spectra


# -- the sampler -----------------------------------------------------------------------------------------------
def _labelled(lengths, dim=2):
    """Trajectories whose frames encode (trajectory, time): x[t] = (1000 i + t, -t, ...)."""
    return [np.stack([1000 * i + np.arange(T), -np.arange(T)] + [np.zeros(T)] * (dim - 2), 1).astype(np.float64)
            for i, T in enumerate(lengths)]


def test_lagged_pairs_are_uniform_over_valid_starts_and_respect_boundaries():
    lengths, lag = [5, 3, 7], 2
    op = TrajectoryOperator(_labelled(lengths), lag, reversible=False)
    valid = [(i, t) for i, T in enumerate(lengths) for t in range(T - lag)]
    assert op.num_pairs == len(valid) == 9
    n = 90_000
    x, y = op.sample_pair(n, torch.Generator().manual_seed(0), F64)
    traj, t = (x[:, 0] // 1000).long(), (x[:, 0] % 1000).long()
    assert torch.equal(y[:, 0] - x[:, 0], torch.full((n,), float(lag), dtype=F64))  # same trajectory, lag steps
    assert torch.equal(y[:, 1], x[:, 1] - lag)
    counts = {pair: 0 for pair in valid}
    for key in zip(traj.tolist(), t.tolist()):
        counts[key] += 1  # KeyError if an invalid start was drawn
    expected, sd = n / 9, math.sqrt(n / 9 * (1 - 1 / 9))
    assert all(abs(c - expected) < 5 * sd for c in counts.values()), counts


def test_equal_length_trajectories_are_never_joined_and_memmaps_read_the_same_pairs(tmp_path):
    arr = np.stack(_labelled([6, 6, 6]))  # (3, 6, 2)
    np.save(tmp_path / "a.npy", arr)
    lag = 4
    in_memory = TrajectoryOperator(arr, lag)
    on_disk = TrajectoryOperator(str(tmp_path / "a.npy"), lag)
    listed = TrajectoryOperator([arr[0], tmp_path / "a.npy"], lag)
    assert isinstance(on_disk.trajectories.blocks[0].array, np.memmap)
    assert in_memory.num_pairs == on_disk.num_pairs == 6 and listed.num_pairs == 8
    index = torch.arange(6)
    for a, b in zip(in_memory.lagged_pairs(index, dtype=F64), on_disk.lagged_pairs(index, dtype=F64)):
        assert torch.equal(a, b)
    x, y = in_memory.lagged_pairs(index, dtype=F64)
    assert torch.equal(x[:, 0] // 1000, y[:, 0] // 1000) and torch.equal(y[:, 0] - x[:, 0], torch.full((6,), 4.0, dtype=F64))


def test_held_out_split_cuts_every_trajectory_in_time():
    data = Trajectories(_labelled([10, 20]) + [np.stack(_labelled([8, 8]))])
    first, last = data.split(0.25, lag=1)
    assert first.lengths == [7, 15, 6, 6] and last.lengths == [3, 5, 2, 2]  # ceil(0.25 T) held out
    assert [a.shape[0] + b.shape[0] for a, b in zip(first.frames(), last.frames())] == data.lengths
    for a, b in zip(first.frames(), last.frames()):
        assert b[0, 1] == a[-1, 1] - 1  # the held-out part continues the same trajectory in time
    with pytest.raises(ValueError, match="too short"):
        data.split(0.25, lag=2)  # the 8-frame trajectories hold out 2 frames: no pair at lag 2


def test_reversible_batches_interleave_pairs_so_halves_hold_whole_pairs():
    op = TrajectoryOperator(_labelled([20, 30]), 3)
    x = op.sample(8, torch.Generator().manual_seed(1), F64)  # 8 pairs -> 16 rows
    assert x.shape == (16, 2)
    assert torch.equal(x[1::2, 0] - x[0::2, 0], torch.full((8,), 3.0, dtype=F64))
    fx, tfx = op.apply(lambda v: v[:, :1] ** 2, x)
    torch.testing.assert_close(tfx[0::2], fx[1::2])  # (Tf) at a row: f at its partner
    torch.testing.assert_close(tfx[1::2], fx[0::2])
    with pytest.raises(ValueError, match="even number of pairs"):
        op.sample(7)


def test_reversible_estimate_is_self_adjoint_with_the_constant_exact():
    """Population read-out of the reversible operator: A = E[f Tfᵀ] = ½(C01 + C10) symmetric, B = ½(C00 + C11),
    T1 = 1; the non-reversible estimate of the same data is not symmetric."""
    ou = OrnsteinUhlenbeck([1.0, 0.3], dt=0.3)
    data = ou.simulate(500, 3, seed=2).astype(np.float64)
    torch.manual_seed(0)
    net = ParallelMLP(2, 3, hidden=(8,)).double()
    f = TrajectoryOperator(data, 2).pinned_model(net)
    op = TrajectoryOperator(data, 2)
    a = b = 0
    with torch.no_grad():
        for x in op.evaluation_batches(1, 100, None, F64):
            fx, tfx = op.apply(f, x)
            a, b = a + fx.T @ tfx, b + fx.T @ fx
    a, b = a / (2 * op.num_pairs), b / (2 * op.num_pairs)
    x0, x1 = op.lagged_pairs(torch.arange(op.num_pairs), dtype=F64)
    with torch.no_grad():
        f0, f1 = f(x0), f(x1)
    n = op.num_pairs
    c01, c00, c11 = f0.T @ f1 / n, f0.T @ f0 / n, f1.T @ f1 / n
    torch.testing.assert_close(a, a.T, rtol=0, atol=1e-14)
    torch.testing.assert_close(a, 0.5 * (c01 + c01.T))
    torch.testing.assert_close(b, 0.5 * (c00 + c11))
    assert float(a[0, 0]) == pytest.approx(1.0, abs=1e-14)  # ⟨1, T1⟩ = 1
    assert float((c01 - c01.T).abs().max()) > 1e-4  # the raw lagged covariance is not symmetric
    readout = estimate_eigenvalues(f, op, 1, 64, torch.Generator(), F64)
    assert float(readout.eigenvalues[0]) == pytest.approx(1.0, abs=1e-12)


# -- scores and eigenvalues -------------------------------------------------------------------------------------------
def test_vamp2_of_the_exact_functions_and_its_invariance():
    ou = OrnsteinUhlenbeck([1.0, 0.6], dt=1.0)
    x = ou.simulate(2, 200_000, seed=3).astype(np.float64)
    f0, f1 = (ou.eigenfunctions(torch.from_numpy(x[:, t]), 4)[:, 1:] for t in (0, 1))
    sigma = ou.reference(1).exact_eigenvalues(4).numpy()[1:]
    score = vamp_score(f0, f1)
    assert score == pytest.approx(1 + (sigma**2).sum(), abs=0.01)
    mix = torch.tensor([[2.0, 0.3, 0.0], [0.1, -1.0, 0.5], [0.0, 0.2, 3.0]], dtype=F64)
    assert vamp_score(f0 @ mix + 5.0, f1 @ mix.T) == pytest.approx(score, rel=1e-10)  # a score of the spans
    assert vamp_score(f0, f0) == pytest.approx(4.0, rel=1e-10)  # the ceiling L + 1


def test_eigenvalues_in_the_learned_span_of_a_non_normal_linear_system():
    """x_{t+1} = A x_t + noise with non-symmetric A: on the dictionary [1, x] the Koopman eigenvalues are
    1 and the eigenvalues of A (complex here), recovered by koopman_matrix on simulated data."""
    rng = np.random.default_rng(4)
    a = np.array([[0.8, -0.5], [0.3, 0.7]])  # eigenvalues 0.75 ± 0.385i
    x = np.zeros((100_000, 2))
    for t in range(1, x.shape[0]):
        x[t] = a @ x[t - 1] + rng.standard_normal(2)
    values = sorted_eigenvalues(koopman_matrix(x[:-1], x[1:]))
    expected = np.concatenate([[1.0], np.linalg.eigvals(a)])
    assert np.allclose(values[0], 1.0, atol=1e-10)
    np.testing.assert_allclose(np.sort_complex(values[1:]), np.sort_complex(expected[1:]), atol=1e-2)


# -- bad input ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("data,lag,message", [
    (np.zeros((5, 2)), 5, "shorter than a trajectory"),
    (np.zeros((5, 2)), 0, "positive integer"),
    ([np.zeros((5, 2)), np.zeros((5, 3))], 1, "differ in dimension"),
    (np.array([[0.0, 1.0], [np.nan, 1.0], [2.0, 2.0]]), 1, "NaN"),
    (np.zeros(10), 1, r"1-D .* \(T, d\)"),
    ([], 1, "empty list"),
    (np.zeros((2, 3, 4, 5)), 1, r"\(T, d\) or \(N, T, d\)"),
    ("missing.npy", 1, "not a .npy file"),
])
def test_bad_trajectories_get_a_clear_message(data, lag, message):
    with pytest.raises(ValueError, match=message):
        TrajectoryOperator(data, lag)


def test_nan_in_a_memory_mapped_file_is_found(tmp_path):
    arr = np.zeros((3, 10, 2), dtype=np.float32)
    arr[2, 7, 1] = np.inf
    np.save(tmp_path / "bad.npy", arr)
    with pytest.raises(ValueError, match="NaN or infinite"):
        Trajectories(tmp_path / "bad.npy")


# -- training: resume after SIGTERM (data-parallel equality: tests/test_distributed.py) -------------------------
def _ou_operator() -> TrajectoryOperator:
    return TrajectoryOperator(OrnsteinUhlenbeck([1.0, 0.5], 0.5).simulate(300, 4, seed=7), 2)


def _pinned() -> torch.nn.Module:
    torch.manual_seed(0)
    return _ou_operator().pinned_model(ParallelMLP(2, 2, hidden=(16,)))


RUN = {"steps": 60, "batch_size": 32, "lr": 3e-3, "ema_decay": 0.9, "checkpoint_every": 20, "log_every": 10,
       "progress": False, "eval_batches": 2}


@pytest.mark.filterwarnings("ignore:modes .* look unconverged")  # 60 steps: a mechanics test
def test_sigterm_saves_and_resume_is_bitwise_identical(tmp_path):
    whole = nsvd.fit(_pinned(), _ou_operator(), nsvd.NestedLoRA(3), checkpoint_dir=tmp_path / "a", **RUN)
    op = on_sample(_ou_operator(), lambda k: k == 34 and __import__("os").kill(__import__("os").getpid(),
                                                                                signal.SIGTERM))
    with pytest.raises(TrainingInterrupted) as info:
        nsvd.fit(_pinned(), op, nsvd.NestedLoRA(3), checkpoint_dir=tmp_path / "b", **RUN)
    assert (info.value.signal, info.value.step, info.value.saved) == (signal.SIGTERM, 33, True)
    resumed = nsvd.fit(_pinned(), _ou_operator(), nsvd.NestedLoRA(3), checkpoint_dir=tmp_path / "b", resume=True,
                       **RUN)
    assert resumed.extras["resumed_from"] == 33
    assert_identical_runs(whole, resumed)


def test_non_reversible_svd_trains_a_pair_and_reversible_svd_is_allowed():
    op = TrajectoryOperator(OrnsteinUhlenbeck([1.0], 0.5).simulate(400, 4, seed=8), 1, reversible=False)
    torch.manual_seed(0)
    pair = op.pinned_models(ParallelMLP(1, 1, hidden=(8,)), ParallelMLP(1, 1, hidden=(8,)))
    with pytest.raises(ValueError, match="not self-adjoint"):
        nsvd.fit(pair[0], op, nsvd.NestedLoRA(2), steps=1, batch_size=8, progress=False)
    result = nsvd.fit(pair, op, nsvd.NestedLoRA(2), steps=20, batch_size=8, progress=False)
    assert result.is_svd and float(result.singular_values[0]) == pytest.approx(1.0, abs=1e-12)


# -- the estimator and the CLI --------------------------------------------------------------------------------
def test_neural_koopman_learns_ou_timescales():
    """Fast: 2 modes of a 2D OU (rates 1, 0.7; σ = e^{-0.7}, e^{-1}: the two linear modes) from 100 000 exact
    transitions in 1000 steps (measured: timescales within 0.7%, subspace distance 4e-3): timescales within
    2%, the learned functions within 1e-2 subspace distance of the Hermite ones; the held-out VAMP-2 within
    sampling error of 1 + Σσ²."""
    ou = OrnsteinUhlenbeck([1.0, 0.7], dt=1.0)
    data = ou.simulate(2, 100_000, seed=9)
    est = nsvd.estimators.NeuralKoopman(n_components=2, lagtime=1, steps=1000, batch_size=512).fit(data)
    exact = implied_timescales(ou.reference(1).exact_eigenvalues(3)[1:], 1)
    np.testing.assert_allclose(est.timescales_, exact, rtol=2e-2)
    assert est.singular_values_.shape == (2,) and est.timescales_[0] > est.timescales_[1]
    model = est.fetch_model()
    x = data[:2000, 0]
    values = model(x)  # a plain callable numpy -> numpy
    assert isinstance(values, np.ndarray) and values.shape == (2000, 2)
    blob = pickle.dumps(model)
    assert len(blob) < 200_000  # the weights, not the 1.6 MB of training data
    np.testing.assert_array_equal(pickle.loads(blob)(x), values)
    np.testing.assert_allclose(est.transform(data[:, 0]).mean(0), 0, atol=0.02)
    np.testing.assert_allclose(est.transform(data[:, 0]).std(0), 1, atol=0.02)
    quad = ou.reference(1).quadrature()
    learned = torch.from_numpy(model(quad.points.numpy()))
    true = ou.eigenfunctions(quad.points, 3)[:, 1:]
    gram, cross = quad.inner(learned, learned), quad.inner(learned, true)
    assert nsvd.metrics.subspace_distance(gram, cross) < 1e-2
    held_out = ou.simulate(2, 50_000, seed=10)
    assert 1.0 < est.score(held_out) <= 3.0
    assert est.score(held_out) == pytest.approx(1 + (np.exp(-np.array([0.7, 1.0])) ** 2).sum(), abs=0.03)
    assert est.eigenvalues_.shape == (3,) and np.allclose(est.eigenvalues_.imag, 0, atol=1e-6)


@pytest.mark.filterwarnings("ignore:modes .* look unconverged")
def test_cli_trajectory_run_and_load(tmp_path):
    data = OrnsteinUhlenbeck([1.0, 0.5], 0.5).simulate(2000, 3, seed=11)
    np.save(tmp_path / "traj.npy", data)
    config = get_problem("trajectory").default_config().with_overrides(
        [f"data.path={str(tmp_path / 'traj.npy')!r}", "data.lag=2", "modes=2", "train.steps=30",
         "model.hidden=(8,)"])
    metrics = run(config, tmp_path / "run", progress=False, echo=lambda s: None)
    assert len(metrics["singular_values"]) == 2 and len(metrics["timescales"]) == 2
    assert metrics["eigenvalues"][0] == pytest.approx(1.0, abs=1e-9)  # the pinned constant
    assert metrics["timescales"][0] >= metrics["timescales"][1] > 0
    assert 1.0 <= metrics["vamp2"] <= 3.0 + 1e-9
    for name in ("eigenfunctions.png", "timescales.png", "result.pt", "config.json"):
        assert (tmp_path / "run" / name).stat().st_size > 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["modes"] == 2 and saved["operator"]["path"] == str(tmp_path / "traj.npy")
    loaded = nsvd.load(tmp_path / "run")
    x = torch.from_numpy(data[0, :5]).float()
    assert loaded.eigenfunctions(x).shape == (5, 3)
    np.testing.assert_allclose(loaded.eigenvalues.numpy(), metrics["eigenvalues"], rtol=1e-12)


@pytest.mark.filterwarnings("ignore:modes .* look unconverged")  # 20 steps: the outputs, not the accuracy
def test_ou_process_preset_reports_exact_timescales(tmp_path):
    config = get_problem("ou-process").default_config().with_overrides(
        ["train.steps=20", "modes=2", "model.hidden=(8,)", "operator.trajectories=5000",
         "operator.held_out_trajectories=1000"])
    metrics = run(config, tmp_path, progress=False, echo=lambda s: None)
    np.testing.assert_allclose(metrics["exact_timescales"], [1 / 0.6, 1.0], rtol=1e-12)
    assert metrics["exact_eigenvalues"] == pytest.approx([1.0, math.exp(-0.6), math.exp(-1.0)], rel=1e-12)
    assert metrics["subspace_distance_all"] is not None and len(metrics["timescale_relative_error"]) == 2


@pytest.mark.filterwarnings("ignore:modes .* look unconverged")
def test_compare_nestings_on_a_trajectory_file(tmp_path):
    from neuralsvd.experiments.compare import compare

    np.save(tmp_path / "traj.npy", OrnsteinUhlenbeck([1.0, 0.5], 0.5).simulate(1000, 2, seed=12))
    config = get_problem("trajectory").default_config().with_overrides(
        [f"data.path={str(tmp_path / 'traj.npy')!r}", "data.lag=1", "modes=2", "train.steps=10",
         "model.hidden=(8,)"])
    records = compare(config, ["neuralsvd-seq", "neuralsvd-joint"], tmp_path / "cmp", echo=lambda s: None)
    assert [r["status"] for r in records] == ["ok", "ok"]
    assert all(len(r["timescales"]) == 2 and r["vamp2"] is not None for r in records)
    assert (tmp_path / "cmp" / "comparison.md").exists()


def test_non_reversible_estimator_on_a_non_normal_linear_system():
    """x_{t+1} = A x_t + ε, A non-normal with complex eigenvalues 0.75 ± 0.384i: the general SVD's top two
    singular values are the canonical correlations of (x_t, x_{t+1}) (0.882, 0.805; the next, 0.882², is
    lower), and the eigenvalue step in the learned span recovers eig(A)."""
    from scipy.linalg import solve_discrete_lyapunov, sqrtm

    a = np.array([[0.8, -0.5], [0.3, 0.7]])
    cov = solve_discrete_lyapunov(a, np.eye(2))  # stationary covariance
    white = np.linalg.inv(sqrtm(cov).real)
    rho = np.linalg.svd(white @ cov @ a.T @ white, compute_uv=False)
    rng = np.random.default_rng(14)
    x0 = rng.multivariate_normal(np.zeros(2), cov, size=100_000)
    data = np.stack([x0, x0 @ a.T + rng.standard_normal(x0.shape)], 1)  # 10⁵ trajectories of 2 frames
    est = nsvd.estimators.NeuralKoopman(2, 1, reversible=False, steps=1000, batch_size=512).fit(data)
    np.testing.assert_allclose(est.singular_values_, rho, rtol=1e-2)
    assert est.eigenvalues_[0] == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(np.sort_complex(est.eigenvalues_[1:]), np.sort_complex(np.linalg.eigvals(a)), atol=1e-2)
    left, right = est.transform(data[:, 0]), est.transform(data[:, 1], lagged=True)
    np.testing.assert_allclose((left * right).mean(0), rho, rtol=2e-2)  # standardized: correlations = σ


def test_fetched_model_is_a_deeptime_observable_transform():
    """deeptime's VAMP on the fetched model's features gives our singular values (the same spans)."""
    deeptime = pytest.importorskip("deeptime")
    data = OrnsteinUhlenbeck([1.0, 0.7], 1.0).simulate(20_000, 1, seed=13)[0]
    est = nsvd.estimators.NeuralKoopman(2, 1, steps=200).fit(data)
    vamp = deeptime.decomposition.VAMP(lagtime=1, observable_transform=est.fetch_model()).fit(data).fetch_model()
    np.testing.assert_allclose(vamp.singular_values[:2], est.singular_values_, rtol=5e-3)


@pytest.mark.slow
def test_ou_process_preset_goal(tmp_path):
    """Issue 21 goal: the ou-process preset (2D, 5 modes beyond the constant, 12k steps): every timescale within
    1%, subspace distance to the Hermite functions ≤ 1e-2."""
    metrics = run(get_problem("ou-process").default_config(), tmp_path, progress=False, echo=lambda s: None)
    assert metrics["max_timescale_relative_error"] <= 1e-2
    assert metrics["subspace_distance_all"] <= 1e-2

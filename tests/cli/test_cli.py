"""The command line and the experiment runner: outputs, their truthfulness, errors, overrides, resume."""

from __future__ import annotations

import json

import pytest
import torch

from neuralsvd import cli
from neuralsvd.cli.run import run
from neuralsvd.operators import HarmonicOscillator
from neuralsvd.problems import ConfigError, ExperimentConfig, get_problem

TINY = ["--set", "model.hidden=(16, 16)", "--set", "train.eval_batches=2", "--no-progress"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert cli.main(["run", "oscillator", "--steps", "30", "--modes", "3", "--out", str(out), *TINY]) == 0
    return out


def test_run_writes_outputs(tiny_run):
    for name in ("config.json", "metrics.json", "eigenfunctions.png", "training_curve.png", "checkpoint.pt",
                 "history.csv", "result.pt"):
        assert (tiny_run / name).stat().st_size > 0, name


def test_metrics_json_is_true(tiny_run):
    m = json.loads((tiny_run / "metrics.json").read_text())
    for key in ("problem", "method", "modes", "steps", "batch_size", "seed", "device", "wall_seconds",
                "steps_per_second", "eigenvalues", "exact_eigenvalues", "eigenvalue_relative_error",
                "mean_eigenvalue_relative_error", "angle_distance", "subspace_distance_avg",
                "subspace_distance_all", "orthogonality_error"):
        assert key in m, key
    assert (m["problem"], m["method"], m["modes"], m["steps"]) == ("oscillator", "neuralsvd-seq", 3, 30)
    exact = HarmonicOscillator(2).exact_eigenvalues(3)
    assert m["exact_eigenvalues"] == exact.tolist()
    ev = torch.tensor(m["eigenvalues"], dtype=torch.float64)
    rel = (ev - exact).abs() / exact.abs()
    assert torch.allclose(torch.tensor(m["eigenvalue_relative_error"], dtype=torch.float64), rel, rtol=1e-12)
    assert m["mean_eigenvalue_relative_error"] == pytest.approx(float(rel.mean()), rel=1e-12)
    assert 0 <= m["subspace_distance_all"] <= 1 and 0 <= m["angle_distance"] <= 1
    assert m["steps_per_second"] == pytest.approx(30 / m["wall_seconds"], rel=1e-6)
    cfg = json.loads((tiny_run / "config.json").read_text())
    assert cfg["train"]["steps"] == 30 and cfg["model"]["hidden"] == [16, 16]


def test_resume_continues_and_refuses_changed_config(tiny_run, capsys):
    assert cli.main(["run", "oscillator", "--steps", "40", "--modes", "3", "--out", str(tiny_run), "--resume", *TINY]) == 0
    assert json.loads((tiny_run / "metrics.json").read_text())["steps"] == 40
    ckpt = torch.load(tiny_run / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 40
    code = cli.main(["run", "oscillator", "--steps", "50", "--modes", "3", "--out", str(tiny_run), "--resume",
                     "--set", "train.lr=0.5", *TINY])
    assert code == 2
    assert "train.lr (0.001 -> 0.5)" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["run", "helium"], "valid problems: hydrogen, hydrogen-paper, oscillator"),
    (["run", "oscillator", "--method", "magic"], "valid methods: neuralsvd-seq, neuralsvd-joint"),
    (["run", "oscillator", "--set", "lrr=1"], "unknown config key 'lrr'"),
    (["run", "oscillator", "--set", "train.steps=abc"], "train.steps expects an integer"),
    (["run", "oscillator", "--set", "nonsense"], "not of the form key=value"),
    (["run", "oscillator", "--set", "train.optimizer=lbfgs", "--steps", "1"], "valid: adam, rmsprop, sgd"),
])
def test_cli_errors_are_clear(argv, message, capsys, tmp_path):
    assert cli.main([*argv, "--out", str(tmp_path / "x")]) == 2
    assert message in capsys.readouterr().err


def test_resume_needs_out(capsys):
    assert cli.main(["run", "oscillator", "--resume"]) == 2
    assert "--resume needs --out" in capsys.readouterr().err


def test_list_names_problems_and_methods(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("hydrogen", "hydrogen-paper", "oscillator", "neuralsvd-seq", "neuralsvd-joint"):
        assert name in out


def test_overrides_coerce_types_and_resolve_bare_keys():
    cfg = get_problem("hydrogen").default_config().with_overrides(
        ["lr=3e-4", "hidden=(64, 64)", "steps=7", "operator.sampler_std=(2.0, 8.0)", "ema_decay=0.99", "modes=16"])
    assert cfg.train.lr == 3e-4 and cfg.model.hidden == (64, 64) and cfg.train.steps == 7
    assert cfg.operator["sampler_std"] == (2.0, 8.0) and cfg.train.ema_decay == 0.99 and cfg.modes == 16
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="expects a number"):
        cfg.with_overrides(["lr=fast"])


def test_envelope_scale_overrides_and_spread_prior():
    from neuralsvd.numerics.sampling import Mixture, RadialExponential
    from neuralsvd.problems import make_model, make_operator
    from neuralsvd.problems.presets import spread_envelope_scales

    cfg = get_problem("hydrogen").default_config().with_overrides(["modes=16"])
    assert cfg.model.envelope_scale == "spread"
    scales = make_model(cfg, 2).log_envelope_scale.exp().detach()
    torch.testing.assert_close(scales, torch.tensor(spread_envelope_scales(16)))
    assert scales[0].item() == pytest.approx(1.2) and scales[4].item() == pytest.approx(6.0)  # 1.2 (1 + 2 sqrt(l))
    assert bool((scales[1:] > scales[:-1]).all())
    assert cfg.with_overrides(["model.envelope_scale=3"]).model.envelope_scale == 3.0
    assert cfg.with_overrides(["model.envelope_scale=(2, 3)"]).model.envelope_scale == (2.0, 3.0)
    with pytest.raises(ValueError, match="envelope_scale must be one or one per mode, a positive finite number, got 'wide'"):
        make_model(cfg.with_overrides(["model.envelope_scale=wide"]), 2)
    with pytest.raises(ValueError, match="envelope_scale must be one number or 16"):
        make_model(cfg.with_overrides(["model.envelope_scale=(2, 3)"]), 2)
    sampler = make_operator(cfg).sampler
    assert isinstance(sampler, Mixture) and all(isinstance(c, RadialExponential) for c in sampler.components)
    mixed = make_operator(cfg.with_overrides(["operator.sampler_std=(1.0, 4.0)"])).sampler
    assert [type(c).__name__ for c in mixed.components] == ["Gaussian", "Gaussian"] + ["RadialExponential"] * 5
    with pytest.raises(ConfigError, match="needs a sampler"):
        make_operator(cfg.with_overrides(["operator.sampler_exp_scale=None"]))


@pytest.mark.parametrize("problem,overrides,field", [
    ("cycle-graph", ["train.steps=5"], "subspace_distance_all"),
    ("digits-views", ["train.steps=5", "model.hidden=(16,)"], "cca_precision_at_10"),
])
def test_data_problems_run_end_to_end(problem, overrides, field, tmp_path):
    config = get_problem(problem).default_config().with_overrides(overrides + ["train.eval_batches=2"])
    metrics = run(config, tmp_path, progress=False, echo=lambda s: None)
    assert metrics["status"] in ("ok", "unconverged") and field in metrics  # 5 steps: finished
    for name in ("metrics.json", "eigenfunctions.png", "config.json", "checkpoint.pt"):
        assert (tmp_path / name).stat().st_size > 0


@pytest.mark.parametrize("dim", [3, 10])
def test_oscillator_in_any_dimension_finishes_with_every_output(dim, tmp_path):
    """d > 2: metrics from the exact spectrum (quadrature in d = 3, randomized QMC in d = 10) and the
    eigenfunction figure as slices; anisotropic frequencies as a tuple."""
    omega = tuple(1.0 + 0.1 * i for i in range(dim))
    out = tmp_path / f"d{dim}"
    args = ["run", "oscillator", "--steps", "5", "--modes", "3", "--out", str(out), "--set", f"operator.dim={dim}",
            "--set", f"operator.omega={omega}", *TINY]
    assert cli.main(args) == 0
    for name in ("metrics.json", "eigenfunctions.png", "training_curve.png", "result.pt"):
        assert (out / name).stat().st_size > 0, name
    m = json.loads((out / "metrics.json").read_text())
    exact = HarmonicOscillator(dim, omega).exact_eigenvalues(3)
    assert m["exact_eigenvalues"] == pytest.approx(exact.tolist(), rel=1e-12)
    assert exact[0] == pytest.approx(sum(omega)) and exact[1] == pytest.approx(sum(omega) + 2 * omega[0])
    assert m["quadrature_error"] < 1e-3
    assert 0 <= m["subspace_distance_all"] <= 1


def test_oscillator_omega_of_the_wrong_length_is_refused(capsys):
    code = cli.main(["run", "oscillator", "--steps", "1", "--set", "operator.dim=3", "--set", "operator.omega=(1, 2)",
                     *TINY])
    assert code == 2
    assert "operator.omega must be one frequency or a tuple of operator.dim = 3 frequencies" in capsys.readouterr().err


@pytest.mark.parametrize("flags,env,expected", [
    ([], None, 1),                        # the default: one thread
    (["--threads", "2"], None, 2),
    ([], "2", 2),                         # OMP_NUM_THREADS is respected (torch read it at start-up: unchanged)
])
def test_threads_default_option_and_environment(flags, env, expected, monkeypatch, capsys):
    before = torch.get_num_threads()
    if env is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", env)
    try:
        torch.set_num_threads(2)
        cli.main(["run", "no-such-problem", *flags])  # refused after the threads are set
        assert torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(before)
    assert cli.main(["run", "oscillator", "--threads", "0"]) == 2
    assert "--threads must be a positive number" in capsys.readouterr().err

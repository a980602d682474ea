"""A trained run as an artifact: load, eval, export and history.csv (neuralsvd.artifacts, the CLI)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

import neuralsvd as nsvd
from neuralsvd import cli
from neuralsvd.cli import artifacts
from neuralsvd.cli.run import run
from neuralsvd.problems import (
    ExperimentConfig,
    build_model,
    fit_options,
    get_problem,
    make_loss,
    make_operator,
)


def _config(problem: str, **train) -> ExperimentConfig:
    cfg = get_problem(problem).default_config()
    overrides = ["model.hidden=(16, 16)", "train.eval_batches=2", *(f"train.{k}={v!r}" for k, v in train.items())]
    return cfg.with_overrides(overrides)


def _train_and_save(config: ExperimentConfig, out) -> nsvd.FitResult:
    """What `neuralsvd run` does for the artifact: fit, then config.json and result.pt."""
    operator = make_operator(config)
    torch.manual_seed(config.seed)
    result = nsvd.fit(build_model(config, operator), operator, make_loss(config.method, config.modes),
                      **fit_options(config), progress=False)
    (out / "config.json").write_text(json.dumps(config.to_dict()))
    artifacts.save(result, out)
    return result


@pytest.mark.parametrize(("problem", "method", "train"), [
    ("oscillator", "neuralsvd-seq", {"steps": 20}),
    ("oscillator", "spin", {"steps": 20, "readout": "ritz"}),  # a loss read-out (whitening) and Ritz mixing
    ("cycle-graph", "neuralef", {"steps": 20, "dtype": "float64"}),  # indices as points, float64 weights
    ("gaussian-pairs", "neuralsvd-joint", {"steps": 20, "batch_size": 64}),  # SVD: a (left, right) pair
])
def test_loaded_result_reproduces_the_trained_one_exactly(tmp_path, problem, method, train):
    config = _config(problem, **train).with_overrides([f"method={method}", "modes=3"])
    trained = _train_and_save(config, tmp_path)
    loaded = nsvd.load(tmp_path)
    assert loaded.config == config and type(loaded.operator) is type(trained.operator)
    for name in ("eigenvalues", "learned_eigenvalues", "order", "norms"):
        assert torch.equal(getattr(loaded, name), getattr(trained, name)), name
    gen = torch.Generator().manual_seed(7)
    if trained.is_svd:
        x, y = trained.operator.sample_pair(50, gen, torch.float32)
        assert torch.equal(loaded.left_functions(x), trained.left_functions(x))
        assert torch.equal(loaded.right_functions(y), trained.right_functions(y))
    else:
        x = trained.operator.sample(50, gen, torch.float32)
        assert torch.equal(loaded.eigenfunctions(x), trained.eigenfunctions(x))
    torch.testing.assert_close(loaded.history["loss"], trained.history["loss"], rtol=0, atol=0, equal_nan=True)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished run folder, as `neuralsvd run oscillator --steps 25 --modes 3` writes it."""
    out = tmp_path_factory.mktemp("run")
    run(_config("oscillator", steps=25).with_overrides(["modes=3"]), out, progress=False, echo=lambda line: None)
    return out


def test_run_writes_history_csv_and_result(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    loaded = nsvd.load(run_dir)
    assert loaded.eigenvalues.tolist() == metrics["eigenvalues"]  # as in metrics.json, exactly
    rows = list(csv.reader((run_dir / "history.csv").open()))
    assert rows[0] == ["step", "loss", "eigenvalue_0", "eigenvalue_1", "eigenvalue_2"]
    assert len(rows) == 1 + 25 and [int(r[0]) for r in rows[1:]] == list(range(1, 26))
    table = np.array([[float(v) for v in r] for r in rows[1:]])
    np.testing.assert_array_equal(table[:, 1], loaded.history["loss"].numpy())  # repr round-trips floats
    np.testing.assert_array_equal(table[:, 2:], loaded.history["eigenvalues"].numpy())


def test_eval_command_matches_load(run_dir, tmp_path, capsys):
    points = np.random.default_rng(0).normal(size=(40, 2))
    np.save(tmp_path / "x.npy", points)
    assert cli.main(["eval", str(run_dir), "--points", str(tmp_path / "x.npy"), "--out", str(tmp_path / "y.npy")]) == 0
    y = np.load(tmp_path / "y.npy")
    expected = nsvd.load(run_dir).eigenfunctions(torch.from_numpy(points)).double().numpy()
    assert y.shape == (40, 3) and y.dtype == np.float64
    np.testing.assert_array_equal(y, expected)
    assert "(40, 3)" in capsys.readouterr().out


def test_export_is_self_contained_and_matches(run_dir, tmp_path):
    out = tmp_path / "f.pt2"
    assert cli.main(["export", str(run_dir), "--out", str(out)]) == 0
    program = torch.export.load(out).module()
    loaded = nsvd.load(run_dir)
    x = torch.randn(33, 2)
    with torch.no_grad():
        np.testing.assert_allclose(program(x).numpy(), loaded.eigenfunctions(x).numpy(), rtol=1e-5, atol=1e-6)
    # normalized in L²(dx): the exported functions' Gram matrix on the operator's quadrature is ≈ I
    quad = loaded.operator.quadrature()
    with torch.no_grad():
        psi = program(quad.points.float()).double()
    np.testing.assert_allclose(quad.inner(psi, psi).diagonal().numpy(), 1.0, rtol=1e-2)


def _error(argv, capsys) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("neuralsvd: error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_clear_errors_for_foreign_or_corrupted_run_dirs(run_dir, tmp_path, capsys):
    import shutil

    x = tmp_path / "x.npy"
    np.save(x, np.zeros((3, 2)))
    args = ["--points", str(x), "--out", str(tmp_path / "y.npy")]
    assert "is not a directory" in _error(["eval", str(tmp_path / "missing"), *args], capsys)
    assert "no config.json" in _error(["eval", str(tmp_path), *args], capsys)

    older = tmp_path / "older"
    shutil.copytree(run_dir, older)
    (older / "result.pt").unlink()  # a run written before result.pt existed
    assert "no result.pt (written by an older neuralsvd?" in _error(["export", str(older)], capsys)

    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    state = torch.load(other / "result.pt", weights_only=True)
    torch.save({**state, "format": 99, "neuralsvd": "9.0"}, other / "result.pt")
    assert "has format 99 (written by neuralsvd 9.0); this version reads format 1" in _error(
        ["eval", str(other), *args], capsys)

    corrupted = tmp_path / "corrupted"
    shutil.copytree(run_dir, corrupted)
    data = (corrupted / "result.pt").read_bytes()
    (corrupted / "result.pt").write_bytes(data[: len(data) // 2])
    assert "corrupted or truncated" in _error(["eval", str(corrupted), *args], capsys)

    (corrupted / "config.json").write_text('{"problem": "oscillator", "unknown_field": 1}')
    assert "is not a configuration of this neuralsvd version" in _error(["eval", str(corrupted), *args], capsys)

    mismatched = tmp_path / "mismatched"
    shutil.copytree(run_dir, mismatched)
    cfg = json.loads((mismatched / "config.json").read_text())
    cfg["model"]["hidden"] = [8]
    (mismatched / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(artifacts.ArtifactError, match="the saved weights do not fit the configured model"):
        nsvd.load(mismatched)

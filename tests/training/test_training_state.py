"""The training state: resume equality, kill -9, corrupted checkpoints, the divergence guard."""

from __future__ import annotations

import inspect
import json
import math
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from _runs import FIT, assert_identical_runs, on_sample, small_model
from hypothesis import given, settings
from hypothesis import strategies as st

import neuralsvd as nsvd
from neuralsvd import cli
from neuralsvd.models import ParallelMLP
from neuralsvd.operators import HarmonicOscillator, Schrodinger
from neuralsvd.training.checkpoint import CheckpointError, load_checkpoint
from neuralsvd.training.state import STABLE_FRACTION, lr_factor

_model = small_model


class _Interrupt(Exception):
    pass


def _interrupt_after(op, calls: int):
    """Make ``op.sample`` raise on its ``calls``-th call (a crash in the middle of training)."""

    def action(k: int) -> None:
        if k == calls:
            raise _Interrupt

    return on_sample(op, action)


def _params(result) -> list[torch.Tensor]:
    return [p.detach().clone() for p in result.model.parameters()]


def test_resumed_run_is_bitwise_identical(tmp_path):
    whole = nsvd.fit(_model(), HarmonicOscillator(2), nsvd.NestedLoRA(2), checkpoint_dir=tmp_path / "a", **FIT)
    with pytest.raises(_Interrupt):  # 1 validation call + 45 steps, i.e. after the checkpoint at step 40
        nsvd.fit(_model(), _interrupt_after(HarmonicOscillator(2), 47), nsvd.NestedLoRA(2),
                 checkpoint_dir=tmp_path / "b", **FIT)
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["step"] == 40
    resumed = nsvd.fit(_model(), HarmonicOscillator(2), nsvd.NestedLoRA(2), checkpoint_dir=tmp_path / "b",
                       resume=True, **FIT)
    assert resumed.extras["resumed_from"] == 40
    assert_identical_runs(whole, resumed)


def test_callback_sees_the_returned_model_and_changes_nothing():
    """The callback gets (step, model) at every log_every check, the model as fit would return it then
    (EMA weights); a run with a callback ends bitwise identical to one without."""
    kw = {**FIT, "checkpoint_every": 0}
    plain = nsvd.fit(_model(), HarmonicOscillator(2), nsvd.NestedLoRA(2), **kw)
    seen = []

    def callback(step, model):
        seen.append((step, [p.detach().clone() for p in model.parameters()]))
        with torch.no_grad():
            model(torch.zeros(3, 2))

    watched = nsvd.fit(_model(), HarmonicOscillator(2), nsvd.NestedLoRA(2), callback=callback, **kw)
    assert [s for s, _ in seen] == list(range(10, 61, 10))
    for p, q in zip(_params(plain), _params(watched)):
        assert torch.equal(p, q)
    assert torch.equal(plain.eigenvalues, watched.eigenvalues)
    for p, q in zip(seen[-1][1], _params(watched)):  # the last call saw the returned (EMA) weights
        assert torch.equal(p, q)
    assert not torch.equal(seen[0][1][0], seen[-1][1][0])


def _cli_args(out) -> list[str]:
    return ["run", "oscillator", "--modes", "2", "--steps", "1000", "--checkpoint-every", "25", "--out", str(out),
            "--set", "model.hidden=(16, 16)", "--set", "train.eval_batches=2", "--set", "train.log_every=25",
            "--no-progress"]


def test_kill_minus_9_then_resume_matches_uninterrupted(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "neuralsvd.cli"]
    subprocess.run(cmd + _cli_args(tmp_path / "whole"), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(cmd + _cli_args(tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "no checkpoint appeared before the kill"
    step = torch.load(ckpt, weights_only=True)["step"]
    assert step < 1000, "the run finished before it could be killed; make it longer"
    subprocess.run(cmd + _cli_args(tmp_path / "killed") + ["--resume"], check=True, env=env, capture_output=True)
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    b = torch.load(ckpt, weights_only=True)
    assert a["step"] == b["step"] == 1000
    for sa, sb in zip(a["models"], b["models"]):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    ma = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    mb = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert ma["eigenvalues"] == mb["eigenvalues"] and mb["resumed_from_step"] == step


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupted_checkpoint_is_refused_and_kept(tmp_path, damage, capsys):
    nsvd.fit(_model(), HarmonicOscillator(2), nsvd.NestedLoRA(2), checkpoint_dir=tmp_path, **{**FIT, "steps": 20})
    path = tmp_path / "checkpoint.pt"
    data = path.read_bytes()
    garbage = bytes(random.Random(damage).getrandbits(8) for _ in range(4096))
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": garbage, "empty": b""}[damage])
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="unreadable"):
        nsvd.fit(_model(), HarmonicOscillator(2), nsvd.NestedLoRA(2), checkpoint_dir=tmp_path, resume=True, **FIT)
    assert path.read_bytes() == before


@pytest.mark.parametrize("seed", range(20))
def test_any_garbage_file_is_a_checkpoint_error(tmp_path, seed):
    """Whatever random bytes make the unpickler raise, the caller gets a CheckpointError."""
    path = tmp_path / "checkpoint.pt"
    gen = random.Random(seed)
    path.write_bytes(bytes(gen.getrandbits(8) for _ in range(gen.randint(1, 4096))))
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(path)


def test_checkpoint_from_another_model_is_refused(tmp_path):
    nsvd.fit(_model(), HarmonicOscillator(2), nsvd.NestedLoRA(2), checkpoint_dir=tmp_path, **{**FIT, "steps": 20})
    with pytest.raises(CheckpointError, match="does not match"):
        nsvd.fit(ParallelMLP(2, 2, hidden=(8, 8)), HarmonicOscillator(2), nsvd.NestedLoRA(2),
                 checkpoint_dir=tmp_path, resume=True, **FIT)


def _flaky_oscillator(bad_calls: range) -> Schrodinger:
    """The 2D oscillator whose potential returns NaN on the given call numbers (counted after construction,
    where the operator probes the potential for point charges)."""
    count = {"n": 0}

    def potential(x):
        count["n"] += 1
        v = (x * x).sum(-1)
        return torch.full_like(v, float("nan")) if count["n"] in bad_calls else v

    op = Schrodinger(potential, 2, shift=16.0, sampler=nsvd.sampling.Gaussian(2, 4.0))
    count["n"] = 0
    return op


def test_transient_nan_is_rolled_back_and_training_recovers():
    with pytest.warns(RuntimeWarning, match="rolled back to step 20"):
        # rescue=False: the rescue's checks evaluate the potential too and would take call 25 (a NaN there is
        # simply not acted on); here the call must be a training step's
        res = nsvd.fit(_model(), _flaky_oscillator(range(25, 26)), nsvd.NestedLoRA(2),
                       **{**FIT, "log_every": 20, "rescue": False})
    assert res.extras["rollbacks"] == 1 and res.extras["lr_scale"] == 0.5
    assert bool(torch.isfinite(res.eigenvalues).all()) and bool(torch.isfinite(res.history["loss"]).all())


def test_persistent_nan_stops_with_diverged_metrics(tmp_path, monkeypatch, capsys):
    def flaky(params):
        return _flaky_oscillator(range(25, 10**9))

    from neuralsvd.problems import presets

    monkeypatch.setitem(presets.PROBLEMS, "oscillator", presets.PROBLEMS["oscillator"].__class__(
        "oscillator", "flaky", presets.PROBLEMS["oscillator"].default_config, flaky))
    code = cli.main(["run", "oscillator", "--modes", "2", "--steps", "200", "--out", str(tmp_path),
                     "--set", "model.hidden=(16, 16)", "--set", "train.log_every=10", "--no-progress"])
    assert code == 3
    assert "diverged" in capsys.readouterr().err
    metrics = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert metrics["status"] == "diverged" and metrics["eigenvalues"] is None and "rollbacks" in metrics["error"]


@settings(max_examples=25, deadline=None, derandomize=True)
@given(n=st.integers(4, 20), L=st.integers(1, 5), nesting=st.sampled_from(["joint", "sequential"]),
       flips=st.lists(st.booleans(), min_size=5, max_size=5), seed=st.integers(0, 10**6))
def test_loss_invariant_to_sign_flips(n, L, nesting, flips, seed):
    """Flipping f_l (and T f_l) leaves the NestedLoRA value and eigenvalue estimates unchanged."""
    g = torch.Generator().manual_seed(seed)
    fx = torch.randn(n, L, generator=g, dtype=torch.float64)
    k = torch.randn(n, n, generator=g, dtype=torch.float64)
    tfx = (k + k.T) @ fx / n
    sign = torch.tensor([-1.0 if f else 1.0 for f in flips[:L]], dtype=torch.float64)
    loss = nsvd.NestedLoRA(L, nesting=nesting)
    a, b = loss(fx, tfx), loss(fx * sign, tfx * sign)
    assert a.loss.shape == () and a.eigenvalues.shape == (L,) and a.gram.shape == (L, L)
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a.eigenvalues, b.eigenvalues, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(b.gram, a.gram * sign[:, None] * sign[None, :], rtol=1e-12, atol=1e-12)


def test_learning_rate_schedules_in_closed_form():
    """``stable-cosine`` (fit's default): 1 for the first 70% of the steps after warmup, then
    ``½(1 + cos(π u))`` with ``u`` the fraction of the last 30% done; ``cosine`` from the start; both 0 at the
    end; linear warmup before either."""
    assert STABLE_FRACTION == 0.7
    stable = lr_factor("stable-cosine", 1000, 0)
    assert [stable(s) for s in (0, 350, 699, 700)] == [1.0, 1.0, 1.0, 1.0]
    assert stable(850) == pytest.approx(0.5) and stable(1000) == pytest.approx(0.0)
    assert stable(775) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    cosine = lr_factor("cosine", 1000, 0)
    assert cosine(500) == pytest.approx(0.5) and cosine(1000) == pytest.approx(0.0)
    warm = lr_factor("stable-cosine", 1100, 100)
    assert warm(49) == pytest.approx(0.5) and warm(799) == 1.0 and warm(950) == pytest.approx(0.5)
    assert lr_factor("constant", 1000, 0)(999) == 1.0
    assert inspect.signature(nsvd.fit).parameters["schedule"].default == "stable-cosine"

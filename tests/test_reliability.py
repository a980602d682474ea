"""Reliability: signals save the run, impossible requests fail fast, output faults are clear, one run
per output folder."""

from __future__ import annotations

import errno
import importlib
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from _runs import FIT, assert_identical_runs, on_sample, small_model

import neuralsvd as nsvd
from neuralsvd import cli
from neuralsvd.operators import HarmonicOscillator
from neuralsvd.training import checkpoint
from neuralsvd.training.checkpoint import FolderLockedError, load_checkpoint, lock_folder, save_checkpoint
from neuralsvd.training.interrupts import TrainingInterrupted
from neuralsvd.training.resources import ResourceError

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
CMD = [sys.executable, "-m", "neuralsvd.cli"]
_model = small_model


def _signal_on_sample(op, calls: dict[int, list[int]]):
    """Make ``op.sample`` send this process the signals ``calls[k]`` on its ``k``-th call (the validation
    batch is call 1, step ``k`` is call ``k + 1``)."""

    def action(k: int) -> None:
        for sig in calls.get(k, []):
            os.kill(os.getpid(), sig)

    return on_sample(op, action)


# -- signals: finish the step, save, raise; resume is bitwise identical ------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_the_step_and_resume_is_bitwise_identical(tmp_path, sig):
    before = signal.getsignal(sig)
    whole = nsvd.fit(_model(), HarmonicOscillator(2), nsvd.NestedLoRA(2), checkpoint_dir=tmp_path / "a", **FIT)
    with pytest.raises(TrainingInterrupted) as info:  # during step 33 (call 34): between two checkpoints
        nsvd.fit(_model(), _signal_on_sample(HarmonicOscillator(2), {34: [sig]}), nsvd.NestedLoRA(2),
                 checkpoint_dir=tmp_path / "b", **FIT)
    err = info.value
    assert (err.signal, err.step, err.saved, err.exit_code) == (sig, 33, True, 128 + sig)
    assert err.checkpoint_path == tmp_path / "b" / "checkpoint.pt"
    assert load_checkpoint(err.checkpoint_path)["step"] == 33
    assert signal.getsignal(sig) is before  # the handlers are restored
    again = pickle.loads(pickle.dumps(err))  # crosses process boundaries intact
    assert (again.signal, again.step, again.checkpoint_path, str(again)) == (sig, 33, err.checkpoint_path, str(err))
    resumed = nsvd.fit(_model(), HarmonicOscillator(2), nsvd.NestedLoRA(2), checkpoint_dir=tmp_path / "b",
                       resume=True, **FIT)
    assert resumed.extras["resumed_from"] == 33
    assert_identical_runs(whole, resumed)


def test_second_signal_aborts_at_once_and_keeps_the_last_checkpoint(tmp_path):
    with pytest.raises(TrainingInterrupted) as info:  # two signals within step 25: no time to save
        nsvd.fit(_model(), _signal_on_sample(HarmonicOscillator(2), {26: [signal.SIGINT, signal.SIGINT]}),
                 nsvd.NestedLoRA(2), checkpoint_dir=tmp_path, **FIT)
    err = info.value
    assert not err.saved and err.step == 20 and err.exit_code == 130
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 20
    assert not (tmp_path / "checkpoint.pt.tmp").exists()


def test_without_checkpoint_dir_signals_are_left_alone():
    with pytest.raises(KeyboardInterrupt) as info:
        nsvd.fit(_model(), _signal_on_sample(HarmonicOscillator(2), {5: [signal.SIGINT]}), nsvd.NestedLoRA(2),
                 **{**FIT, "checkpoint_every": 0})
    assert not isinstance(info.value, TrainingInterrupted)


CLI_STEPS = 2000  # ~4 s at ~500 steps/s: the signal (at most 0.3 s after the first checkpoint) lands mid-run


def _cli_args(out) -> list[str]:
    return ["run", "oscillator", "--modes", "2", "--steps", str(CLI_STEPS), "--checkpoint-every", "25", "--out", str(out),
            "--set", "model.hidden=(16, 16)", "--set", "train.eval_batches=2", "--set", "train.log_every=25",
            "--no-progress"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    assert cli.main(_cli_args(out)) == 0  # in-process (one thread, as the subprocess): saves a start-up
    return out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_signal_exit_code_checkpoint_and_bitwise_resume(tmp_path, uninterrupted, sig):
    out = tmp_path / "stopped"
    proc = subprocess.Popen(CMD + _cli_args(out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    ckpt = out / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:  # past the warm-up
        time.sleep(0.02)
    time.sleep(random.Random(sig).uniform(0.0, 0.3))  # then at a random step
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"interrupted by {signal.Signals(sig).name}" in lines[0] and str(ckpt) in lines[0]
    assert "continue with: neuralsvd run oscillator" in lines[0] and lines[0].endswith("--resume")
    step = load_checkpoint(ckpt)["step"]
    assert 25 <= step < CLI_STEPS, "the run finished before the signal; make it longer"
    assert cli.main(_cli_args(out) + ["--resume"]) == 0
    a = load_checkpoint(uninterrupted / "checkpoint.pt")
    b = load_checkpoint(ckpt)
    assert a["step"] == b["step"] == CLI_STEPS
    for sa, sb in zip(a["models"], b["models"]):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    ma = json.loads((uninterrupted / "metrics.json").read_text())
    mb = json.loads((out / "metrics.json").read_text())
    assert ma["eigenvalues"] == mb["eigenvalues"] and mb["resumed_from_step"] == step


# -- impossible requests fail before training, in one line ---------------------------------------------------------
def _missing_device() -> str:
    return f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"


@pytest.mark.parametrize("flags,message,code", [
    (["--device", _missing_device()], "cuda", 4),
    (["--device", "gpu"], "unknown device 'gpu'", 2),
    (["--batch-size", "100000000"], "of memory", 4),
    (["--modes", "100000"], "of memory", 4),
])
def test_impossible_requests_fail_fast_in_one_line(tmp_path, capsys, flags, message, code):
    t0 = time.perf_counter()
    assert cli.main(["run", "oscillator", *flags, "--out", str(tmp_path / "x"), "--no-progress"]) == code
    assert time.perf_counter() - t0 < 10
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "x").exists()  # refused before anything was written


def test_memory_message_gives_the_estimate_and_the_limit(tmp_path, capsys):
    cli.main(["run", "oscillator", "--batch-size", "100000000", "--out", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert "needs about" in err and "TB" in err and "available" in err


def test_fit_refuses_a_batch_that_cannot_fit_before_training():
    with pytest.raises(ResourceError, match="needs about"):
        nsvd.fit(_model(), HarmonicOscillator(2), nsvd.NestedLoRA(2), steps=1, batch_size=10**9, progress=False)


def test_allocation_failure_during_training_is_clear_and_keeps_the_checkpoint(tmp_path):
    def fail(k: int) -> None:
        if k == 30:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")

    op = on_sample(HarmonicOscillator(2), fail)
    with pytest.raises(ResourceError, match=r"out of memory on cpu at step 29; the last checkpoint .* \(step 20\)"):
        nsvd.fit(_model(), op, nsvd.NestedLoRA(2), checkpoint_dir=tmp_path, **FIT)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 20


# -- output faults ---------------------------------------------------------------------------------------------------
def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where", ["write", "rename"])
def test_disk_full_leaves_the_previous_checkpoint(tmp_path, monkeypatch, where):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1, "w": torch.arange(1000.0)})
    if where == "write":
        def partial(state, fh):  # half a file, then the disk is full
            fh.write(b"x" * 100)
            _enospc()
        monkeypatch.setattr(checkpoint.torch, "save", partial)
    else:
        monkeypatch.setattr(checkpoint.os, "replace", _enospc)
    with pytest.raises(OSError, match="could not write .*checkpoint.pt: No space left on device") as info:
        save_checkpoint(path, {"step": 2, "w": torch.zeros(1000)})
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.arange(1000.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_disk_full_during_training_stops_with_the_previous_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    replace = os.replace

    def second_fails(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:
            _enospc()
        return replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", second_fails)
    with pytest.raises(OSError, match="No space left"):
        nsvd.fit(_model(), HarmonicOscillator(2), nsvd.NestedLoRA(2), checkpoint_dir=tmp_path, **FIT)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 20
    assert not (tmp_path / "checkpoint.pt.tmp").exists()


def test_cli_disk_full_on_metrics_is_one_line(tmp_path, monkeypatch, capsys):
    run_module = importlib.import_module("neuralsvd.cli.run")

    def failing(path, data):
        if path.name == "metrics.json":
            _enospc()
        return write_json(path, data)

    write_json = run_module._write_json
    monkeypatch.setattr(run_module, "_write_json", failing)
    assert cli.main(["run", "oscillator", "--steps", "2", "--modes", "2", "--set", "model.hidden=(8, 8)",
                     "--set", "train.eval_batches=1", "--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "No space left on device" in err


def test_output_folder_that_cannot_be_created(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    assert cli.main(["run", "oscillator", "--steps", "1", "--out", str(tmp_path / "file" / "run"),
                     "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "cannot create the output folder" in err


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes anywhere")
def test_output_folder_that_is_not_writable(tmp_path, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        assert cli.main(["run", "oscillator", "--steps", "1", "--out", str(out), "--no-progress"]) == 2
    finally:
        out.chmod(0o700)
    assert "is not writable" in capsys.readouterr().err


# -- one run per output folder ---------------------------------------------------------------------------------------
_HOLDER = ("import sys, time\nfrom neuralsvd.training.checkpoint import lock_folder\n"
           "with lock_folder(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(600)\n")


def test_lock_refuses_a_concurrent_run_and_dies_with_its_holder(tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)], env=ENV, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        argv = ["run", "oscillator", "--steps", "2", "--modes", "2", "--set", "model.hidden=(8, 8)", "--set",
                "train.eval_batches=1", "--out", str(tmp_path), "--no-progress"]
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert f"in use by another neuralsvd run (pid {holder.pid})" in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "config.json").exists()
        with pytest.raises(FolderLockedError):  # in-process too
            with lock_folder(tmp_path):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: the lock file stays, the lock does not
        holder.wait()
    assert (tmp_path / ".neuralsvd.lock").exists()
    assert cli.main(argv) == 0
    assert (tmp_path / "metrics.json").exists()


def test_stop_requests_leave_ignored_signals_and_other_threads_alone():
    import threading

    from neuralsvd.training.interrupts import StopRequests

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopRequests():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    seen = []
    thread = threading.Thread(target=lambda: seen.append(StopRequests().__enter__()._previous))
    thread.start()
    thread.join()
    assert seen == [{}]

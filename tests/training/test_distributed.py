"""Data-parallel training on torch.distributed (gloo, 2 ranks on the CPU): the update equals the
one-process update on the global batch, a torchrun CLI run, resume, and parallel comparisons."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _ranks import LOSSES, losses_worker, single_losses, spawn

import neuralsvd as nsvd
from neuralsvd.cli.compare import compare
from neuralsvd.problems import get_problem
from neuralsvd.problems.registry import make_operator
from neuralsvd.training.checkpoint import CheckpointError
from neuralsvd.training.distributed import SINGLE, DataParallel, PeerLostError, rank_seed
from neuralsvd.training.interrupts import TrainingInterrupted


@pytest.fixture(scope="module")
def two_rank_steps(tmp_path_factory):
    """Every loss's two steps on 2 ranks (each rank's results) and in one process on the global batch."""
    tmp = tmp_path_factory.mktemp("ranks")
    spawn(losses_worker, 2, tmp, str(tmp))
    return [torch.load(tmp / f"rank{r}.pt") for r in range(2)], single_losses()


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-10) -> bool:
    return bool((a - b).abs().max() <= rtol * b.abs().max().clamp_min(1e-300))


@pytest.mark.parametrize("name", list(LOSSES))
def test_two_ranks_update_equals_one_process_on_the_global_batch(two_rank_steps, name):
    ranks, single = two_rank_steps
    ref = single[name]
    for rank in ranks:
        got = rank[name]
        for p, q in zip(got["params"], ref["params"]):
            assert _close(p, q)
        for g, h in zip(got["grads"], ref["grads"]):
            assert _close(g, h)
        for key, buf in ref["state"].items():  # running statistics (control variate, norms, Σ̄, J̄)
            assert _close(got["state"][key].double(), buf.double()), key
        assert _close(got["loss"], ref["loss"])
        if not name.startswith("nestedlora"):  # NestedLoRA's Rayleigh quotients: the ranks' mean (a diagnostic)
            assert _close(got["eigenvalues"], ref["eigenvalues"]) and _close(got["gram"], ref["gram"])
    # the step did something, and differently for each loss
    assert not _close(ranks[0][name]["params"][0], single["neuralef"]["params"][0] if name != "neuralef"
                      else single["spin"]["params"][0])


def test_two_rank_fit_equals_one_process_fit_on_the_global_batches(two_rank_steps):
    """Through ``fit``: broadcast weights, the initial-size cap, averaged gradients, Adam, the control variate's
    running statistics."""
    ranks, single = two_rank_steps
    assert bool((single["fit"]["gain"] < 50.0).all())  # the cap fired
    for rank in ranks:
        assert _close(rank["fit"]["gain"], single["fit"]["gain"])
        for p, q in zip(rank["fit"]["params"], single["fit"]["params"]):
            assert _close(p, q)
        assert _close(rank["fit"]["loss"], single["fit"]["loss"])
    assert not _close(single["fit"]["loss"][:1], single["fit"]["loss"][-1:])  # it trained


def test_two_rank_trajectory_fit_equals_one_process_fit(two_rank_steps):
    """The reversible trajectory operator (interleaved lagged pairs, partner rows as ``Tf``) through ``fit``."""
    ranks, single = two_rank_steps
    for rank in ranks:
        for p, q in zip(rank["trajectory"]["params"], single["trajectory"]["params"]):
            assert _close(p, q)
        assert _close(rank["trajectory"]["loss"], single["trajectory"]["loss"])
    assert not _close(single["trajectory"]["loss"][:1], single["trajectory"]["loss"][-1:])  # it trained


def test_rank_seeds_are_distinct_and_rank_zero_keeps_the_seed():
    assert rank_seed(7, 0) == 7
    seeds = {rank_seed(s, r) for s in range(4) for r in range(8)}
    assert len(seeds) == 32 and all(0 <= s < 2**63 for s in seeds)


def test_single_process_world_communicates_nothing():
    t = torch.arange(3.0)
    assert SINGLE.mean(t)[0] is t and SINGLE.all_true(True) and SINGLE.maximum(5) == 5
    assert DataParallel(2, 1, 1).device("cuda") == torch.device("cuda", 1)
    assert SINGLE.device("cuda") == torch.device("cuda")


def test_distributed_true_without_a_group_is_refused(monkeypatch):
    for var in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(var, raising=False)
    op = nsvd.operators.HarmonicOscillator(2)
    with pytest.raises(RuntimeError, match="torchrun"):
        nsvd.fit(nsvd.models.ParallelMLP(2, 2, hidden=(8,)), op, nsvd.NestedLoRA(2), steps=1, progress=False,
                 distributed=True)


def _torchrun(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "neuralsvd", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300, check=False)


SMALL_RUN = ["run", "oscillator", "--modes", "2", "--steps", "30", "--batch-size", "32", "--checkpoint-every", "10",
             "--set", "model.hidden=(8, 8)", "--set", "train.log_every=10", "--set", "train.eval_batches=2",
             "--no-progress"]


def test_torchrun_cli_run_rank_zero_writes_and_ranks_sample_apart(tmp_path):
    proc = _torchrun([*SMALL_RUN, "--out", str(tmp_path / "run")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "run"
    assert {"config.json", "metrics.json", "history.csv", "result.pt", "checkpoint.pt", "eigenfunctions.png",
            "training_curve.png"} <= {p.name for p in out.iterdir()}
    assert not list(out.glob("*.tmp*"))
    assert proc.stdout.count("outputs written to") == 1  # only rank 0 reports (and writes)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] in ("ok", "unconverged") and metrics["batch_size"] == 32
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    # each rank drew its 16 points per step from its own stream: replay the streams
    operator = make_operator(get_problem("oscillator").default_config())
    firsts = []
    for rank in range(2):
        gen = torch.Generator().manual_seed(rank_seed(0, rank))
        firsts.append(operator.sample(16, gen, torch.float32))
        for _ in range(29):
            operator.sample(16, gen, torch.float32)
        assert torch.equal(gen.get_state(), state["rng"][rank]["generator"])
    assert not torch.equal(firsts[0], firsts[1])


def _fit_args(out, resume=False):
    from _runs import FIT, small_model

    return (small_model(), nsvd.operators.HarmonicOscillator(2), nsvd.NestedLoRA(2)), {
        **FIT, "checkpoint_dir": out, "resume": resume, "distributed": True}


def resume_worker(rank: int, world_size: int, tmp: str) -> None:
    """An uninterrupted 2-rank run, one that crashes at step 30 (its last checkpoint: step 20) and its
    resumption, and one stopped by SIGTERM on rank 0 alone; every rank checks that the resumed runs are
    bitwise the uninterrupted one."""
    from _runs import assert_identical_runs, on_sample

    args, kw = _fit_args(os.path.join(tmp, "whole"))
    whole = nsvd.fit(*args, **kw)

    def crash(k: int) -> None:
        if k == 31:  # step 30's batch: the run dies between checkpoints
            raise RuntimeError("simulated crash")

    args, kw = _fit_args(os.path.join(tmp, "crashed"))
    on_sample(args[1], crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        nsvd.fit(*args, **kw)
    assert torch.load(os.path.join(tmp, "crashed", "checkpoint.pt"), weights_only=True)["step"] == 20
    torch.distributed.barrier()
    args, kw = _fit_args(os.path.join(tmp, "crashed"), resume=True)
    resumed = nsvd.fit(*args, **kw)
    assert resumed.extras["resumed_from"] == 20
    assert_identical_runs(whole, resumed)

    def sigterm_on_rank_zero(k: int) -> None:
        if k == 16 and rank == 0:  # step 15, on one rank only: both stop together at the next check
            os.kill(os.getpid(), signal.SIGTERM)

    args, kw = _fit_args(os.path.join(tmp, "stopped"))
    on_sample(args[1], sigterm_on_rank_zero)
    with pytest.raises(TrainingInterrupted) as stopped:
        nsvd.fit(*args, **{**kw, "checkpoint_every": 0})
    assert stopped.value.signal == signal.SIGTERM and stopped.value.step == 20
    args, kw = _fit_args(os.path.join(tmp, "stopped"), resume=True)
    assert_identical_runs(whole, nsvd.fit(*args, **{**kw, "checkpoint_every": 0}))
    torch.save({"ok": True}, os.path.join(tmp, f"resume-ok{rank}.pt"))


def test_two_rank_run_crashed_and_resumed_is_bitwise_identical(tmp_path):
    spawn(resume_worker, 2, tmp_path, str(tmp_path))
    assert all((tmp_path / f"resume-ok{r}.pt").exists() for r in range(2))
    # a different number of processes is refused, naming both
    args, kw = _fit_args(tmp_path / "crashed", resume=True)
    with pytest.raises(CheckpointError, match="2 process"):
        nsvd.fit(*args, **{**kw, "distributed": False})


def test_compare_jobs_gives_the_records_of_a_sequential_run(tmp_path):
    config = get_problem("oscillator").default_config().with_overrides(
        ["modes=2", "train.steps=20", "train.batch_size=32", "model.hidden=(8, 8)", "train.eval_batches=2"])
    methods = ["neuralsvd-seq", "neuralef"]
    timing = ("wall_seconds", "steps_per_second")
    runs = [compare(config, methods, tmp_path / f"jobs{j}", jobs=j, echo=lambda _: None) for j in (1, 2)]
    for rec in runs:
        assert [(r["method"], r["seed"]) for r in rec] == [(m, 0) for m in methods]
        assert all(r["status"] in ("ok", "unconverged") for r in rec)  # 20 steps: finished
    strip = [[{k: v for k, v in r.items() if k not in timing} for r in rec] for rec in runs]
    assert strip[0] == strip[1]
    assert (tmp_path / "jobs2" / "comparison.md").exists()


def test_nproc_runs_the_same_command_under_torchrun():
    from neuralsvd.cli.main import torchrun_command

    cmd = torchrun_command(["run", "hydrogen", "--nproc", "2", "--steps", "5", "--nproc=2"], 2)
    assert cmd[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "neuralsvd",
                       "run", "hydrogen", "--steps", "5"]


def _start_torchrun(args: list[str], cwd) -> subprocess.Popen:
    """``torchrun`` in its own session (as a scheduler starts a job), so that its process group can be killed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "-m", "neuralsvd", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


#: ~110 steps/s with 2 ranks here: the run lasts seconds after its first checkpoint
ORPHAN_RUN = ["run", "oscillator", "--modes", "2", "--steps", "800", "--batch-size", "16", "--checkpoint-every", "20",
              "--set", "model.hidden=(8,)", "--set", "train.log_every=20", "--set", "train.eval_batches=1",
              "--no-progress"]


def _processes_writing(out) -> list[int]:
    """The live processes whose command line names ``out`` (Linux /proc)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(out).encode() in cmdline.read_bytes().split(b"\0") and \
                    (cmdline.parent / "stat").read_text().split()[2] != "Z":
                pids.append(int(cmdline.parent.name))
        except OSError:  # it ended meanwhile
            continue
    return pids


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs Linux /proc")
def test_killed_launcher_leaves_no_rank_and_resumes_at_once_bitwise(tmp_path):
    """``kill -9`` on torchrun's process group right after the first checkpoint (what a scheduler or the OOM
    killer does): the ranks, in sessions of their own, end with their launcher and release the folder, so an
    immediate ``--resume`` is accepted and ends bitwise where an uninterrupted run ends."""
    import time

    whole = _torchrun([*ORPHAN_RUN, "--out", str(tmp_path / "whole")], tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]
    out = tmp_path / "killed"
    job = _start_torchrun([*ORPHAN_RUN, "--out", str(out)], tmp_path)
    try:
        deadline = time.monotonic() + 240
        while not (out / "checkpoint.pt").exists():
            assert job.poll() is None, job.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.communicate()
    deadline = time.monotonic() + 2
    while _processes_writing(out) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _processes_writing(out), "a rank outlived its launcher"
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] < 800  # it ended with its launcher
    resumed = _torchrun([*ORPHAN_RUN, "--out", str(out), "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "whole", out))
    assert 0 < b["resumed_from_step"] < 800  # it was killed mid-run and continued
    for key in ("wall_seconds", "steps_per_second", "resumed_from_step"):
        a.pop(key), b.pop(key)
    assert a == b
    ra, rb = (torch.load(d / "result.pt", weights_only=True) for d in (tmp_path / "whole", out))
    assert all(torch.equal(p, q) for p, q in zip(ra["models"][0].values(), rb["models"][0].values()))


def peer_lost_worker(rank: int, world_size: int, tmp: str) -> None:
    """Rank 1 leaves at once; rank 0's next collective fails with an error naming what happened."""
    if rank == 1:
        return
    time.sleep(0.5)
    with pytest.raises(PeerLostError, match="rank 0 of 2: a peer rank is gone"):
        DataParallel(2, 0, 0).mean(torch.ones(3))
    Path(tmp, "peer-lost-ok").touch()


def test_a_rank_whose_peer_is_gone_ends_with_a_clear_error(tmp_path):
    spawn(peer_lost_worker, 2, tmp_path, str(tmp_path))
    assert (tmp_path / "peer-lost-ok").exists()

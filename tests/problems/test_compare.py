"""`neuralsvd compare`: one run per (method, seed), the three comparison files, and failing methods recorded
as failed instead of ending the comparison."""

from __future__ import annotations

import json

import numpy as np
import pytest

from neuralsvd import NestedLoRA, cli
from neuralsvd.cli.compare import comparison_table
from neuralsvd.losses import LossOutput
from neuralsvd.problems import METHODS

METRICS = ("mean_eigenvalue_relative_error", "angle_distance", "subspace_distance_avg",
           "subspace_distance_all", "orthogonality_error")
ALL_FOUR = ["neuralsvd-seq", "neuralsvd-joint", "spin", "neuralef"]
pytestmark = pytest.mark.filterwarnings("ignore:non-finite values:RuntimeWarning")  # the "nan" method


def _broken(num_modes):
    raise RuntimeError("deliberately broken")


class NaNLoss(NestedLoRA):
    """A method whose training goes non-finite at once."""

    def forward(self, fx, tfx):
        out = super().forward(fx, tfx)
        return LossOutput(out.loss * float("nan"), out.eigenvalues, out.gram)


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(METHODS, "broken", ("raises when built", _broken))
        mp.setitem(METHODS, "nan", ("diverges", lambda L: NaNLoss(L)))
        code = cli.main(["compare", "oscillator", "--methods", ",".join([*ALL_FOUR, "broken", "nan"]),
                         "--steps", "20", "--modes", "3", "--set", "model.hidden=(16,16)",
                         "--set", "train.eval_batches=2", "--out", str(out), "--no-progress"])
    assert code == 0
    return out, json.loads((out / "comparison.json").read_text())


def test_writes_the_three_files_and_one_folder_per_run(comparison):
    out, _records = comparison
    for name in ("comparison.json", "comparison.md", "comparison.png"):
        assert (out / name).stat().st_size > 0, name
    for method in ALL_FOUR:
        assert (out / f"{method}-seed0" / "metrics.json").exists(), method


def test_json_is_the_runs_metrics_records(comparison):
    out, records = comparison
    assert [r["method"] for r in records] == [*ALL_FOUR, "broken", "nan"]
    for record in records[:4]:
        assert record["status"] in ("ok", "unconverged")  # 20 steps: finished
        assert record == json.loads((out / f"{record['method']}-seed0" / "metrics.json").read_text())
        assert all(np.isfinite(record[k]) for k in METRICS), record["method"]
        assert [record[k] for k in ("problem", "modes", "steps", "seed")] == ["oscillator", 3, 20, 0]


def test_broken_and_diverged_methods_are_recorded_not_raised(comparison):
    out, records = comparison
    broken, nan = records[4], records[5]
    assert broken["status"] == "failed" and broken["error"] == "RuntimeError: deliberately broken"
    assert nan["status"] == "diverged" and nan["error"].startswith("DivergenceError: ")
    for record in (broken, nan):
        assert all(record[k] is None for k in METRICS)
    table = (out / "comparison.md").read_text()
    assert "| broken | 0/1 (failed: seed 0 failed) | – |" in table
    assert "| nan | 0/1 (failed: seed 0 diverged) | – |" in table
    assert "- broken seed 0: failed: RuntimeError: deliberately broken" in table


def test_markdown_rows_carry_the_recorded_values(comparison):
    out, records = comparison
    lines = (out / "comparison.md").read_text().splitlines()
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines if line.startswith("| ")}
    for record in records[:4]:
        cells = rows[record["method"]].strip("| ").split(" | ")
        expected = [f"{record[k]:.3g}" for k in (*METRICS, "steps_per_second")]
        ok = "1/1" if record["status"] == "ok" else "0/1 (failed: seed 0 unconverged)"  # finished runs: values shown
        assert cells == [record["method"], ok, *expected]


def test_table_is_mean_and_std_over_successful_seeds():
    values = [0.1, 0.4, 0.25]
    header = {"problem": "p", "modes": 2, "steps": 5, "batch_size": 8, "method": "m"}
    records = [{**header, "seed": s, "status": "ok", **dict.fromkeys(METRICS, v),
                "steps_per_second": 10.0 * (s + 1)} for s, v in enumerate(values)]
    records.append({**records[0], "seed": 3, "status": "failed", "error": "boom", **dict.fromkeys(METRICS),
                    "steps_per_second": None})
    row = next(line for line in comparison_table(records).splitlines() if line.startswith("| m |"))
    cells = row.strip("| ").split(" | ")
    assert cells[1] == "3/4 (failed: seed 3 failed)"
    assert cells[2] == f"{np.mean(values):.3g} ± {np.std(values):.2g}" == "0.25 ± 0.12"
    assert cells[-1] == "20 ± 8.2"  # steps/s 10, 20, 30


def test_unknown_method_is_rejected_before_running(tmp_path, capsys):
    argv = ["compare", "oscillator", "--methods", "neuralsvd-seq,magic", "--out", str(tmp_path)]
    assert cli.main(argv) == 2
    from neuralsvd.problems import METHODS

    assert f"unknown method(s) ['magic']; valid methods: {', '.join(METHODS)}" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())

"""The box-laplacian and hydrogen3d problems end to end: a few steps through the CLI write every output,
metrics.json carries the closed-form spectrum, and the model options of the presets build."""

from __future__ import annotations

import json
import math

import pytest

from neuralsvd import cli
from neuralsvd.models.separable import SeparableMLP
from neuralsvd.problems import get_problem, make_model, make_operator

TINY = ["--steps", "5", "--set", "model.hidden=(16, 16)", "--set", "train.eval_batches=2", "--no-progress"]


@pytest.mark.parametrize("args,exact", [
    (["box-laplacian", "--modes", "3", "--set", "operator.dim=2", "--set", "model.kind=parallel_mlp"],
     [2 * math.pi**2] + [5 * math.pi**2] * 2),
    (["box-laplacian", "--modes", "4", "--set", "operator.dim=10", "--set", "model.kind=separable",
      "--set", "operator.quadrature_points=1024"], [10 * math.pi**2] + [13 * math.pi**2] * 3),
    (["hydrogen3d", "--modes", "5"], [-0.5] + [-0.125] * 4),
], ids=["box-2d-mlp", "box-10d-separable", "hydrogen3d"])
def test_cli_run_writes_outputs(tmp_path, args, exact):
    assert cli.main(["run", *args, "--out", str(tmp_path), *TINY]) == 0
    for name in ("config.json", "metrics.json", "eigenfunctions.png", "training_curve.png", "checkpoint.pt"):
        assert (tmp_path / name).stat().st_size > 0, name
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["exact_eigenvalues"] == pytest.approx(exact, rel=1e-12)
    assert m["mean_eigenvalue_relative_error"] is not None and 0 <= m["subspace_distance_all"] <= 1


def test_presets_build_the_documented_models():
    box = get_problem("box-laplacian").default_config()
    assert (box.modes, box.operator["dim"], box.model.kind, box.method) == (6, 5, "separable", "neuralsvd-joint")
    model = make_model(box, make_operator(box).dim)
    assert isinstance(model, SeparableMLP) and model.box == 0.5 and model.box_center == 0.5
    h3 = get_problem("hydrogen3d").default_config()
    op = make_operator(h3)
    assert (h3.modes, op.dim, op.kinetic, op.model_output) == (14, 3, 0.5, "psi")

"""The learning rate ``fit`` takes when none is given (neuralsvd.models.default_lr): by model, and applied."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _runs import dense_with_top

import neuralsvd as nsvd
from neuralsvd.models import MLP, ParallelMLP, Tabular, default_lr
from neuralsvd.operators import DenseOperator, GraphOperator


def test_default_lr_by_model():
    assert default_lr(ParallelMLP(2, 3)) == pytest.approx(1e-3)  # the 128-wide networks' rate
    assert default_lr(ParallelMLP(2, 3, hidden=(64, 64))) == pytest.approx(3e-3)  # 1e-3 · 384 / (64 + 64)
    assert default_lr(MLP(2, 3, hidden=(256, 64))) == pytest.approx(1.2e-3)  # every layer counts: 384 / 320
    assert default_lr(Tabular(10, 3)) == pytest.approx(1e-2)
    assert default_lr(torch.nn.Linear(2, 3)) == pytest.approx(1e-3)
    graph = GraphOperator(np.ones((4, 4)) - np.eye(4), features=np.zeros((4, 2)))
    assert default_lr(graph.node_model(ParallelMLP(2, 2, hidden=(32,)))) == pytest.approx(1.2e-2)
    assert default_lr((ParallelMLP(2, 2), ParallelMLP(2, 2, hidden=(64,)))) == pytest.approx(1e-3)  # SVD: the smaller


def test_fit_without_lr_uses_the_models_default():
    """A run with ``lr`` unset is bitwise the run with ``lr=default_lr(model)`` and differs from one at 1e-3."""
    op = DenseOperator(torch.tensor(dense_with_top((3.0, 2.0), (-1.0, 0.5), n=20)))

    def run(**kwargs):
        torch.manual_seed(0)
        model = Tabular(20, 2).double()
        return nsvd.fit(model, op, nsvd.NestedLoRA(2), steps=30, batch_size=20, progress=False, **kwargs)

    unset, explicit, other = run(), run(lr=1e-2), run(lr=1e-3)
    assert torch.equal(unset.model.table, explicit.model.table)
    assert not torch.equal(unset.model.table, other.model.table)

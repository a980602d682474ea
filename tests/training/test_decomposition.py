"""EVD or SVD chosen once: the strategy objects against what fit does by hand."""

from __future__ import annotations

import pytest
import torch

import neuralsvd as nsvd
from neuralsvd.models import Tabular
from neuralsvd.operators import DenseOperator
from neuralsvd.training.decomposition import EVD, SVD, check_model, decomposition_of


def test_choice_and_round_trip():
    f, g = Tabular(4, 2), Tabular(3, 2)
    assert decomposition_of(f) is EVD and decomposition_of((f, g)) is SVD and decomposition_of([f, g]) is SVD
    assert EVD.assemble(EVD.modules(f)) is f and EVD.primary(f) is f
    assert SVD.assemble(SVD.modules([f, g])) == (f, g) and SVD.primary((f, g)) is f
    doubled = SVD.convert((f, g), lambda m: Tabular(m.num_points, 2).double())
    assert isinstance(doubled, tuple) and all(m.table.dtype == torch.float64 for m in doubled)
    assert torch.equal(EVD.learned_from_norms(torch.tensor([2.0, 3.0]), None), torch.tensor([4.0, 9.0]))
    assert torch.equal(SVD.learned_from_norms(torch.tensor([2.0, 3.0]), torch.tensor([5.0, 7.0])),
                       torch.tensor([10.0, 21.0]))


def test_batches_and_loss_forms_match_the_operator():
    a = torch.arange(12.0).reshape(4, 3) / 10
    op, loss = DenseOperator(a), nsvd.NestedLoRA(2, nesting="joint")
    f, g = Tabular(3, 2).double(), Tabular(4, 2).double()
    batch = SVD.sample(op, 8, torch.Generator().manual_seed(0), None)
    by_hand = op.sample_pair(8, torch.Generator().manual_seed(0))
    assert all(torch.equal(u, v) for u, v in zip(batch, by_hand)) and SVD.inputs(batch) is batch[0]
    out = SVD.loss_output(op, loss, (f, g), batch)
    expected = loss.svd(*op.apply_svd(f, g, *batch))
    assert out.loss.item() == expected.loss.item() and torch.equal(out.eigenvalues, expected.eigenvalues)
    assert SVD.final_model(loss, (f, g)) == (f, g)
    spin = nsvd.SpIN(2)
    assert isinstance(EVD.final_model(spin, f), nsvd.losses.base.LinearReadout)  # the loss's read-out


@pytest.mark.parametrize(("model", "error", "message"), [
    ((Tabular(3, 2),), ValueError, "exactly two models"),
    ((Tabular(3, 2), lambda x: x), TypeError, "got function"),
    ("model", TypeError, "got str"),
])
def test_check_model_errors(model, error, message):
    with pytest.raises(error, match=message):
        check_model(model)

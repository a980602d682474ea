"""Mode revival: re-initializing one mode touches that mode only, its optimizer state and EMA copy."""

from __future__ import annotations

import pytest
import torch

import neuralsvd as nsvd
from neuralsvd.training.revival import MAX_REVIVALS, ModeRevival


def _models():
    torch.manual_seed(0)
    from neuralsvd.models.separable import SeparableMLP

    return [nsvd.models.ParallelMLP(2, 4, hidden=(8, 8), envelope=True), nsvd.models.MLP(2, 4, hidden=(8, 8)),
            nsvd.models.Tabular(10, 4), SeparableMLP(2, 4, rank=2, hidden=(8,), box=(0.0, 1.0))]


def _inputs(model):
    return torch.arange(10) if isinstance(model, nsvd.models.Tabular) else torch.randn(10, 2)


@pytest.mark.parametrize("model", _models(), ids=["parallel", "shared", "tabular", "separable"])
def test_reset_mode_redraws_that_mode_only_and_reproducibly(model):
    x = _inputs(model)
    before = model(x).detach()
    twin = [p.detach().clone() for p in model.parameters()]
    model.reset_mode(2, torch.Generator().manual_seed(5))
    after = model(x).detach()
    keep = [0, 1, 3]
    torch.testing.assert_close(after[:, keep], before[:, keep], rtol=0, atol=0)
    assert not torch.allclose(after[:, 2], before[:, 2])
    assert after[:, 2].abs().max() > 1e-3  # not collapsed
    again = model(x).detach()
    for p, t in zip(model.parameters(), twin):
        p.data.copy_(t)
    model.reset_mode(2, torch.Generator().manual_seed(5))
    torch.testing.assert_close(model(x).detach(), again, rtol=0, atol=0)


def test_revival_clears_the_optimizer_state_and_ema_of_the_mode():
    torch.manual_seed(0)
    model = nsvd.models.ParallelMLP(2, 3, hidden=(8,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(16, 2)).pow(2).sum().backward()
    opt.step()
    ema = [p.detach().clone() + 1.0 for p in model.parameters()]
    loss = nsvd.NestedLoRA(3)
    loss.cv_stats.ac.fill_(1.0)
    revival = ModeRevival((model,), seed=0)
    with pytest.warns(RuntimeWarning, match="mode 1 collapsed"):
        dead = revival(torch.tensor([1.0, 0.0, 1.0]), torch.tensor([1.0, float("nan"), 1.0]), 100, opt, ema, loss)
    assert dead == [1]
    for (name, p), e in zip(model.named_parameters(), ema):
        axis = model.mode_axes()[name]
        state = opt.state[p]
        assert state["exp_avg"].select(axis, 1).abs().max() == 0
        assert state["exp_avg_sq"].select(axis, 1).abs().max() == 0
        assert state["exp_avg_sq"].select(axis, 0).abs().max() > 0  # other modes keep theirs
        torch.testing.assert_close(e.select(axis, 1), p.detach().select(axis, 1))
        torch.testing.assert_close(e.select(axis, 0), p.detach().select(axis, 0) + 1.0)
    assert loss.cv_stats.ac[1].abs().max() == 0 and loss.cv_stats.ac[:, 1].abs().max() == 0
    assert loss.cv_stats.ac[0, 2] == 1.0


def test_revival_counts_are_in_the_checkpoint_and_survive_a_resume(tmp_path):
    """A mode that starts at exactly zero is revived at the first check; the checkpoint records the count,
    and a resumed run's rule starts from it (so a mode is never revived more than MAX_REVIVALS times)."""
    a = torch.diag(torch.tensor([5.0, 4.0, 3.0, -1.0, -2.0, 0.5]))
    op = nsvd.operators.DenseOperator(a)

    def model():
        torch.manual_seed(0)
        m = nsvd.models.Tabular(6, 3)
        with torch.no_grad():
            m.table[:, 2] = 0.0
        return m

    kw = {"steps": 40, "batch_size": 6, "log_every": 20, "checkpoint_every": 20, "progress": False,
          "warm_start": None, "init_ratio": None, "rescue": False}
    with pytest.warns(RuntimeWarning, match="mode 2 collapsed"):
        nsvd.fit(model(), op, nsvd.NestedLoRA(3), checkpoint_dir=tmp_path, **kw)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert state["revival"] == {"count": {2: 1}}
    revival = ModeRevival((model(),), seed=0)
    revival.load_state_dict(state["revival"])
    assert revival.count == {2: 1}
    revival.count[2] = MAX_REVIVALS  # spent: a collapsed mode 2 is left alone
    assert revival(torch.tensor([1.0, 1.0, 0.0]), torch.tensor([5.0, 4.0, float("nan")]), 60,
                   torch.optim.Adam(revival.modules[0].parameters()), None, nsvd.NestedLoRA(3)) == []

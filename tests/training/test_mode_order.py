"""Moving a lost mode to the last slot (neuralsvd.training.mode_order, the rescue's later tries) and its fresh
start (neuralsvd.training.product_start): the best function in one network's hidden span (a transplant), or
the best product of the other modes with the coordinates."""

from __future__ import annotations

import numpy as np
import torch
from _runs import dense_with_top
from torch import nn

import neuralsvd as nsvd
from neuralsvd.models import MLP, ParallelMLP, Tabular
from neuralsvd.operators import DenseOperator, GraphOperator, HarmonicOscillator
from neuralsvd.training.mode_order import permutable, permute_modes, to_last
from neuralsvd.training.product_start import fit_to_target, product_target, transplant_start
from neuralsvd.training.rescue import ModeRescue, copied_modes
from neuralsvd.training.warm_start import _statistics, deflated_quotients

F64 = torch.float64


def _adam_state(model: nn.Module, x: torch.Tensor) -> torch.optim.Optimizer:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    out = model(x)  # (n, L): a different gradient per mode, so the moments differ between modes
    (out.pow(2).sum(0) * torch.arange(1.0, out.shape[1] + 1)).sum().backward()
    opt.step()
    return opt


def test_permuting_moves_outputs_moments_ema_and_gains_and_the_inverse_restores_them():
    torch.manual_seed(0)
    model = ParallelMLP(2, 4, hidden=(8, 8), envelope=True)
    model.scale_outputs(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    x = torch.randn(16, 2)
    opt = _adam_state(model, x)
    ema = [p.detach().clone() + 1 for p in model.parameters()]
    out = model(x).detach()
    moments = {p: [v.clone() for v in opt.state[p].values() if v.shape == p.shape] for p in model.parameters()}
    order = to_last(1, 4)
    assert order == [0, 2, 3, 1]
    permute_modes(model, order, opt, ema)
    torch.testing.assert_close(model(x), out[:, order], rtol=0, atol=0)
    assert model.output_gain.view(-1).tolist() == [1.0, 3.0, 4.0, 2.0]
    for i, (name, p) in enumerate(model.named_parameters()):
        axis = model.mode_axes()[name]
        for old, new in zip(moments[p], [v for v in opt.state[p].values() if v.shape == p.shape]):
            assert torch.equal(new, old.index_select(axis, torch.tensor(order)))
        assert torch.equal(ema[i], p.detach() + 1)
    permute_modes(model, [order.index(k) for k in range(4)], opt, ema)  # the inverse
    torch.testing.assert_close(model(x), out, rtol=0, atol=0)


def test_what_can_be_permuted():
    assert permutable(ParallelMLP(1, 3)) and permutable(Tabular(5, 3))
    assert not permutable(MLP(1, 3))  # a shared trunk: moving one mode moves all
    points = torch.rand(30, 2)
    adjacency = (torch.cdist(points, points) < 0.4).double() - torch.eye(30, dtype=F64)
    graph = GraphOperator(adjacency.numpy(), features=points)
    node_model = graph.node_model(ParallelMLP(2, 3, hidden=(8,)))
    assert permutable(node_model)
    with torch.no_grad():
        node_model.residual.copy_(torch.randn_like(node_model.residual))
    index = torch.arange(30)
    out = node_model(index).detach()
    permute_modes(node_model, [2, 0, 1])
    torch.testing.assert_close(node_model(index), out[:, [2, 0, 1]], rtol=0, atol=0)


class _Exact(nn.Module):
    """The oscillator's exact states ``[φ_0, φ_1, φ_0]`` as model outputs (the operator's convention: ``ψ`` over
    ``√p``), with an output gain."""

    def __init__(self, op: HarmonicOscillator):
        super().__init__()
        self.op = op
        self.register_buffer("output_gain", torch.ones(3, dtype=F64))

    def forward(self, x):
        psi = self.op.exact_eigenfunctions(x.double(), 2)[:, [0, 1, 0]]
        to_psi = self.op.eigenfunctions_from_model(torch.ones_like(psi[:, :1]), x.double())
        return psi / to_psi * self.output_gain


def test_product_target_of_exact_modes_is_the_next_state():
    """Hermite recursion: ``x φ_1`` is a combination of ``φ_0`` and ``φ_2``, so with exact ``φ_0, φ_1`` the best
    deflated product is ``φ_2`` (oscillator level 5, ``T``-eigenvalue shift − 5), up to the batch's noise."""
    osc = HarmonicOscillator(1)
    op = nsvd.operators.Schrodinger(lambda x: x[:, 0] ** 2, 1, shift=8.0, sampler=osc.sampler)
    model = _Exact(osc)
    x = op.sample(20000, torch.Generator().manual_seed(0), dtype=F64)
    target, value = product_target(model, op, x, 2)
    assert abs(value - 3.0) < 0.15
    g = target(x)
    want = osc.exact_eigenfunctions(x, 3)[:, 2] / osc.eigenfunctions_from_model(torch.ones_like(x), x)[:, 0]
    cosine = float((g * want).mean() / (g.pow(2).mean() * want.pow(2).mean()).sqrt())
    assert abs(cosine) > 0.99
    assert product_target(model, op, torch.arange(5), 2) is None  # node indices: no coordinates


def test_transplant_makes_the_mode_the_combination_of_the_source_basis():
    torch.manual_seed(0)
    model = ParallelMLP(2, 3, hidden=(8, 8), envelope=True, envelope_scale=[2.0, 3.0, 4.0]).double()
    x = torch.randn(32, 2, dtype=F64)
    before, basis = model(x).detach(), model.output_basis(x, 0, 2).detach()  # (n, 9): source 0, mode 2's envelope
    c = torch.randn(9, dtype=F64)
    model.transplant(0, 2, c)
    after = model(x).detach()
    torch.testing.assert_close(after[:, 2], basis @ c)
    torch.testing.assert_close(after[:, :2], before[:, :2], rtol=0, atol=0)


def test_transplant_start_recovers_a_copied_mode():
    """A 1D oscillator (levels 1, 3, 5; shift 8: T-eigenvalues 7, 5, 3) after a short fit; the last mode
    made a copy of the first (its network and output layer copied: deflated quotient ≈ 0). The transplant
    finds the missing state in one network's hidden span: on 2¹⁶ fresh points its level is 5 within 3%."""
    op = nsvd.operators.Schrodinger(lambda x: x[:, 0] ** 2, 1, shift=8.0, sampler=nsvd.sampling.Gaussian(1, 1.2))
    torch.manual_seed(0)
    model = ParallelMLP(1, 3, hidden=(32, 32))
    nsvd.fit(model, op, nsvd.NestedLoRA(3), steps=800, batch_size=256, seed=0, progress=False, rescue=False)
    with torch.no_grad():
        model.transplant(0, 2, torch.cat([model.out_weight[0, :, 0], model.out_bias[0, 0]]))
        model.output_gain[2] = model.output_gain[0]
    fresh = op.sample(2**16, torch.Generator().manual_seed(1))
    rho_tilde = lambda: deflated_quotients(*_statistics(model, op, fresh, lambda *s: s)[2:])
    assert abs(float(rho_tilde()[2])) < 0.1  # a copy
    value = transplant_start(model, op, op.sample(1024, torch.Generator().manual_seed(2)), 2)
    assert value is not None and value > 2.0
    with torch.no_grad():
        f, tf = op.apply(model, fresh)
    energy = 8.0 - float((f[:, 2] * tf[:, 2]).mean() / (f[:, 2] ** 2).mean())
    assert abs(energy - 5.0) < 0.15
    assert float(rho_tilde()[2]) > 2.5


def test_fit_to_target_moves_one_mode_only():
    torch.manual_seed(0)
    model = ParallelMLP(1, 3, hidden=(32, 32)).double()
    x = torch.linspace(-2, 2, 200, dtype=F64)[:, None]
    before = model(x).detach()
    fit_to_target(model, 1, lambda z: torch.sin(2 * z[:, 0]), lambda: x, 1e-2, steps=500)
    after = model(x).detach()
    torch.testing.assert_close(after[:, [0, 2]], before[:, [0, 2]], rtol=0, atol=0)
    assert float((after[:, 1] - torch.sin(2 * x[:, 0])).pow(2).mean()) < 1e-3


def test_a_second_try_moves_a_lost_mode_to_the_last_slot():
    """Slot 1 a faint copy of slot 0 (``ρ̃ < 0``) while slot 2 holds the second eigenvector (the later mode moved up into
    the lost one's level): the second try moves slot 1's network to the end, where the deflated operator's
    top is the level that is missing; slots 0 and 1 then hold the two top eigenvectors, untouched, and the
    last slot is no copy, and NestedLoRA takes the three from there to the top eigenvalues."""
    a = dense_with_top((3.0, 2.0, 1.5), (-1.0, 0.5), seed=1)
    lam, vec = np.linalg.eigh(a)
    lam, vec = lam[::-1], torch.tensor(vec[:, ::-1].copy())
    n = a.shape[0]
    op = DenseOperator(torch.tensor(a))
    model = Tabular(n, 3).double()
    with torch.no_grad():  # f_l = √λ_l φ_l √n on the uniform measure over the rows
        copy = 0.01 * (vec[:, 0] + 0.5 * vec[:, -1])  # ρ̃ = (3 − λ_min/4)/1.25 − 0.8 · 3 < 0: lost
        model.table.copy_(torch.stack([3.0**0.5 * vec[:, 0], copy, 2.0**0.5 * vec[:, 1]], 1) * n**0.5)
    before = model.table.detach().clone()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    rescue = ModeRescue(model, op, lambda k, g: torch.randint(0, n, (k,), generator=g), n, 0, 0, 1e-2,
                        lambda *s: s, lambda params, *extra: extra)
    rescue.count = {1: 1}  # its in-place try was spent
    changed = rescue(100, opt, None, nsvd.NestedLoRA(3))
    assert changed == [1, 2] and rescue.log[-1]["moved"] and rescue.log[-1]["kept"]
    assert torch.equal(model.table[:, 0], before[:, 0]) and torch.equal(model.table[:, 1], before[:, 2])
    x = torch.arange(n)
    with torch.no_grad():
        fx, tfx = op.apply(model, x)
    assert not copied_modes(fx.T @ fx / n, (fx * tfx).mean(0)).any()
    train = {"steps": 1500, "batch_size": n, "progress": False, "lr": 1e-2, "rescue": False, "dtype": F64}
    moved = nsvd.fit(model, op, nsvd.NestedLoRA(3), **train)
    np.testing.assert_allclose(moved.eigenvalues.numpy(), lam[:3], rtol=1e-3)


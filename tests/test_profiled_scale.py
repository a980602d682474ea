"""Profiled per-mode scales (``NestedLoRA(scales="profiled")``): closed-form scales, fixed point, recovery."""

from __future__ import annotations

import pytest
import torch

import neuralsvd as nsvd
from neuralsvd import NestedLoRA
from neuralsvd.losses.profiled_scale import ProfiledScales, scale_modes

F64 = torch.float64


def _spectrum(n: int, top: list[float], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A symmetric ``A`` (n, n) with leading eigenvalues ``top``; ``(A, eigenvalues, eigenvectors)``."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=F64, generator=g))
    lam = torch.cat([torch.tensor(top, dtype=F64), 0.2 * torch.rand(n - len(top), dtype=F64, generator=g)])
    return (q * lam) @ q.T, lam, q


@pytest.mark.parametrize("sequential", [True, False])
def test_scales_of_eigenvector_shapes_are_the_eigenvalues(sequential):
    """Shapes proportional to eigenvectors (any positive factors): the profiled scales are the eigenvalues
    of ``T`` (``Tf = A f`` on the uniform measure of n points, eigenfunctions ``sqrt(n) q``)."""
    n, L = 30, 4
    a, lam, q = _spectrum(n, [5.0, 3.0, 2.0, 1.0])
    h = q[:, :L] * torch.tensor([0.3, 7.0, 1.0, 50.0], dtype=F64)
    stats = ProfiledScales(L, decay=0.0).double()
    stats.update(h, a @ h)
    loss = NestedLoRA(L, nesting="sequential" if sequential else "joint")
    s = stats.scales(loss.v_grad, loss.m_grad, sequential)
    torch.testing.assert_close(s, lam[:L], rtol=1e-10, atol=1e-10)


def test_update_vanishes_at_the_optimum_on_the_population():
    """Full-population batch (exact moments), shapes = eigenvectors at arbitrary scales: the shapes'
    update is zero for both nestings (the objective's optimum is a fixed point)."""
    n, L = 24, 3
    a, lam, q = _spectrum(n, [4.0, 2.5, 1.5], seed=1)
    for nesting in ("sequential", "joint"):
        loss = NestedLoRA(L, nesting=nesting, scales="profiled", unbiased=False)
        h0 = q[:, :L] * torch.tensor([2.0, 0.1, 9.0], dtype=F64)
        loss.profile = loss.profile.double()
        loss.profile.decay = 0.0
        loss.profile.norm_decay = 0.0
        loss(h0.clone().requires_grad_(True), a @ h0)  # first call: statistics only
        h = h0.clone().requires_grad_(True)
        out = loss(h, a @ h0)
        out.loss.backward()
        assert h.grad.abs().max() < 1e-10, (nesting, h.grad.abs().max())
        torch.testing.assert_close(out.norm_eigenvalues, lam[:L], rtol=1e-10, atol=1e-10)


def test_scale_modes_backward_is_the_rescaled_tangent_part():
    g = torch.Generator().manual_seed(3)
    h = torch.randn(10, 3, dtype=F64, generator=g).requires_grad_(True)
    factor = torch.tensor([2.0, 0.5, 3.0], dtype=F64)
    grad_factor = torch.tensor([0.1, 4.0, 1.0], dtype=F64)
    out = scale_modes(h, factor, grad_factor)
    torch.testing.assert_close(out, h.detach() * factor)
    upstream = torch.randn(10, 3, dtype=F64, generator=g)
    out.backward(upstream)
    scaled = upstream * grad_factor
    expected = scaled - h.detach() * (h.detach() * scaled).sum(0) / (h.detach() ** 2).sum(0)
    torch.testing.assert_close(h.grad, expected)
    torch.testing.assert_close((h.grad * h.detach()).sum(0), torch.zeros(3, dtype=F64), atol=1e-12, rtol=0)


def test_profiled_fit_recovers_dense_eigenpairs_from_minibatches():
    """Batches of 64 (with replacement) from 40 rows. The tangent projection is a ratio of batch sums
    (bias O(1/n)): at batches of 16 this problem ends far off (measured: subspace distance 0.58, against
    0.010 for the plain parametrization), which is why ``"profiled"`` is not the default."""
    n, L = 40, 4
    a, lam, _ = _spectrum(n, [4.0, 3.0, 2.0, 1.5], seed=2)
    op = nsvd.operators.DenseOperator(a)
    torch.manual_seed(0)
    model = nsvd.models.Tabular(n, L).double()
    result = nsvd.fit(model, op, NestedLoRA(L, scales="profiled"), steps=3000, batch_size=64, lr=1e-2,
                      progress=False)
    torch.testing.assert_close(result.eigenvalues.to(F64), lam[:L], rtol=2e-2, atol=0)
    assert nsvd.evaluate(result)["subspace_distance_all"] < 5e-2


def test_profiled_mode_started_at_tiny_scale_recovers():
    """The guard on the scale factor keeps a mode whose network output starts 1e4 times too small from
    exploding when its weights jump (Adam's first steps), and the mode still reaches its level."""
    op = nsvd.operators.Schrodinger(lambda x: x[:, 0] ** 2 + 2.25 * x[:, 1] ** 2, dim=2, shift=10.0)
    torch.manual_seed(0)
    model = nsvd.models.ParallelMLP(2, 3)
    with torch.no_grad():
        model.out_weight[1].mul_(1e-4)
    result = nsvd.fit(model, op, NestedLoRA(3, scales="profiled"), steps=2000, seed=0, progress=False)
    torch.testing.assert_close(result.eigenvalues.double(), torch.tensor([2.5, 4.5, 5.5], dtype=F64), rtol=3e-2,
                               atol=0)


def test_scales_option_is_validated():
    with pytest.raises(ValueError, match="scales"):
        NestedLoRA(2, scales="learned")

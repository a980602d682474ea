"""The SpIN and NeuralEF baselines: recovery of a dense spectrum (numpy as the reference), their custom
gradients against autograd of the per-mode definitions, moving averages and running norms in closed form,
read-out wrappers (jets against Hessian traces), checkpointed state, EVD-only errors and SpIN's memory."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

import neuralsvd as nsvd
from neuralsvd.losses.spin import mode_axes
from neuralsvd.models import MLP, ParallelMLP, Tabular
from neuralsvd.operators import DenseOperator

F64 = torch.float64
TOP = np.array([5.0, 4.0, 3.0, 2.0])
NEURALEF_EPS = 1e-5  # added to R_ii by NeuralEF (the authors' value)


def _symmetric_matrix(n=30, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    a = q @ np.diag(np.concatenate([TOP, rng.uniform(-1, 1, n - 4)])) @ q.T
    return (a + a.T) / 2


@pytest.fixture(scope="module")
def dense():
    a = _symmetric_matrix()
    w, v = np.linalg.eigh(a)
    return a, w[::-1].copy(), v[:, ::-1].copy()


class Wrapped(nn.Module):
    """A model the library does not know: SpIN must fall back to full (L, L, P) Jacobian averages."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


class Declared(nn.Module):
    """Per-mode tanh features of the input that declare their mode axes to SpIN."""

    def __init__(self, num_modes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(2, num_modes))
        self.bias = nn.Parameter(torch.randn(num_modes))

    def forward(self, x):
        return torch.tanh(x @ self.weight + self.bias)

    def mode_axes(self):
        return {"weight": 1, "bias": 0}


def _abs_cos(a, b):
    a = a / np.linalg.norm(a, axis=0)
    b = b / np.linalg.norm(b, axis=0)
    return np.abs((a * b).sum(0))


# --- recovery of a finite spectrum -----------------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda: nsvd.SpIN(4, decay=0.1), lambda: nsvd.NeuralEF(4)],
                         ids=["spin", "neuralef"])
def test_recovers_top4_of_symmetric_matrix(dense, make):
    a, w, v = dense
    n = a.shape[0]
    torch.manual_seed(0)
    op = DenseOperator(torch.from_numpy(a))
    result = nsvd.fit(Tabular(n, 4).double(), op, make(), steps=600, batch_size=n, lr=3e-2, progress=False)
    np.testing.assert_allclose(result.eigenvalues.numpy(), w[:4], rtol=1e-2)
    learned = result.eigenfunctions(torch.arange(n)).numpy()  # through the loss's read-out wrapper
    assert (_abs_cos(learned, v[:, :4]) > 0.99).all()
    np.testing.assert_allclose((learned**2).mean(0), 1.0, rtol=1e-10)


# --- SpIN: masked gradient, moving averages, read-out -------------------------------------------------------

def _spin_per_mode_objective(u, gram_op):
    """-Σ_k Λ_kk with Λ = C⁻¹ Π C⁻ᵀ, where term k sees only column k of u live (the masked gradient's
    definition); ``gram_op(a, b)`` is the batch ⟨a, T b⟩ (L, L), differentiable in both."""
    total = 0
    for k in range(u.shape[1]):
        uk = torch.cat([u[:, :k].detach(), u[:, k : k + 1], u[:, k + 1 :].detach()], 1)
        sigma = uk.T @ uk / uk.shape[0]
        c_inv = torch.linalg.inv(torch.linalg.cholesky(sigma))
        total = total - (c_inv @ gram_op(uk, uk) @ c_inv.T)[k, k]
    return total


@pytest.mark.parametrize("wrap", [False, True], ids=["block", "shared"])
def test_spin_masked_gradient_is_per_mode_gradient_tabular(dense, wrap):
    a, _, _ = dense
    n, L = a.shape[0], 4
    at = torch.from_numpy(a)
    table = Tabular(n, L).double()
    model = Wrapped(table) if wrap else table
    loss = nsvd.SpIN(L, decay=1.0)
    loss.attach(model)
    fx, tfx = DenseOperator(at).apply(model, torch.randperm(n))  # the whole population, shuffled
    out = loss(fx, tfx)
    (grad,) = torch.autograd.grad(out.loss, table.table)
    reference = _spin_per_mode_objective(table.table, lambda p, q: p.T @ at @ q / n)
    (expected,) = torch.autograd.grad(reference, table.table)
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)
    # read-out: diag(C⁻¹ Π C⁻ᵀ), here independently as Rayleigh quotients of the Gram–Schmidt basis
    q, r = np.linalg.qr(table.table.detach().numpy() / math.sqrt(n))
    q = q * np.sign(np.diag(r))
    np.testing.assert_allclose(out.eigenvalues.numpy(), np.diag(q.T @ a @ q), rtol=1e-10)
    assert out.loss.item() == pytest.approx(-np.trace(q.T @ a @ q), rel=1e-12)


@pytest.mark.parametrize("make", [
    lambda: ParallelMLP(2, 3, hidden=(8, 8), envelope=True),
    lambda: MLP(2, 3, hidden=(8, 8), envelope=True),
    lambda: Declared(3),
    lambda: Wrapped(ParallelMLP(2, 3, hidden=(8, 8))),
], ids=["parallel_mlp", "mlp", "declared", "unknown_model"])
def test_spin_masked_gradient_is_per_mode_gradient_networks(make):
    """Block (per-network), mixed (shared trunk), declared and fallback Jacobian layouts all give the exact
    gradient."""
    torch.manual_seed(0)
    model = make().double()
    n = 24
    x = torch.randn(n, 2, dtype=F64)
    k = torch.randn(n, n, dtype=F64)
    kernel = k @ k.T / n + torch.eye(n, dtype=F64)  # a symmetric operator on the batch
    loss = nsvd.SpIN(3, decay=1.0)
    loss.attach(model)
    fx = model(x)
    out = loss(fx, (kernel @ fx).detach())
    params = list(model.parameters())
    grads = torch.autograd.grad(out.loss, params)
    reference = _spin_per_mode_objective(model(x), lambda p, q: p.T @ kernel @ q / n)
    expected = torch.autograd.grad(reference, params)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12)
    axes = mode_axes(model)
    for (name, p), avg in zip(model.named_parameters(), loss.jacobian_avg.buffers()):
        assert avg.shape == ((3, *p.shape) if axes[name] is not None else (3, 3, *p.shape)), name


def test_spin_rejects_a_declared_axis_of_the_wrong_size():
    with pytest.raises(ValueError, match="no mode axis 1 of size L=4"):
        nsvd.SpIN(4).attach(Declared(3))


def test_spin_gradient_vanishes_at_triangularly_mixed_eigenvectors(dense):
    """u = Φ Mᵀ with M lower triangular: the whitening recovers Φ, Λ = diag(λ), and the update is 0."""
    a, w, v = dense
    n, L = a.shape[0], 4
    m = torch.tensor([[2.0, 0, 0, 0], [0.5, 1.0, 0, 0], [-0.3, 0.2, 0.7, 0], [0.1, -0.4, 0.3, 1.5]],
                     dtype=F64)
    model = Tabular(n, L).double()
    with torch.no_grad():
        model.table.copy_(math.sqrt(n) * torch.from_numpy(v[:, :L]) @ m.T)
    loss = nsvd.SpIN(L, decay=1.0)
    loss.attach(model)
    out = loss(*DenseOperator(torch.from_numpy(a)).apply(model, torch.arange(n)))
    np.testing.assert_allclose(out.eigenvalues.numpy(), w[:L], rtol=1e-12)
    (grad,) = torch.autograd.grad(out.loss, model.table)
    assert grad.abs().max() < 1e-12
    learned = loss.readout(model)(torch.arange(n)).detach().numpy() / math.sqrt(n)
    np.testing.assert_allclose(np.abs(learned.T @ v[:, :L]), np.eye(L), atol=1e-12)


@pytest.mark.parametrize("wrap", [False, True], ids=["block", "shared"])
def test_spin_moving_averages_closed_form(dense, wrap):
    """Three steps on one batch: Σ̄ = (1-β)³ I + (1-(1-β)³) Σ and J̄ = (1-(1-β)³) J."""
    a, _, _ = dense
    n, L, beta = a.shape[0], 4, 0.3
    table = Tabular(n, L).double()
    model = Wrapped(table) if wrap else table
    op = DenseOperator(torch.from_numpy(a))
    x = torch.arange(n)
    single, averaged = nsvd.SpIN(L, decay=1.0), nsvd.SpIN(L, decay=beta)
    single.attach(model)
    averaged.attach(model)
    single(*op.apply(model, x))
    for _ in range(3):
        averaged(*op.apply(model, x))
    kept = (1 - beta) ** 3
    sigma = table.table.detach().T @ table.table.detach() / n
    torch.testing.assert_close(averaged.sigma_avg, kept * torch.eye(L, dtype=F64) + (1 - kept) * sigma)
    jac_single = dict(single.jacobian_avg.named_buffers())
    jac_avg = dict(averaged.jacobian_avg.named_buffers())
    assert jac_avg.keys() == jac_single.keys() and len(jac_avg) == 1
    for name, buf in jac_avg.items():
        assert buf.shape == ((L, L, n, L) if wrap else (L, n, L))  # block layout: L·P, fallback: L²·P
        torch.testing.assert_close(buf, (1 - kept) * jac_single[name])
    # a forward without gradient (evaluation) leaves the state alone
    before = averaged.sigma_avg.clone()
    with torch.no_grad():
        averaged(*op.apply(model, x))
    assert torch.equal(averaged.sigma_avg, before)


def _check_jet(module, x):
    jet = module.jet(x)  # (d + 2, n, L)
    d = x.shape[1]
    torch.testing.assert_close(jet[0], module(x))
    for b in range(x.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda p: module(p.unsqueeze(0))[0], x[b])  # (L, d)
        torch.testing.assert_close(jet[1 : d + 1, b].T, jac)
        for m in range(jet.shape[-1]):
            hess = torch.autograd.functional.hessian(lambda p, m=m: module(p.unsqueeze(0))[0, m], x[b])
            torch.testing.assert_close(jet[d + 1, b, m], hess.trace())


@pytest.mark.parametrize("make", [
    lambda: ParallelMLP(2, 3, hidden=(8, 8), envelope=True, fourier_features=4),
    lambda: nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 3)),  # no jet: nested jvp inside
], ids=["with_jet", "without_jet"])
def test_spin_readout_whitens_and_its_jet_is_exact(make):
    torch.manual_seed(0)
    model = make().double()
    x0 = torch.randn(64, 2, dtype=F64)
    loss = nsvd.SpIN(3, decay=1.0)
    loss.attach(model)
    fx = model(x0)
    loss(fx, fx.detach())  # Σ̄ = Σ of this batch
    readout = loss.readout(model)
    v = readout(x0).detach()
    torch.testing.assert_close(v.T @ v / 64, torch.eye(3, dtype=F64))  # whitened on the batch
    _check_jet(readout, torch.randn(4, 2, dtype=F64))


# --- NeuralEF: update rule, running norms -------------------------------------------------------------

def _normalized(u):
    return u / u.square().mean(0).sqrt()


def test_neuralef_gradient_is_per_mode_gradient(dense):
    """The update ascends R_jj - Σ_{i<j} R_ij² / R_ii per mode with earlier modes held fixed, through
    the batch normalization."""
    a, _, _ = dense
    n, L = a.shape[0], 4
    at = torch.from_numpy(a)
    model = Tabular(n, L).double()
    out = nsvd.NeuralEF(L)(*DenseOperator(at).apply(model, torch.randperm(n)))
    (grad,) = torch.autograd.grad(out.loss, model.table)
    psi = _normalized(model.table)
    fixed = psi.detach()
    r = lambda p, q: p.T @ at @ q / n
    deflation = r(fixed, psi).triu(1) ** 2 / (r(fixed, fixed).diagonal() + NEURALEF_EPS).unsqueeze(1)
    total = -r(psi, psi).trace() + deflation.sum()
    (expected,) = torch.autograd.grad(total, model.table)
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)
    assert out.loss.item() == pytest.approx(total.item(), rel=1e-12)
    psi = psi.detach()
    torch.testing.assert_close(out.eigenvalues, (psi * (at @ psi)).mean(0))


def test_neuralef_unbiased_coefficients_are_overlaps_of_the_other_half(dense):
    """With both halves the whole population, the μ-EigenGame update is
    -(2/n) (Tψ - Tψ triu(⟨ψ, ψ⟩, 1)), pulled back through the normalization."""
    a, _, _ = dense
    n, L = a.shape[0], 4
    at = torch.from_numpy(a)
    model = Tabular(n, L).double()
    x = torch.cat([torch.arange(n), torch.arange(n)])
    out = nsvd.NeuralEF(L, unbiased=True)(*DenseOperator(at).apply(model, x))
    (grad,) = torch.autograd.grad(out.loss, model.table)
    psi = _normalized(model.table[x])  # (2n, L)
    p = psi.detach()[:n]
    tp = at @ p
    update = -(2.0 / (2 * n)) * (tp - tp @ (p.T @ p / n).triu(1))  # (n, L), per copy
    (expected,) = torch.autograd.grad(psi, model.table, torch.cat([update, update]))
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("unbiased", [False, True])
def test_neuralef_fixed_point_at_scaled_eigenvectors(dense, unbiased):
    a, w, v = dense
    n, L = a.shape[0], 4
    model = Tabular(n, L).double()
    with torch.no_grad():
        model.table.copy_(torch.from_numpy(v[:, :L] * np.array([3.0, 0.5, 2.0, 1.0])))
    x = torch.cat([torch.arange(n), torch.arange(n)])
    out = nsvd.NeuralEF(L, unbiased=unbiased)(*DenseOperator(torch.from_numpy(a)).apply(model, x))
    np.testing.assert_allclose(out.eigenvalues.numpy(), w[:L], rtol=1e-12)
    (grad,) = torch.autograd.grad(out.loss, model.table)
    assert grad.abs().max() < 1e-12


def test_neuralef_running_norm_and_readout():
    torch.manual_seed(0)
    model = Tabular(10, 2).double()
    loss = nsvd.NeuralEF(2, momentum=0.5)
    loss.attach(model)
    batches = [torch.arange(0, 6), torch.arange(4, 10), torch.arange(2, 8)]
    squares = [model(b).detach().square().mean(0) for b in batches]
    for b in batches:
        fx = model(b)
        loss(fx, fx.detach())
    with torch.no_grad():
        loss(model(batches[0]), model(batches[0]))  # no gradient: no update
    expected = 0.5 * (0.5 * squares[0] + 0.5 * squares[1]) + 0.5 * squares[2]
    torch.testing.assert_close(loss.mean_square, expected)
    x = torch.arange(10)
    torch.testing.assert_close(loss.readout(model)(x), model(x) / expected.sqrt())


# --- interface: EVD only, checkpointed state ----------------------------------------------------------------

@pytest.mark.parametrize("loss", [nsvd.SpIN(2), nsvd.NeuralEF(2)], ids=["spin", "neuralef"])
def test_baselines_are_evd_only(loss):
    f = torch.randn(6, 2)
    with pytest.raises(NotImplementedError, match="self-adjoint operators only"):
        loss.svd(f, f, f, f)
    op = DenseOperator(torch.randn(5, 4, dtype=F64))
    with pytest.raises(NotImplementedError, match="use NestedLoRA with a \\(left, right\\) model pair"):
        nsvd.fit((Tabular(4, 2).double(), Tabular(5, 2).double()), op, loss, steps=2, batch_size=4,
                 progress=False)


@pytest.mark.parametrize("make,state", [
    (lambda: nsvd.SpIN(4, decay=0.1), {"sigma_avg", "jacobian_avg.table"}),
    (lambda: nsvd.NeuralEF(4), {"mean_square", "updates"}),
], ids=["spin", "neuralef"])
def test_resume_from_checkpoint_matches_uninterrupted_run(dense, tmp_path, make, state):
    a, _, _ = dense
    n = a.shape[0]
    op = DenseOperator(torch.from_numpy(a))

    def train(steps, folder, resume=False):
        torch.manual_seed(0)
        return nsvd.fit(Tabular(n, 4).double(), op, make(), steps=steps, batch_size=n // 2, lr=1e-2,
                        schedule="constant", checkpoint_dir=folder, resume=resume, progress=False)

    straight = train(20, tmp_path / "straight")
    train(10, tmp_path / "split")
    resumed = train(20, tmp_path / "split", resume=True)
    torch.testing.assert_close(resumed.eigenvalues, straight.eigenvalues, rtol=1e-12, atol=0)
    assert torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)["loss"].keys() == state


# --- memory (slow: a subprocess of ~50 training steps) ---------------------------------------------

MEMORY_SCRIPT = textwrap.dedent("""
    import resource, torch, neuralsvd as nsvd
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = nsvd.models.ParallelMLP(2, 16, hidden=(128, 128, 128))
    nsvd.fit(model, nsvd.operators.Hydrogen2D(), nsvd.SpIN(16), steps=50, batch_size=128, optimizer="rmsprop",
             lr=1e-5, eval_batches=2, progress=False)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")


@pytest.mark.slow
def test_spin_memory_at_16_modes_is_within_2gb():
    """L = 16 ParallelMLP (3 × 128) on Hydrogen2D, batch 128: peak resident memory < 2 GB."""
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT], capture_output=True, text=True, check=True)
    peak_kib = int(out.stdout.split()[-1])  # Linux reports ru_maxrss in KiB
    assert peak_kib * 1024 < 2 * 2**30, f"peak RSS {peak_kib / 2**20:.2f} GiB"

"""NestedLoRA: values and hand-written gradients against explicit objectives under torch.autograd."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from neuralsvd import LossOutput, NestedLoRA

F64 = torch.float64


# --- helpers ------------------------------------------------------------------------------------------

def _sym_kernel(n: int) -> torch.Tensor:
    """Random symmetric (n, n) / n: ``Tf = K f`` is self-adjoint in the batch's empirical measure."""
    a = torch.randn(n, n, dtype=F64)
    return (a + a.T) / (2 * n)


def _masks(L: int, weights) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint-nesting ``v_l = Σ_{i≥l} w_i`` and ``M_lm = v_max(l,m)`` computed independently."""
    w = torch.full((L,), 1.0 / L, dtype=F64) if weights is None else torch.as_tensor(weights, dtype=F64)
    v = torch.tensor([w[l:].sum().item() for l in range(L)], dtype=F64)
    m = torch.tensor([[v[max(l, k)].item() for k in range(L)] for l in range(L)], dtype=F64)
    return v, m


def _halves(f: torch.Tensor, unbiased: bool) -> tuple[torch.Tensor, torch.Tensor]:
    n = f.shape[0]
    return (f[: n // 2], f[n // 2 :]) if unbiased else (f, f)


def _moment(f: torch.Tensor) -> torch.Tensor:
    return f.T @ f / f.shape[0]


def _explicit_evd(fx, kernel, v, m, unbiased):
    """``-2 Σ v_l mean(f_l Tf_l) + Σ M Λa Λb`` with ``Tf = K f`` inside the graph."""
    tf = kernel @ fx
    fa, fb = _halves(fx, unbiased)
    return -2 * (v * (fx * tf).mean(0)).sum() + (m * _moment(fa) * _moment(fb)).sum()


def _explicit_svd(fx, gy, a_mat, v, m, unbiased):
    """``-2 Σ v_l ⟨g_l, Tf_l⟩ + ½ Σ M (Λf_a Λg_b + Λf_b Λg_a)`` with ``Tf = c A f`` inside the graph."""
    ny, nx = a_mat.shape
    tfy = math.sqrt(ny / nx) * (a_mat @ fx)
    fa, fb = _halves(fx, unbiased)
    ga, gb = _halves(gy, unbiased)
    metric = 0.5 * (m * (_moment(fa) * _moment(gb) + _moment(fb) * _moment(ga))).sum()
    return -2 * (v * (gy * tfy).mean(0)).sum() + metric


def _svd_operands(fx, gy, a_mat):
    """``(Tf)(y) = sqrt(ny/nx) A f`` and ``(T*g)(x) = sqrt(nx/ny) Aᵀ g``: then
    ``mean_y(g Tf) == mean_x(f T*g)`` exactly (the uniform measures on x and y)."""
    ny, nx = a_mat.shape
    return math.sqrt(ny / nx) * (a_mat @ fx), math.sqrt(nx / ny) * (a_mat.T @ gy)


WEIGHTS = [None, "random"]


def _weights(kind, L):
    if kind is None:
        return None
    return (0.1 + torch.rand(L, dtype=F64)).tolist()


# --- joint nesting, EVD -------------------------------------------------------------------------------

@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("n", [10, 9])
def test_joint_gradient_matches_autograd_of_explicit_objective(unbiased, weights, n):
    L = 4
    w = _weights(weights, L)
    kernel = _sym_kernel(n)
    fx = torch.randn(n, L, dtype=F64, requires_grad=True)
    loss = NestedLoRA(L, nesting="joint", weights=w, unbiased=unbiased)
    out = loss(fx, (kernel @ fx).detach())
    (g_custom,) = torch.autograd.grad(out.loss, fx)

    v, m = _masks(L, w)
    explicit = _explicit_evd(fx, kernel, v, m, unbiased)
    (g_auto,) = torch.autograd.grad(explicit, fx)

    torch.testing.assert_close(out.loss.detach(), explicit.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_custom, g_auto, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("unbiased", [True, False])
def test_joint_gradient_passes_gradcheck(unbiased):
    n, L = 8, 3
    kernel = _sym_kernel(n)
    loss = NestedLoRA(L, nesting="joint", weights=[0.5, 0.3, 0.9], unbiased=unbiased)
    fx = torch.randn(n, L, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f: loss(f, (kernel @ f).detach()).loss, (fx,), eps=1e-6, atol=1e-7)


# --- sequential nesting, EVD --------------------------------------------------------------------------

def _lora_prefix_gradient(fx, kernel, k, unbiased):
    """Gradient w.r.t. ``f_k`` (0-based column k) of the split-batch ℒ_LoRA(f_1..f_k), f_<k detached."""
    fk = fx[:, k : k + 1].detach().clone().requires_grad_(True)
    f = torch.cat([fx[:, :k].detach(), fk], 1)
    tf = kernel @ f
    fa, fb = _halves(f, unbiased)
    lora = -2 * (f * tf).mean(0).sum() + (_moment(fa) * _moment(fb)).sum()
    (g,) = torch.autograd.grad(lora, fk)
    return g[:, 0]


@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_sequential_gradient_column_is_prefix_lora_gradient(unbiased, k):
    n, L = 11, 4
    kernel = _sym_kernel(n)
    fx = torch.randn(n, L, dtype=F64, requires_grad=True)
    out = NestedLoRA(L, nesting="sequential", unbiased=unbiased)(fx, (kernel @ fx).detach())
    (g_custom,) = torch.autograd.grad(out.loss, fx)
    torch.testing.assert_close(g_custom[:, k], _lora_prefix_gradient(fx, kernel, k, unbiased), rtol=1e-10, atol=1e-12)


def test_sequential_value_is_uniform_joint_objective():
    n, L = 10, 4
    kernel = _sym_kernel(n)
    fx = torch.randn(n, L, dtype=F64)
    seq = NestedLoRA(L, nesting="sequential")(fx, kernel @ fx).loss
    joint = NestedLoRA(L, nesting="joint")(fx, kernel @ fx).loss
    v, m = _masks(L, None)
    torch.testing.assert_close(seq, joint, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(seq, _explicit_evd(fx, kernel, v, m, True), rtol=1e-12, atol=1e-12)


# --- SVD form -------------------------------------------------------------------------------------------

def test_svd_operands_agree_on_cross_term():
    nx, ny, L = 7, 12, 3
    a_mat = torch.randn(ny, nx, dtype=F64)
    fx, gy = torch.randn(nx, L, dtype=F64), torch.randn(ny, L, dtype=F64)
    tfy, tadj = _svd_operands(fx, gy, a_mat)
    torch.testing.assert_close((gy * tfy).mean(0), (fx * tadj).mean(0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("nx,ny", [(8, 11), (9, 9)])
def test_svd_joint_gradient_matches_autograd(unbiased, weights, nx, ny):
    L = 3
    w = _weights(weights, L)
    a_mat = torch.randn(ny, nx, dtype=F64)
    fx = torch.randn(nx, L, dtype=F64, requires_grad=True)
    gy = torch.randn(ny, L, dtype=F64, requires_grad=True)
    tfy, tadj = _svd_operands(fx, gy, a_mat)
    loss = NestedLoRA(L, nesting="joint", weights=w, unbiased=unbiased)
    out = loss.svd(fx, gy, tfy.detach(), tadj.detach())
    gf, gg = torch.autograd.grad(out.loss, (fx, gy))

    v, m = _masks(L, w)
    explicit = _explicit_svd(fx, gy, a_mat, v, m, unbiased)
    ef, eg = torch.autograd.grad(explicit, (fx, gy))
    torch.testing.assert_close(out.loss.detach(), explicit.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gf, ef, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gg, eg, rtol=1e-10, atol=1e-12)


def test_svd_joint_gradcheck():
    nx, ny, L = 6, 9, 2
    a_mat = torch.randn(ny, nx, dtype=F64)
    loss = NestedLoRA(L, nesting="joint", weights=[0.7, 0.2])
    fx = torch.randn(nx, L, dtype=F64, requires_grad=True)
    gy = torch.randn(ny, L, dtype=F64, requires_grad=True)

    def value(f, g):
        tfy, tadj = _svd_operands(f, g, a_mat)
        return loss.svd(f, g, tfy.detach(), tadj.detach()).loss

    assert torch.autograd.gradcheck(value, (fx, gy), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("k", [0, 1, 2])
def test_svd_sequential_gradient_column_is_prefix_lora_gradient(k):
    nx, ny, L = 8, 10, 3
    a_mat = torch.randn(ny, nx, dtype=F64)
    fx = torch.randn(nx, L, dtype=F64, requires_grad=True)
    gy = torch.randn(ny, L, dtype=F64, requires_grad=True)
    tfy, tadj = _svd_operands(fx, gy, a_mat)
    out = NestedLoRA(L, nesting="sequential").svd(fx, gy, tfy.detach(), tadj.detach())
    gf, gg = torch.autograd.grad(out.loss, (fx, gy))

    fk = fx[:, k : k + 1].detach().clone().requires_grad_(True)
    gk = gy[:, k : k + 1].detach().clone().requires_grad_(True)
    f = torch.cat([fx[:, :k].detach(), fk], 1)
    g = torch.cat([gy[:, :k].detach(), gk], 1)
    v, m = torch.ones(k + 1, dtype=F64), torch.ones(k + 1, k + 1, dtype=F64)
    ef, eg = torch.autograd.grad(_explicit_svd(f, g, a_mat, v, m, True), (fk, gk))
    torch.testing.assert_close(gf[:, k], ef[:, 0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gg[:, k], eg[:, 0], rtol=1e-10, atol=1e-12)


# --- unbiasedness of the split-batch metric term -------------------------------------------------------

def _metric_term(loss: NestedLoRA, f: torch.Tensor) -> float:
    # with Tf = 0 the objective is the metric term alone
    return loss(f, torch.zeros_like(f)).loss.item()


def _population(N=5, L=2):
    g = torch.Generator().manual_seed(7)
    return torch.randn(N, L, dtype=F64, generator=g).exp()  # skewed values: large fourth moments


@pytest.mark.parametrize("batch", [2, 3, 4])
def test_split_metric_term_is_exactly_unbiased_by_enumeration(batch):
    """Average over *all* N^B ordered i.i.d. batches (with replacement) = the exact expectation."""
    pop = _population()
    N, L = pop.shape
    w = [0.6, 0.4]
    loss_u = NestedLoRA(L, nesting="joint", weights=w, unbiased=True)
    loss_b = NestedLoRA(L, nesting="joint", weights=w, unbiased=False)
    total_u = total_b = 0.0
    for idx in itertools.product(range(N), repeat=batch):
        f = pop[list(idx)]
        total_u += _metric_term(loss_u, f)
        total_b += _metric_term(loss_b, f)
    count = N**batch
    _, m = _masks(L, w)
    lam = _moment(pop)
    target = (m * lam * lam).sum().item()
    # E[Λ_B ∘ Λ_B] = Λ∘Λ + (Q - Λ∘Λ)/B with Q_lm = mean_i f_il² f_im²
    q = (pop.T**2) @ (pop**2) / N
    biased_target = (m * (lam * lam + (q - lam * lam) / batch)).sum().item()
    assert total_u / count == pytest.approx(target, rel=1e-12)
    assert total_b / count == pytest.approx(biased_target, rel=1e-12)
    assert abs(biased_target - target) > 0.1 * target  # the biased estimator is visibly off


def test_split_metric_term_unbiased_monte_carlo():
    pop = _population(N=40, L=3)
    N, L = pop.shape
    loss_u = NestedLoRA(L, nesting="joint", unbiased=True)
    loss_b = NestedLoRA(L, nesting="joint", unbiased=False)
    g = torch.Generator().manual_seed(11)
    draws, batch = 3000, 6
    est_u, est_b = [], []
    for _ in range(draws):
        f = pop[torch.randint(N, (batch,), generator=g)]
        est_u.append(_metric_term(loss_u, f))
        est_b.append(_metric_term(loss_b, f))
    est_u, est_b = torch.tensor(est_u, dtype=F64), torch.tensor(est_b, dtype=F64)
    _, m = _masks(L, None)
    lam = _moment(pop)
    target = (m * lam * lam).sum().item()
    se_u = est_u.std().item() / math.sqrt(draws)
    se_b = est_b.std().item() / math.sqrt(draws)
    assert abs(est_u.mean().item() - target) < 4 * se_u
    assert est_b.mean().item() - target > 10 * se_b


# --- read-out --------------------------------------------------------------------------------------------

def test_evd_readout_on_exact_eigenvectors():
    n, L = 12, 3
    a = torch.randn(n, n, dtype=F64)
    sym = (a + a.T) / 2
    evals, evecs = torch.linalg.eigh(sym)
    scales = torch.tensor([0.5, 2.0, 1.3], dtype=F64)
    f = math.sqrt(n) * evecs[:, -L:].flip(1) * scales  # uniform measure on n points: ⟨a,b⟩ = mean a b
    tf = f @ torch.diag(evals[-L:].flip(0))  # T φ = λ φ
    out = NestedLoRA(L)(f, tf)
    assert isinstance(out, LossOutput)
    torch.testing.assert_close(out.eigenvalues, evals[-L:].flip(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.norm_eigenvalues, (f * f).mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.norm_eigenvalues, scales**2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.gram, torch.diag(scales**2), rtol=1e-12, atol=1e-12)
    assert not out.eigenvalues.requires_grad and not out.gram.requires_grad


def test_svd_readout_on_exact_singular_vectors():
    nx, ny, L = 7, 10, 3
    a_mat = torch.randn(ny, nx, dtype=F64)
    u, s, vh = torch.linalg.svd(a_mat, full_matrices=False)
    cf = torch.tensor([0.3, 1.0, 2.5], dtype=F64)
    cg = torch.tensor([1.7, 0.2, 1.0], dtype=F64)
    fx = math.sqrt(nx) * vh.T[:, :L] * cf
    gy = math.sqrt(ny) * u[:, :L] * cg
    tfy, tadj = _svd_operands(fx, gy, a_mat)
    out = NestedLoRA(L).svd(fx, gy, tfy, tadj)
    torch.testing.assert_close(out.eigenvalues, s[:L], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.norm_eigenvalues, cf * cg, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.gram, torch.diag(cf**2), rtol=1e-12, atol=1e-12)


def test_optimum_of_full_batch_lora_is_sqrt_lambda_eigenvectors():
    """At f_l = sqrt(λ_l) φ_l (top positive eigenpairs) the full-batch gradient vanishes."""
    n, L = 9, 3
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=F64))
    lam = torch.tensor([3.0, 2.0, 1.0, 0.5, -0.2, -1.0, -2.0, 0.1, 0.05], dtype=F64)
    kernel = q @ torch.diag(lam) @ q.T / n  # eigenfunctions sqrt(n) q_l, eigenvalues lam
    for nesting in ("joint", "sequential"):
        f = (math.sqrt(n) * q[:, :L] * lam[:L].sqrt()).requires_grad_(True)
        # (Tf)(i) = Σ_j A_ij f(j) with A = n * kernel (the uniform-measure convention): T sqrt(n) q = λ sqrt(n) q
        out = NestedLoRA(L, nesting=nesting, unbiased=False)(f, (n * kernel @ f).detach())
        (g,) = torch.autograd.grad(out.loss, f)
        assert g.abs().max().item() < 1e-12
        torch.testing.assert_close(out.norm_eigenvalues, lam[:L], rtol=1e-12, atol=1e-12)


# --- construction errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("num_modes", [0, -2, 1.5, True, "3"])
def test_num_modes_must_be_positive_int(num_modes):
    with pytest.raises(ValueError, match="num_modes must be a positive integer"):
        NestedLoRA(num_modes)


def test_unknown_nesting():
    with pytest.raises(ValueError, match=r"unknown nesting 'nested'.*'joint', 'sequential'"):
        NestedLoRA(3, nesting="nested")


@pytest.mark.parametrize("weights", [[1.0, 0.0, 1.0], [1.0, -1.0, 2.0], [1.0, 2.0], [1.0, float("nan"), 1.0],
                                     [1.0, float("inf"), 1.0]])
def test_weights_must_be_positive_finite_of_length_L(weights):
    with pytest.raises(ValueError, match="weights must be 3 positive finite numbers"):
        NestedLoRA(3, nesting="joint", weights=weights)


def test_weights_with_sequential_nesting_rejected():
    with pytest.raises(ValueError, match="weights apply to joint nesting only"):
        NestedLoRA(3, nesting="sequential", weights=[1.0, 1.0, 1.0])


@pytest.mark.parametrize("fx_shape,tfx_shape", [((6, 3), (6, 3)), ((6, 2), (5, 2)), ((6,), (6,)), ((6, 2), (6, 1))])
def test_forward_rejects_bad_shapes(fx_shape, tfx_shape):
    with pytest.raises(ValueError, match=r"expects model outputs of shape \(n, L\) = \(n, 2\)"):
        NestedLoRA(2)(torch.zeros(fx_shape), torch.zeros(tfx_shape))


def test_unbiased_needs_two_points():
    with pytest.raises(ValueError, match="needs a batch of at least 2 points, got 1"):
        NestedLoRA(2)(torch.zeros(1, 2), torch.zeros(1, 2))
    out = NestedLoRA(2, unbiased=False)(torch.ones(1, 2, dtype=F64), torch.ones(1, 2, dtype=F64))
    # one point, Λ = 1: -2 Σ v + Σ M with v = (1, ½), M = [[1, ½], [½, ½]]
    assert out.loss.item() == pytest.approx(-2 * 1.5 + 2.5, rel=1e-12)

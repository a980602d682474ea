"""Acceptance: fit() recovers the top eigen/singular pairs of small dense matrices (numpy as the reference),
and evaluate() reports what a hand computation gives."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import neuralsvd as nsvd
from neuralsvd.models import Tabular
from neuralsvd.operators import DenseOperator

F64 = torch.float64
TOP = np.array([5.0, 4.0, 3.0, 2.0])


def _symmetric_matrix(n=30, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = np.concatenate([TOP, rng.uniform(-1, 1, n - 4)])
    a = q @ np.diag(lam) @ q.T
    return (a + a.T) / 2


def _rectangular_matrix(m=20, n=12, seed=1):
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((m, n)))
    v, _ = np.linalg.qr(rng.standard_normal((n, n)))
    s = np.concatenate([TOP, rng.uniform(0, 0.95, n - 4)])
    return u @ np.diag(s) @ v.T


def _abs_cos(a, b):
    a = a / np.linalg.norm(a, axis=0)
    b = b / np.linalg.norm(b, axis=0)
    return np.abs((a * b).sum(0))


def _hand_metrics(learned, true):
    """Function metrics for L single-mode blocks, vectors in R^N with the Euclidean product."""
    learned = learned / np.linalg.norm(learned, axis=0)
    cos = (learned * true).sum(0)
    q, _ = np.linalg.qr(learned)
    c = learned.T @ learned
    L = learned.shape[1]
    return {
        "subspace_distance_blocks": (1 - cos**2).tolist(),
        "subspace_distance_avg": float(np.mean(1 - cos**2)),
        "subspace_distance_all": float(1 - np.linalg.norm(q.T @ true) ** 2 / L),
        "angle_distance": float(np.mean(1 - np.abs(cos))),
        "orthogonality_error": float(((c - np.diag(np.diag(c))) ** 2).sum() / (L * (L - 1))),
    }


def _check_function_metrics(ev, hand, prefix=""):
    for key, value in hand.items():
        assert ev[prefix + key] == pytest.approx(value, abs=1e-12), key


@pytest.fixture(scope="module")
def symmetric_problem():
    a = _symmetric_matrix()
    w, v = np.linalg.eigh(a)
    return a, w[::-1], v[:, ::-1]


@pytest.fixture(scope="module")
def rectangular_problem():
    a = _rectangular_matrix()
    u, s, vh = np.linalg.svd(a, full_matrices=False)
    return a, s, u, vh.T


@pytest.mark.parametrize("nesting", ["joint", "sequential"])
def test_symmetric_top4_eigenpairs(symmetric_problem, nesting):
    a, w, v = symmetric_problem
    n = a.shape[0]
    op = DenseOperator(torch.from_numpy(a))
    assert op.self_adjoint
    torch.manual_seed(0)
    result = nsvd.fit(Tabular(n, 4).double(), op, nsvd.NestedLoRA(4, nesting=nesting),
                      steps=3000, batch_size=n, lr=3e-2, progress=False)
    np.testing.assert_allclose(result.eigenvalues.numpy(), w[:4], rtol=1e-4)
    assert bool((result.eigenvalues[:-1] > result.eigenvalues[1:]).all())  # leading first
    torch.testing.assert_close(result.learned_eigenvalues, result.eigenvalues)  # dense: no conversion
    np.testing.assert_allclose((result.norms**2).numpy(), w[:4], rtol=1e-3)  # ‖f_l‖² → λ_l at the optimum

    learned = result.eigenfunctions(torch.arange(n)).numpy() / math.sqrt(n)
    np.testing.assert_allclose(np.linalg.norm(learned, axis=0), 1.0, rtol=1e-10)  # unit norm in L²(uniform)
    assert (_abs_cos(learned, v[:, :4]) > 0.999).all()

    ev = nsvd.evaluate(result)
    assert ev["eigenvalues"] == pytest.approx(result.eigenvalues.tolist(), rel=1e-15)
    assert ev["exact_eigenvalues"] == pytest.approx(w[:4].tolist(), rel=1e-12)
    rel = np.abs(result.eigenvalues.numpy() - w[:4]) / np.abs(w[:4])
    assert ev["eigenvalue_relative_error"] == pytest.approx(rel.tolist(), rel=1e-6, abs=1e-15)
    assert ev["mean_eigenvalue_relative_error"] == pytest.approx(rel.mean(), rel=1e-6, abs=1e-15)
    assert ev["max_eigenvalue_relative_error"] == pytest.approx(rel.max(), rel=1e-6, abs=1e-15)
    assert ev["blocks"] == [[0], [1], [2], [3]]
    assert ev["quadrature_error"] < 1e-13
    _check_function_metrics(ev, _hand_metrics(learned, v[:, :4]))
    assert ev["subspace_distance_all"] < 1e-5


@pytest.mark.parametrize("nesting", ["joint", "sequential"])
def test_rectangular_top4_singular_triples(rectangular_problem, nesting):
    a, s, u, v = rectangular_problem
    m, n = a.shape
    op = DenseOperator(torch.from_numpy(a))
    assert not op.self_adjoint
    torch.manual_seed(0)
    result = nsvd.fit((Tabular(n, 4).double(), Tabular(m, 4).double()), op,
                      nsvd.NestedLoRA(4, nesting=nesting),
                      steps=3000, batch_size=m, lr=3e-2, progress=False)
    assert result.is_svd
    np.testing.assert_allclose(result.singular_values.numpy(), s[:4], rtol=1e-4)
    np.testing.assert_allclose((result.norms * result.right_norms).numpy(), s[:4], rtol=1e-3)  # ‖f‖‖g‖ → σ

    left = result.left_functions(torch.arange(n)).numpy() / math.sqrt(n)
    right = result.right_functions(torch.arange(m)).numpy() / math.sqrt(m)
    assert (_abs_cos(left, v[:, :4]) > 0.999).all()  # input side: numpy's V
    assert (_abs_cos(right, u[:, :4]) > 0.999).all()  # output side: numpy's U
    # the pair is consistent: A φ_l = σ_l ψ_l in index space (sign included)
    np.testing.assert_allclose(a @ left, right * s[:4], atol=1e-3)

    ev = nsvd.evaluate(result)
    assert ev["exact_eigenvalues"] == pytest.approx(s[:4].tolist(), rel=1e-12)
    rel = np.abs(result.singular_values.numpy() - s[:4]) / s[:4]
    assert ev["eigenvalue_relative_error"] == pytest.approx(rel.tolist(), rel=1e-6, abs=1e-15)
    _check_function_metrics(ev, _hand_metrics(left, v[:, :4]))
    _check_function_metrics(ev, _hand_metrics(right, u[:, :4]), prefix="right_")


def test_dense_operator_closed_forms_match_numpy(symmetric_problem, rectangular_problem):
    a, w, v = symmetric_problem
    op = DenseOperator(torch.from_numpy(a))
    n = a.shape[0]
    np.testing.assert_allclose(op.exact_eigenvalues(5).numpy(), w[:5], rtol=1e-12)
    phi = op.exact_eigenfunctions(torch.arange(n), 5).numpy()
    np.testing.assert_allclose(_abs_cos(phi, v[:, :5]), 1.0, rtol=1e-12)
    np.testing.assert_allclose((phi * phi).mean(0), 1.0, rtol=1e-12)  # unit norm in L²(uniform)
    # T φ = λ φ through apply: (Tf)(i) = Σ_j A_ij f(j)
    f = lambda idx: op.exact_eigenfunctions(idx, 5)
    x = torch.tensor([3, 0, 17, 29])
    fx, tfx = op.apply(f, x)
    np.testing.assert_allclose(tfx.numpy(), fx.numpy() * w[:5], atol=1e-12)

    b, s, _u, vr = rectangular_problem
    opr = DenseOperator(torch.from_numpy(b))
    m, n = b.shape
    np.testing.assert_allclose(opr.exact_eigenvalues(4).numpy(), s[:4], rtol=1e-12)
    left, right = opr.exact_eigenfunctions(torch.arange(n), 4), opr.exact_right_functions(torch.arange(m), 4)
    fx, _gy, tfy, tadj = opr.apply_svd(lambda i: opr.exact_eigenfunctions(i, 4),
                                      lambda j: opr.exact_right_functions(j, 4), torch.arange(n), torch.arange(m))
    np.testing.assert_allclose(tfy.numpy(), right.numpy() * s[:4], atol=1e-12)  # T φ = σ ψ
    np.testing.assert_allclose(tadj.numpy(), left.numpy() * s[:4], atol=1e-12)  # T* ψ = σ φ
    np.testing.assert_allclose(_abs_cos(left.numpy(), vr[:, :4]), 1.0, rtol=1e-12)


def test_norm_read_out_agrees_with_rayleigh_at_convergence():
    """At the NestedLoRA optimum ‖f_l‖² = λ_l: both read-outs give numpy's eigenvalues."""
    gen = np.random.default_rng(3)
    q, _ = np.linalg.qr(gen.normal(size=(12, 12)))
    evals = np.concatenate([[3.0, 2.0], gen.uniform(-0.5, 0.5, size=10)])
    a = torch.tensor((q * evals) @ q.T)
    torch.manual_seed(0)
    res = nsvd.fit(nsvd.models.Tabular(12, 2).double(), nsvd.operators.DenseOperator(a),
                   nsvd.NestedLoRA(2), steps=2000, batch_size=12, lr=3e-2, progress=False)
    torch.testing.assert_close(res.norm_eigenvalues, torch.tensor([3.0, 2.0], dtype=torch.float64), rtol=1e-6, atol=0)
    torch.testing.assert_close(res.eigenvalues, torch.tensor([3.0, 2.0], dtype=torch.float64), rtol=1e-8, atol=0)


def test_ritz_readout_undoes_mixing_in_the_learned_span():
    """Rotated true eigenvectors: per-mode Rayleigh quotients are wrong, Rayleigh–Ritz recovers the
    eigenpairs exactly (no training: steps=0)."""
    gen = np.random.default_rng(5)
    q, _ = np.linalg.qr(gen.normal(size=(10, 10)))
    evals = np.array([4.0, 3.0, 2.0, 1.0, 0.5, 0.2, 0.1, -0.1, -0.3, -0.5])
    a = (q * evals) @ q.T
    rot, _ = np.linalg.qr(gen.normal(size=(3, 3)))
    model = nsvd.models.Tabular(10, 3).double()
    with torch.no_grad():
        model.table.copy_(torch.tensor(q[:, :3] @ rot * np.array([2.0, 0.5, 1.0])))
    op = nsvd.operators.DenseOperator(torch.tensor(a))
    kw = {"steps": 0, "batch_size": 10, "progress": False}
    rayleigh = nsvd.fit(model, op, nsvd.NestedLoRA(3), readout="rayleigh", **kw)
    assert (rayleigh.eigenvalues - torch.tensor(evals[:3])).abs().max() > 0.1
    ritz = nsvd.fit(model, op, nsvd.NestedLoRA(3), readout="ritz", **kw)
    torch.testing.assert_close(ritz.eigenvalues, torch.tensor(evals[:3]), rtol=1e-12, atol=1e-12)
    learned = ritz.eigenfunctions(torch.arange(10)) / math.sqrt(10)  # (10, 3), unit vectors
    cos = (learned * torch.tensor(q[:, :3])).sum(0).abs()
    torch.testing.assert_close(cos, torch.ones(3, dtype=torch.float64), rtol=1e-10, atol=1e-10)


def test_norm_ratio_is_one_at_convergence_and_flags_unconverged_modes(recwarn):
    """‖f_l‖²/λ_l is 1 at the NestedLoRA optimum (no warning); a mode far from it is named in a warning."""
    gen = np.random.default_rng(3)
    q, _ = np.linalg.qr(gen.normal(size=(12, 12)))
    a = torch.tensor((q * np.concatenate([[3.0, 2.0], gen.uniform(-0.5, 0.5, size=10)])) @ q.T)
    op = nsvd.operators.DenseOperator(a)
    torch.manual_seed(0)
    res = nsvd.fit(nsvd.models.Tabular(12, 2).double(), op, nsvd.NestedLoRA(2), steps=2000,
                   batch_size=12, lr=3e-2, progress=False)
    np.testing.assert_allclose(res.extras["norm_ratio"], [1.0, 1.0], rtol=1e-6)
    assert not [w for w in recwarn if "unconverged" in str(w.message)]
    model = nsvd.models.Tabular(12, 2).double()
    with torch.no_grad():  # mode 1 is the right direction at 1/10 of its optimal norm: ratio 0.01
        model.table.copy_(torch.tensor(q[:, :2] * np.sqrt([3.0, 0.02]) * math.sqrt(12)))
    with pytest.warns(RuntimeWarning, match=r"modes 1 \(0\.01\) look unconverged"):
        low = nsvd.fit(model, op, nsvd.NestedLoRA(2), steps=0, batch_size=12, progress=False)
    np.testing.assert_allclose(low.extras["norm_ratio"], [1.0, 0.01], rtol=1e-10)
    ritz = nsvd.fit(model, op, nsvd.NestedLoRA(2), steps=0, batch_size=12, progress=False, readout="ritz")
    assert ritz.extras["norm_ratio"] is None

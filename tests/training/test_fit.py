"""Library defaults on finite operators: when the batch is the whole population, every loss uses the
exact full-batch moments (no option set), for EVD and SVD and both nestings, against numpy."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import neuralsvd as nsvd
from neuralsvd.models import Tabular
from neuralsvd.operators import CycleGraph, DenseOperator

LEADING = np.array([5.0, 4.0, 3.0, 2.0, 1.0])  # well separated; the rest of the spectrum in [-0.3, 0.3]


def _abs_cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs((a * b).sum(0)) / (np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0))


def _orthogonal(n: int, rng: np.random.Generator) -> np.ndarray:
    return np.linalg.qr(rng.standard_normal((n, n)))[0]


def _symmetric(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = _orthogonal(n, rng)
    return (q * np.concatenate([LEADING, rng.uniform(-0.3, 0.3, n - 5)])) @ q.T


def _rectangular(m: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    k = min(m, n)
    s = np.concatenate([LEADING, rng.uniform(0.0, 0.3, k - 5)])
    return (_orthogonal(m, rng)[:, :k] * s) @ _orthogonal(n, rng)[:, :k].T


@pytest.mark.parametrize("nesting", ["sequential", "joint"])
@pytest.mark.parametrize("n", [12, 30])
def test_symmetric_matrix_with_defaults(n, nesting):
    a = _symmetric(n, seed=n)
    w, v = np.linalg.eigh(a)
    w, v = w[::-1][:5], v[:, ::-1][:, :5]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the defaults must not warn
        result = nsvd.fit(Tabular(n, 5).double(), DenseOperator(torch.from_numpy(a)), nsvd.NestedLoRA(5, nesting=nesting),
                          steps=3000, batch_size=n, lr=3e-2, progress=False)
    np.testing.assert_allclose(result.eigenvalues.numpy(), w, rtol=1e-3)
    learned = result.eigenfunctions(torch.arange(n)).numpy()
    assert (_abs_cos(learned, v) > 0.999).all()


@pytest.mark.parametrize("nesting", ["sequential", "joint"])
@pytest.mark.parametrize(("m", "n"), [(16, 12), (30, 24)])
def test_rectangular_matrix_with_defaults(m, n, nesting):
    a = _rectangular(m, n, seed=m + n)
    u, s, vh = np.linalg.svd(a, full_matrices=False)
    op = DenseOperator(torch.from_numpy(a))
    assert op.batch_is_population(max(m, n), svd=True) and not op.batch_is_population(min(m, n), svd=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = nsvd.fit((Tabular(n, 5).double(), Tabular(m, 5).double()), op, nsvd.NestedLoRA(5, nesting=nesting),
                          steps=3000, batch_size=max(m, n), lr=3e-2, progress=False)
    np.testing.assert_allclose(result.singular_values.numpy(), s[:5], rtol=1e-3)
    assert (_abs_cos(result.left_functions(torch.arange(n)).numpy(), vh[:5].T) > 0.999).all()
    assert (_abs_cos(result.right_functions(torch.arange(m)).numpy(), u[:, :5]) > 0.999).all()


def test_population_batches_decide_the_split():
    """What fit tells the loss: a dense batch of at least n points without replacement is the population
    (exact moments), anything else is sampled (split halves); explicit settings still force."""
    op = DenseOperator(torch.from_numpy(_symmetric(8, 0)))
    assert op.batch_is_population(8) and op.batch_is_population(20) and not op.batch_is_population(7)
    assert not DenseOperator(op.matrix, replacement=True).batch_is_population(8)
    assert CycleGraph(8, replacement=False).batch_is_population(8)
    assert not CycleGraph(8).batch_is_population(8)  # i.i.d. node batches by default
    assert not nsvd.operators.HarmonicOscillator(1).batch_is_population(10**6)
    auto, forced = nsvd.NestedLoRA(3), nsvd.NestedLoRA(3, unbiased=True)
    assert auto.split and auto.min_batch_size == 2  # standalone: sampled batches
    auto.use_population_batches(True)
    assert not auto.split and auto.min_batch_size == 1
    with pytest.warns(RuntimeWarning, match=r"unbiased=True\) splits a batch that is the whole finite population"):
        forced.use_population_batches(True)
    assert forced.split
    with pytest.warns(RuntimeWarning, match=r"unbiased=False\) on random minibatches biases"):
        nsvd.NestedLoRA(3, unbiased=False).use_population_batches(False)
    ef = nsvd.NeuralEF(3, unbiased=None)
    ef.use_population_batches(True)
    assert not ef.split
    ef.use_population_batches(False)
    assert ef.split


def test_population_loss_is_the_exact_objective():
    """On the population the default NestedLoRA value equals the objective with exact moments; the
    split estimate of the same batch does not (halves of a finite population are dependent)."""
    n, L = 10, 3
    a = torch.from_numpy(_symmetric(n, 1))
    f = torch.randn(n, L, dtype=torch.float64)
    tf = a @ f  # (Tf)(i) = Σ_j A_ij f(j)
    lam = f.T @ f / n
    v = torch.arange(L, 0, -1, dtype=torch.float64) / L  # joint, uniform weights: v_l = Σ_{i≥l} 1/L
    m = v[torch.maximum(torch.arange(L)[:, None], torch.arange(L)[None, :])]  # M_lm = v_max(l,m)
    exact = -2 * (v * (f * tf).mean(0)).sum() + (m * lam * lam).sum()
    loss = nsvd.NestedLoRA(L, nesting="joint")
    loss.use_population_batches(True)
    assert loss(f, tf).loss.item() == pytest.approx(exact.item(), rel=1e-12)
    loss.use_population_batches(False)
    assert loss(f, tf).loss.item() != pytest.approx(exact.item(), rel=1e-3)

"""Degeneracy-aware accuracy metrics against hand computations and invariance properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import ortho_group

from neuralsvd.numerics import metrics

F64 = torch.float64
BLOCKS = [[0], [1, 2], [3, 4, 5]]  # the blocks of eigenvalues [1, 2, 2, 3, 3, 3]


# --- helpers: functions as vectors in R^N with the Euclidean inner product ---------------------------------

def _orthonormal(n, k, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, k)))
    return torch.from_numpy(q)


def _grams(learned, true):
    return learned.T @ learned, learned.T @ true


def _block_rotation(blocks, seed, scale=False):
    """Block-diagonal orthogonal matrix (optionally times a positive scaling and sign flips)."""
    rng = np.random.default_rng(seed)
    L = sum(len(b) for b in blocks)
    r = np.zeros((L, L))
    for b in blocks:
        k = len(b)
        r[np.ix_(b, b)] = ortho_group.rvs(k, random_state=rng) if k > 1 else rng.choice([-1.0, 1.0])
    out = torch.from_numpy(r)
    if scale:
        out = out @ torch.diag(torch.from_numpy(rng.uniform(0.2, 3.0, L)))
    return out


# --- degenerate_blocks / relative error ------------------------------------------------------------------

def test_degenerate_blocks_groups_equal_values():
    assert metrics.degenerate_blocks(torch.tensor([1.0, 2, 2, 3, 3, 3])) == BLOCKS
    assert metrics.degenerate_blocks([5.0]) == [[0]]
    assert metrics.degenerate_blocks([-0.25, -0.25 * (1 + 1e-12), -1 / 9]) == [[0, 1], [2]]
    assert metrics.degenerate_blocks([1.0, 1.001, 1.002]) == [[0], [1], [2]]
    assert metrics.degenerate_blocks([1.0, 1.001], rtol=1e-2) == [[0, 1]]


def test_eigenvalue_relative_error():
    err = metrics.eigenvalue_relative_error(torch.tensor([1.1, -2.0, -0.27]), torch.tensor([1.0, -2.0, -0.25]))
    torch.testing.assert_close(err, torch.tensor([0.1, 0.0, 0.08], dtype=F64), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.eigenvalue_relative_error(torch.ones(3), torch.ones(2))


# --- orthogonality ----------------------------------------------------------------------------------------

def test_orthogonality_error_of_orthonormal_set_is_zero():
    q = _orthonormal(20, 6, 0) * torch.tensor([1.0, 2.0, 0.5, 3.0, 1.0, 7.0], dtype=F64)  # orthogonal, any norms
    assert metrics.orthogonality_error(q.T @ q) == pytest.approx(0.0, abs=1e-28)


def test_orthogonality_error_hand_computed_2x2():
    gram = torch.tensor([[4.0, 1.0], [1.0, 1.0]], dtype=F64)  # C_12 = 1 / (2·1) = 0.5
    assert metrics.orthogonality_error(gram) == pytest.approx(0.25, rel=1e-14)
    gram3 = torch.tensor([[1.0, 0.3, 0.0], [0.3, 4.0, -1.0], [0.0, -1.0, 1.0]], dtype=F64)
    c12, c23 = 0.3 / 2, -1.0 / 2
    assert metrics.orthogonality_error(gram3) == pytest.approx(2 * (c12**2 + c23**2) / 6, rel=1e-14)
    assert metrics.orthogonality_error(torch.tensor([[3.0]])) == 0.0


# --- subspace distance --------------------------------------------------------------------------------

def test_subspace_distance_zero_for_truth_and_in_block_mixing():
    true = _orthonormal(30, 6, 1)
    assert metrics.subspace_distance(*_grams(true, true)) == pytest.approx(0.0, abs=1e-13)
    learned = true @ _block_rotation(BLOCKS, 2, scale=True)
    gram, cross = _grams(learned, true)
    for b in BLOCKS:
        assert metrics.subspace_distance(gram, cross, b) == pytest.approx(0.0, abs=1e-13)
    assert metrics.subspace_distance(gram, cross) == pytest.approx(0.0, abs=1e-13)


def test_subspace_distance_one_for_orthogonal_complement():
    q = _orthonormal(30, 12, 3)
    true, learned = q[:, :6], q[:, 6:] * 2.5
    gram, cross = _grams(learned, true)
    assert metrics.subspace_distance(gram, cross) == pytest.approx(1.0, abs=1e-13)
    assert metrics.subspace_distances(gram, cross, BLOCKS) == pytest.approx([1.0, 1.0, 1.0], abs=1e-13)


@pytest.mark.parametrize("theta", [0.0, 0.3, 1.0, math.pi / 2])
def test_subspace_distance_closed_form_single_mode(theta):
    q = _orthonormal(10, 2, 4)
    true, learned = q[:, :1], 3.0 * (math.cos(theta) * q[:, :1] + math.sin(theta) * q[:, 1:])
    assert metrics.subspace_distance(*_grams(learned, true)) == pytest.approx(math.sin(theta) ** 2, abs=1e-13)


def test_subspace_distance_closed_form_half_overlap():
    """Block of 2: learned span {φ_1, φ_3}: tr(P̂P)/2 = 1/2."""
    q = _orthonormal(10, 3, 5)
    true, learned = q[:, :2], torch.stack([q[:, 0] + q[:, 2], q[:, 2] - 2 * q[:, 0]], 1)
    assert metrics.subspace_distance(*_grams(learned, true)) == pytest.approx(0.5, abs=1e-13)


def test_subspace_distance_matches_projection_traces():
    rng = np.random.default_rng(6)
    true = _orthonormal(15, 6, 7)
    learned = torch.from_numpy(rng.standard_normal((15, 6)))
    gram, cross = _grams(learned, true)
    for b in BLOCKS + [list(range(6))]:
        qhat, _ = torch.linalg.qr(learned[:, b])
        p_hat, p = qhat @ qhat.T, true[:, b] @ true[:, b].T
        expected = 1 - torch.trace(p_hat @ p).item() / len(b)
        assert metrics.subspace_distance(gram, cross, b) == pytest.approx(expected, abs=1e-12)


# --- angle distance -----------------------------------------------------------------------------------------

def test_angle_distance_invariant_to_signs_and_in_block_rotations():
    true = _orthonormal(30, 6, 8)
    learned = true @ _block_rotation(BLOCKS, 9) @ torch.diag(torch.tensor([2.0, 1, 0.5, 3, 1, 1], dtype=F64))
    gram, cross = _grams(learned, true)
    assert metrics.angle_distance(gram, cross, BLOCKS) == pytest.approx(0.0, abs=1e-12)
    flipped = true * torch.tensor([-1.0, 1, -1, 1, -1, -1], dtype=F64)
    assert metrics.angle_distance(*_grams(flipped, true), BLOCKS) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("theta", [0.1, 0.8, math.pi / 2])
def test_angle_distance_closed_form(theta):
    """Mode 0 tilted out of the true span by θ, the rest exact: mean over 3 modes of 1 - |cos|."""
    q = _orthonormal(12, 4, 10)
    true = q[:, :3]
    learned = true.clone()
    learned[:, 0] = -2.0 * (math.cos(theta) * q[:, 0] + math.sin(theta) * q[:, 3])
    blocks = [[0], [1, 2]]
    assert metrics.angle_distance(*_grams(learned, true), blocks) == pytest.approx((1 - math.cos(theta)) / 3, abs=1e-12)


def test_procrustes_recovers_block_rotation():
    true = _orthonormal(20, 3, 11)
    rot = torch.from_numpy(ortho_group.rvs(3, random_state=12))
    learned = true @ rot
    r, cos = metrics.procrustes_alignment(*_grams(learned, true), [0, 1, 2])
    torch.testing.assert_close(r, rot.T, rtol=0, atol=1e-12)
    torch.testing.assert_close(cos, torch.ones(3, dtype=F64), rtol=0, atol=1e-12)


# --- hypothesis properties ----------------------------------------------------------------------------------

block_layouts = st.sampled_from([BLOCKS, [[0, 1], [2], [3, 4]], [[0], [1], [2], [3]], [[0, 1, 2, 3]]])


def _random_case(blocks, seed, noise):
    L = sum(len(b) for b in blocks)
    rng = np.random.default_rng(seed)
    true = _orthonormal(12, L, seed)
    learned = true @ torch.from_numpy(rng.standard_normal((L, L))) * noise + true * (1 - noise)
    learned = learned + noise * torch.from_numpy(rng.standard_normal((12, L)))
    return true, learned


@settings(max_examples=25, deadline=None, derandomize=True)
@given(blocks=block_layouts, seed=st.integers(0, 2**31 - 1), noise=st.floats(0.0, 1.0))
def test_property_subspace_distances_invariant_to_in_block_rotations(blocks, seed, noise):
    true, learned = _random_case(blocks, seed, noise)
    gram, cross = _grams(learned, true)
    avg = np.mean(metrics.subspace_distances(gram, cross, blocks))
    full = metrics.subspace_distance(gram, cross)
    # rotate (and rescale) the learned functions inside blocks, and rotate the true ones inside blocks
    r_learned = _block_rotation(blocks, seed + 1, scale=True)
    r_true = _block_rotation(blocks, seed + 2)
    gram2, cross2 = _grams(learned @ r_learned, true @ r_true)
    assert np.mean(metrics.subspace_distances(gram2, cross2, blocks)) == pytest.approx(avg, abs=1e-10)
    assert metrics.subspace_distance(gram2, cross2) == pytest.approx(full, abs=1e-10)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(blocks=block_layouts, seed=st.integers(0, 2**31 - 1), noise=st.floats(0.0, 1.0))
def test_property_metric_bounds(blocks, seed, noise):
    true, learned = _random_case(blocks, seed, noise)
    gram, cross = _grams(learned, true)
    for value in metrics.subspace_distances(gram, cross, blocks) + [metrics.subspace_distance(gram, cross)]:
        assert 0.0 <= value <= 1.0
    assert 0.0 <= metrics.angle_distance(gram, cross, blocks) <= 1.0
    assert 0.0 <= metrics.orthogonality_error(gram) <= 1.0


@settings(max_examples=25, deadline=None, derandomize=True)
@given(blocks=block_layouts, seed=st.integers(0, 2**31 - 1), noise=st.floats(0.0, 1.0))
def test_property_angle_distance_invariant_to_signs_and_scales(blocks, seed, noise):
    true, learned = _random_case(blocks, seed, noise)
    gram, cross = _grams(learned, true)
    rng = np.random.default_rng(seed + 3)
    L = learned.shape[1]
    s = torch.from_numpy(rng.choice([-1.0, 1.0], L) * rng.uniform(0.1, 5.0, L))
    signs_true = torch.from_numpy(rng.choice([-1.0, 1.0], L))
    base = metrics.angle_distance(gram, cross, blocks)
    assert metrics.angle_distance(*_grams(learned * s, true * signs_true), blocks) == pytest.approx(base, abs=1e-10)

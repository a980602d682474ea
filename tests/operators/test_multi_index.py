"""Multi-indices by cost (separable spectra) against brute-force enumeration."""

from __future__ import annotations

import itertools
import math

import pytest

from neuralsvd.operators import HarmonicOscillator
from neuralsvd.operators.multi_index import top_multi_indices


@pytest.mark.parametrize("decay", [(1.0,), (1.0, 1.0), (0.7, 1.3), (2.0, 0.5, 1.1), (1.0, math.inf)])
def test_matches_sorted_brute_force(decay):
    num = 12
    grid = itertools.product(*[range(num) if math.isfinite(r) else range(1) for r in decay])
    brute = sorted(grid, key=lambda k: (sum(ki * r for ki, r in zip(k, decay) if ki), k))[:num]
    got = top_multi_indices(decay, num)
    cost = [sum(ki * r for ki, r in zip(k, decay) if ki) for k in got]
    assert cost == pytest.approx([sum(ki * r for ki, r in zip(k, decay) if ki) for k in brute])
    assert len(set(got)) == num and cost == sorted(cost)


def test_frozen_axes_run_out():
    with pytest.raises(ValueError, match="only 1 modes have a non-zero eigenvalue, 2 were asked for"):
        top_multi_indices([math.inf, math.inf], 2)


def test_oscillator_quantum_numbers_are_the_shared_enumeration():
    op = HarmonicOscillator(2, omega=(1.0, 2.0))
    assert op.quantum_numbers(6) == [(0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (3, 0)]
    assert op.exact_eigenvalues(6).tolist() == [3.0, 5.0, 7.0, 7.0, 9.0, 9.0]  # Σ ω_i (2 n_i + 1)

"""Enumerating multi-indices by cost: the spectra of separable operators (products or sums over axes)."""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence

__all__ = ["top_multi_indices"]


def top_multi_indices(decay: Sequence[float], num: int) -> list[tuple[int, ...]]:
    """The ``num`` multi-indices ``k`` with the smallest ``Σ_i k_i decay_i`` (ties: lexicographic).

    For eigenvalues ``Π_i c_i r_i^{k_i}`` (products of geometric sequences, e.g. the RBF kernel under a
    Gaussian) pass ``decay_i = -log r_i``; for sums ``Σ_i a_i k_i + const`` (e.g. oscillator energies
    ``Σ_i ω_i (2 k_i + 1)``) pass ``decay_i = a_i``. ``decay_i = inf`` (``r_i = 0``) freezes axis ``i``
    at 0. Raises if fewer than ``num`` exist.
    """
    start = (0,) * len(decay)
    heap, seen, out = [(0.0, start)], {start}, []
    while len(out) < num:
        if not heap:
            raise ValueError(f"only {len(out)} modes have a non-zero eigenvalue, {num} were asked for")
        cost, idx = heapq.heappop(heap)
        out.append(idx)
        for i, rate in enumerate(decay):
            nxt = idx[:i] + (idx[i] + 1,) + idx[i + 1 :]
            if math.isfinite(rate) and nxt not in seen:
                seen.add(nxt)
                heapq.heappush(heap, (cost + rate, nxt))
    return out

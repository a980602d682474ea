"""SpIN's boundary factor on a box: a function that vanishes on the faces of ``[low, high]^d``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["box_bounds", "box_factor"]


def box_factor(t: Tensor, half_width: float, center: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """The per-axis boundary factor ``g(t) = (sqrt(2D² - s²) - D) / ((sqrt 2 - 1) D)``, ``s = t - c``
    (SpIN's, scaled to 1 at the centre so that products over many axes stay O(1)), zero at ``s = ±D``,
    with ``g'`` and ``g''``; each the shape of ``t``."""
    two_d2 = 2 * half_width**2
    s = t - center
    root = torch.sqrt((two_d2 - s * s).clamp_min(0))
    c = 1 / ((math.sqrt(2) - 1) * half_width)
    return c * (root - half_width), -c * s / root, -c * two_d2 / root**3


def box_bounds(box: float | Sequence[float] | None) -> tuple[float, float]:
    """``(low, high)`` of the box: ``[-D, D]`` for a half-width ``D``, or the pair itself."""
    if box is None:
        return 0.0, 0.0
    if isinstance(box, (int, float)) and not isinstance(box, bool):
        if not (box > 0 and math.isfinite(box)):
            raise ValueError(f"box must be a positive half-width, a pair (low, high) or None, got {box!r}")
        return -float(box), float(box)
    pair = tuple(box) if isinstance(box, (tuple, list)) else ()
    if not (len(pair) == 2 and all(isinstance(v, (int, float)) and math.isfinite(v) for v in pair) and pair[0] < pair[1]):
        raise ValueError(f"box must be a positive half-width, a pair (low, high) with low < high or None, got {box!r}")
    return float(pair[0]), float(pair[1])

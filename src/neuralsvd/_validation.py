"""Argument checks shared across the package (one wording for every error)."""

from __future__ import annotations

import numbers
from typing import Any

__all__ = ["check_positive_int"]


def check_positive_int(name: str, value: Any, minimum: int = 1, note: str = "") -> int:
    """Return ``value`` if it is an integer (``int`` or a numpy integer, not a bool) of at least ``minimum``,
    else raise ``ValueError``
    naming ``name``: "must be a positive integer" for ``minimum = 1``, "must be an integer >= minimum"
    otherwise; ``note`` is appended in parentheses (e.g. what 0 means)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        extra = f" ({note})" if note else ""
        raise ValueError(f"{name} must be {what}{extra}, got {value!r}")
    return value

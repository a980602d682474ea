"""Problems defined by data: kernel integral operators, graphs and paired samples (see presets.py)."""

from __future__ import annotations

__all__ = ["DATA_PROBLEMS"]

#: name -> presets.Problem, merged into presets.PROBLEMS
DATA_PROBLEMS: dict = {}

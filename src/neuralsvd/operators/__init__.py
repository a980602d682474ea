"""Operators ``T`` the library can decompose; conventions in :mod:`neuralsvd.operators.base`."""

from .base import CrossOperator, Operator
from .dense import DenseOperator
from .schrodinger import HarmonicOscillator, Hydrogen2D, Schrodinger

__all__ = ["Operator", "CrossOperator", "Schrodinger", "Hydrogen2D", "HarmonicOscillator", "DenseOperator"]

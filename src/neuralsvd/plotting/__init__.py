"""Figures: learned vs true eigenfunctions, training curves, comparisons, data embeddings."""

from .data import plot_node_functions, plot_two_view_embedding
from .spectra import (
    COMPARISON_METRICS,
    aligned_eigenfunctions,
    plot_comparison,
    plot_eigenfunctions,
    plot_training_curve,
)

__all__ = ["COMPARISON_METRICS", "aligned_eigenfunctions", "plot_comparison", "plot_eigenfunctions", "plot_node_functions", "plot_training_curve", "plot_two_view_embedding"]

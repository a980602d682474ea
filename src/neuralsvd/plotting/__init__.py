"""Figures: learned vs true eigenfunctions, training curves, comparisons, data embeddings."""

from .data import plot_node_functions, plot_two_view_embedding
from .dynamics import plot_koopman_functions, plot_timescales
from .spectra import (
    COMPARISON_METRICS,
    aligned_eigenfunctions,
    plot_comparison,
    plot_eigenfunctions,
    plot_training_curve,
)

__all__ = ["COMPARISON_METRICS", "aligned_eigenfunctions", "plot_comparison", "plot_eigenfunctions", "plot_koopman_functions", "plot_node_functions", "plot_timescales", "plot_training_curve", "plot_two_view_embedding"]

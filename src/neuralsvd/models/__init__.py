"""Models: any ``nn.Module`` mapping ``x (n, d) -> (n, L)`` works; these are the library's."""

from .learning_rate import default_lr
from .networks import ACTIVATIONS, MLP, Activation, ParallelMLP, Standardize, Tabular
from .separable import SeparableMLP

__all__ = ["ACTIVATIONS", "MLP", "Activation", "ParallelMLP", "SeparableMLP", "Standardize", "Tabular", "default_lr"]

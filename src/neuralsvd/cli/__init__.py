"""The ``neuralsvd`` command and its run folders (config.json, metrics.json, result.pt, figures)."""

from .main import main

__all__ = ["main"]

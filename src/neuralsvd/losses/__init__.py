"""Spectral objectives behind one interface (:class:`SpectralLoss`)."""

from .base import LinearReadout, LossOutput, SpectralLoss
from .nested_lora import NestedLoRA
from .neuralef import NeuralEF
from .spin import SpIN

__all__ = ["LinearReadout", "LossOutput", "NestedLoRA", "NeuralEF", "SpIN", "SpectralLoss"]

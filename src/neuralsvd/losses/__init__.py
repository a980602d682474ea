"""Spectral objectives behind one interface (:class:`SpectralLoss`)."""

from .base import LinearReadout, LossOutput, SpectralLoss
from .nested_lora import NestedLoRA
from .neuralef import NeuralEF
from .spin import SpIN

__all__ = ["SpectralLoss", "LossOutput", "LinearReadout", "NestedLoRA", "SpIN", "NeuralEF"]

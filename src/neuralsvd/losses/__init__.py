"""Spectral objectives behind one interface (:class:`SpectralLoss`)."""

from .base import LossOutput, SpectralLoss
from .nested_lora import NestedLoRA

__all__ = ["SpectralLoss", "LossOutput", "NestedLoRA"]

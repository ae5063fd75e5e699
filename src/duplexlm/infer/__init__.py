"""Inference apart from the model: pure sampling functions and the decoding loop."""

from .fill_mask import fill_mask
from .sampling import generate, sample_next

__all__ = ["fill_mask", "generate", "sample_next"]

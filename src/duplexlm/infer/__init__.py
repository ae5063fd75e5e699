"""Inference apart from the model: pure sampling functions and the decoding loop."""

from .sampling import generate, sample_next

__all__ = ["generate", "sample_next"]

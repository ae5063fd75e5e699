"""duplexlm: build Transformer language models from scratch and run the whole loop.

>>> import duplexlm
>>> model, tokenizer = duplexlm.load("path/to/model")  # doctest: +SKIP
"""

from __future__ import annotations

from .config import DecoderConfig, EncoderConfig, RNNConfig, Seq2SeqConfig
from .io import convert_from_hf, convert_to_hf, load, save_model
from .models import ModelOutput, build_model, count_parameters
from .version import __version__

__all__ = [
    "DecoderConfig",
    "EncoderConfig",
    "ModelOutput",
    "RNNConfig",
    "Seq2SeqConfig",
    "__version__",
    "build_model",
    "convert_from_hf",
    "convert_to_hf",
    "count_parameters",
    "load",
    "save_model",
]

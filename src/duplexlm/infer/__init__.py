"""Inference apart from the model: pure sampling functions, streaming text, the decoding engine,
chat prompts, embeddings."""

from .chat import ChatPrompt, chat_prompt
from .embed import embed
from .engine import Completion, Engine, RequestOutput, SamplingParams, generate
from .fill_mask import fill_mask
from .sampling import sample_next
from .stream import IncrementalDetokenizer, TextStream

__all__ = [
    "ChatPrompt",
    "Completion",
    "Engine",
    "IncrementalDetokenizer",
    "RequestOutput",
    "SamplingParams",
    "TextStream",
    "chat_prompt",
    "embed",
    "fill_mask",
    "generate",
    "sample_next",
]

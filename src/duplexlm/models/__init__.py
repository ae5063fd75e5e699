"""The model zoo: one module per family, built from a config by :func:`build_model`.

>>> from duplexlm.config import DecoderConfig
>>> model = build_model(DecoderConfig(vocab_size=64, d_model=32, n_layer=1, n_head=2))
>>> type(model).__name__
'Decoder'
"""

from __future__ import annotations

from torch import nn

from ..config import AnyConfig
from .outputs import ModelOutput


def model_class(family: str) -> type[nn.Module]:
    """The module class of a family; imported lazily so one family's import error stays its own."""
    if family == "decoder":
        from .decoder import Decoder
        return Decoder
    if family == "encoder":
        from .encoder import Encoder
        return Encoder
    if family == "seq2seq":
        from .seq2seq import Seq2Seq
        return Seq2Seq
    if family == "rnn":
        from .rnn import RNNModel
        return RNNModel
    raise ValueError(f"family: expected one of 'decoder', 'encoder', 'seq2seq', 'rnn', found {family!r}")


def build_model(config: AnyConfig) -> nn.Module:
    """A freshly initialised model for ``config``."""
    return model_class(config.family)(config)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Parameters counted once each (tied weights are one tensor)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


__all__ = ["ModelOutput", "build_model", "count_parameters", "model_class"]

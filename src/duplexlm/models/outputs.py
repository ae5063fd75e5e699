"""What every model's forward returns: one small dataclass, the same for every family."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor


@dataclass
class ModelOutput:
    """Outputs of a forward pass.

    ``last_hidden_state`` is always set (for seq2seq: the decoder's); ``logits`` when the model has
    a head (LM, MLM, classifier, tagger); the rest on request or where the family has them.
    """

    last_hidden_state: Tensor
    logits: Tensor | None = None
    pooled_output: Tensor | None = None  # encoder pooler / RNN pooled vector
    hidden_states: tuple[Tensor, ...] | None = None  # embeddings output, then each layer's
    attentions: tuple[Tensor, ...] | None = None  # (B, nh, Tq, Tk) per layer when asked for; RNN pooling: (B, T)
    encoder_last_hidden_state: Tensor | None = None  # seq2seq only
    kv_cache: Any = None  # the cache passed in, advanced past this call's tokens
    # what one objective's forward adds (ELECTRA pretraining: the generator's logits at the masked
    # positions, the corrupted input and which of its tokens were replaced)
    aux: dict[str, Tensor] | None = None

"""Sentence embeddings: the mean of a model's last hidden states over each text's real tokens, L2-normalised.

Any family gives one: an encoder (as sentence-transformers' all-MiniLM-L6-v2 does), a decoder, a T5's
encoder, an RNN. Texts are truncated to the model's context and run in right-padded batches; padding
never reaches the mean, so a text embeds the same alone and in a batch.

>>> from duplexlm.config import EncoderConfig
>>> from duplexlm.models import build_model
>>> from duplexlm.tokenizer import train_tokenizer
>>> tok = train_tokenizer(["很好的书", "很差的书"] * 20, "wordpiece", vocab_size=200)
>>> model = build_model(EncoderConfig(vocab_size=tok.vocab_size, max_seq_len=32, d_model=16, n_layer=1, n_head=2))
>>> e = embed(model, tok, ["很好", "很差的书"])
>>> e.shape, [round(float(n), 4) for n in e.norm(dim=-1)]
(torch.Size([2, 16]), [1.0, 1.0])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..models.encoder import mean_pool


@torch.no_grad()
def embed(model: nn.Module, tokenizer: Any, texts: Sequence[str], *, batch_size: int = 32,
          max_length: int | None = None, normalize: bool = True) -> Tensor:
    """Mean-pooled (and by default L2-normalised) last hidden states of ``texts`` → (N, C) in fp32."""
    from ..data.examples import encode_texts

    if not texts:
        raise ConfigError("texts: expected at least one text")
    model.eval()
    device = next(model.parameters()).device
    max_length = max_length or getattr(model.config, "max_seq_len", None) or 512
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encodings = encode_texts(tokenizer, list(texts), max_length)
    out = []
    for start in range(0, len(encodings), batch_size):
        batch = encodings[start:start + batch_size]
        width = max(len(e.ids) for e in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, e in enumerate(batch):
            ids[i, :len(e.ids)] = torch.tensor(e.ids, dtype=torch.long)
            mask[i, :len(e.ids)] = 1
        ids, mask = ids.to(device), mask.to(device)
        if model.config.family == "seq2seq":
            hidden = model.encode(ids, mask).last_hidden_state
        else:
            hidden = model(ids, attention_mask=mask).last_hidden_state  # (B, T, C)
        pooled = mean_pool(hidden.float(), mask)
        out.append(F.normalize(pooled, dim=-1) if normalize else pooled)
    return torch.cat(out).cpu()


__all__ = ["embed"]

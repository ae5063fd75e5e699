"""Sampling: pure functions of logits and a ``torch.Generator``, and a decoding loop over the KV cache.

>>> import torch
>>> logits = torch.tensor([[0.0, 10.0, 0.0]])
>>> sample_next(logits, temperature=0.0).tolist()
[1]
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def sample_next(logits: Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    """Next token ids (B,) from logits (B, V): greedy at temperature 0, else softmax(logits / T)
    restricted to the top-k tokens and to the smallest set whose probability reaches top-p."""
    if temperature < 0:
        raise ValueError(f"temperature: expected >= 0, found {temperature}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep tokens until the mass before them reaches p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model: nn.Module, input_ids: Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, eos_token_id: int | None = None,
             generator: torch.Generator | None = None) -> Tensor:
    """Continue each prompt row of ``input_ids`` (B, T) by up to ``max_new_tokens`` tokens with the
    KV cache; rows that produced ``eos_token_id`` keep emitting it. Returns (B, T + new)."""
    was_training = model.training
    model.eval()
    try:
        return _generate(model, input_ids, max_new_tokens, temperature, top_k, top_p, eos_token_id, generator)
    finally:
        model.train(was_training)


def _generate(model: nn.Module, input_ids: Tensor, max_new_tokens: int, temperature: float, top_k: int | None,
              top_p: float | None, eos_token_id: int | None, generator: torch.Generator | None) -> Tensor:
    B, T = input_ids.shape
    limit = getattr(model.config, "max_seq_len", T + max_new_tokens)
    max_new_tokens = min(max_new_tokens, limit - T)
    if max_new_tokens <= 0:
        return input_ids
    cache = model.new_kv_cache(B, T + max_new_tokens)
    logits = model(input_ids, kv_cache=cache).logits[:, -1]
    out = [input_ids]
    done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    for i in range(max_new_tokens):
        nxt = sample_next(logits, temperature, top_k, top_p, generator).to(input_ids.device)
        if eos_token_id is not None:
            nxt = torch.where(done, torch.full_like(nxt, eos_token_id), nxt)
            done |= nxt == eos_token_id
        out.append(nxt[:, None])
        if (eos_token_id is not None and bool(done.all())) or i == max_new_tokens - 1:
            break
        logits = model(nxt[:, None], kv_cache=cache).logits[:, -1]
    return torch.cat(out, dim=1)

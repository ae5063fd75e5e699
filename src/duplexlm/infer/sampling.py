"""Sampling: pure functions of logits (each row with its own parameters) and of a random draw.

The decoding engine (:mod:`duplexlm.infer.engine`) calls them on a whole batch at once, each row
with its own temperature, top-k, top-p, min-p and repetition penalty, and its own uniform draw from
its request's seeded generator, so that a request samples the same tokens whatever else is in the
batch. Filters follow transformers' order: repetition penalty, temperature, top-k, top-p, min-p.

>>> import torch
>>> logits = torch.tensor([[0.0, 10.0, 0.0]])
>>> sample_next(logits, temperature=0.0).tolist()
[1]
>>> filter_top_k(torch.tensor([[1.0, 3.0, 2.0]]), 2).tolist()
[[-inf, 3.0, 2.0]]
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError

NEG_INF = float("-inf")


def _per_row(value: float | int | Tensor, logits: Tensor) -> Tensor:
    """A scalar or a (B,) tensor of per-row parameters → (B, 1), on the logits' device."""
    if isinstance(value, Tensor):
        return value.to(logits.device).reshape(-1, 1)
    return torch.full((logits.shape[0], 1), value, device=logits.device)


def apply_repetition_penalty(logits: Tensor, seen: Tensor, penalty: float | Tensor) -> Tensor:
    """CTRL's repetition penalty as transformers applies it: the logit of every token already in the
    sequence (``seen`` (B, V) bool) is divided by ``penalty`` when positive, multiplied when negative.

    >>> apply_repetition_penalty(torch.tensor([[2.0, -2.0, 2.0]]), torch.tensor([[True, True, False]]), 2.0).tolist()
    [[1.0, -4.0, 2.0]]
    """
    p = _per_row(penalty, logits).to(logits.dtype)
    penalised = torch.where(logits < 0, logits * p, logits / p)
    return torch.where(seen, penalised, logits)


def filter_top_k(logits: Tensor, k: int | Tensor) -> Tensor:
    """Keep each row's ``k`` largest logits (ties at the k-th all kept), the rest to -inf; k <= 0
    (or >= V) keeps everything. ``k``: one int, or (B,) per row."""
    V = logits.shape[-1]
    if not isinstance(k, Tensor):
        if k <= 0 or k >= V:
            return logits
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    else:
        k = torch.where(k > 0, k, V).clamp(max=V).to(logits.device).reshape(-1, 1)
        kth = logits.sort(dim=-1, descending=True).values.gather(-1, k - 1)
    return logits.masked_fill(logits < kth, NEG_INF)


def filter_top_p(logits: Tensor, p: float | Tensor) -> Tensor:
    """Nucleus filtering: keep each row's most probable tokens until the probability of the tokens
    before the next one reaches ``p`` (so the smallest set whose mass reaches p, at least one
    token); p >= 1 keeps everything.

    >>> filter_top_p(torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log(), 0.7).isinf().tolist()
    [[False, False, True, True]]
    """
    p = _per_row(p, logits)
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    before = probs.cumsum(-1) - probs  # mass of the more probable tokens
    drop = (before >= p) & (p < 1)  # p = 1: keep all, even where rounding pushes the sum past 1
    sorted_logits = sorted_logits.masked_fill(drop, NEG_INF)
    return torch.full_like(logits, NEG_INF).scatter(-1, order, sorted_logits)


def filter_min_p(logits: Tensor, min_p: float | Tensor) -> Tensor:
    """Min-p filtering: drop the tokens whose probability is below ``min_p`` times the row's most
    probable one (the best token always stays); min_p = 0 keeps everything.

    >>> filter_min_p(torch.tensor([[0.6, 0.3, 0.1]]).log(), 0.25).isinf().tolist()
    [[False, False, True]]
    """
    probs = logits.softmax(-1)
    threshold = probs.amax(-1, keepdim=True) * _per_row(min_p, logits)
    return logits.masked_fill(probs < threshold, NEG_INF)


def sample_from_probs(probs: Tensor, u: Tensor) -> Tensor:
    """Inverse-CDF sampling: for each row the token where its cumulative probability passes ``u`` (B,)
    in [0, 1) (scaled by the row's total, so unnormalised rows work). One uniform number per row and
    step: a row's draw depends on its own generator only, never on the batch it shares.

    >>> sample_from_probs(torch.tensor([[0.2, 0.0, 0.8]]), torch.tensor([0.5])).tolist()
    [2]
    """
    cdf = probs.float().cumsum(-1)
    x = u.to(cdf.device, cdf.dtype)[:, None] * cdf[:, -1:]
    return torch.searchsorted(cdf, x, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


def process_logits(logits: Tensor, temperature: float | Tensor = 1.0, top_k: int | Tensor = 0,
                   top_p: float | Tensor = 1.0, min_p: float | Tensor = 0.0) -> Tensor:
    """Temperature, then top-k, top-p and min-p, as transformers orders them → filtered logits in
    fp32 (rows with temperature 0 are not meant to come here: they take the argmax)."""
    logits = logits.float() / _per_row(temperature, logits)
    if isinstance(top_k, Tensor) or top_k > 0:
        logits = filter_top_k(logits, top_k)
    if isinstance(top_p, Tensor) or top_p < 1:
        logits = filter_top_p(logits, top_p)
    if isinstance(min_p, Tensor) or min_p > 0:
        logits = filter_min_p(logits, min_p)
    return logits


def sample_next(logits: Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                generator: torch.Generator | None = None, min_p: float | None = None) -> Tensor:
    """Next token ids (B,) from logits (B, V): greedy at temperature 0, else softmax(logits / T)
    restricted to the top-k tokens, to the smallest set whose probability reaches top-p, and to
    those with at least min-p times the best one's probability."""
    if temperature < 0:
        raise ConfigError(f"temperature: expected a number >= 0, found {temperature}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = process_logits(logits, temperature, top_k or 0, 1.0 if top_p is None else top_p, min_p or 0.0)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)



__all__ = [
    "apply_repetition_penalty",
    "filter_min_p",
    "filter_top_k",
    "filter_top_p",
    "process_logits",
    "sample_from_probs",
    "sample_next",
]

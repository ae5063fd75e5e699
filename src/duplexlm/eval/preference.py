"""Scoring a decoder on preference pairs: which answer of each pair it finds more likely.

``ranking_accuracy``: the share of pairs with ``log π(chosen | prompt) > log π(rejected | prompt)``
(a tie counts half), the sums over each answer's tokens, the prompt rendered with the tokenizer's chat
template as ``task=dpo`` renders it. With a ``reference`` model also ``preference_accuracy``, the
share whose chosen answer's log-ratio to the reference grew more than the rejected one's (DPO's
implicit reward, TRL's ``rewards/accuracies``). Both per task (``{task}_ranking_accuracy``) when the
pairs name their tasks, and over all pairs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..data.examples import collate_rows, encode_chat
from ..objectives.generative import sft_forward
from ..objectives.preference import sequence_logps


@torch.no_grad()
def pair_logps(model: nn.Module, tokenizer: Any, pairs: Sequence[Any], *, max_length: int | None = None,
               batch_size: int = 16) -> list[tuple[float, float] | None]:
    """``(log π(chosen), log π(rejected))`` per pair (:class:`~duplexlm.data.preference.PreferenceExample`),
    each answer with its prompt cut at ``max_length`` tokens (default: the model's context; give the
    run's ``data.seq_len`` to score what it trained on); ``None`` for a pair with an answer cut away
    entirely (as ``task=dpo`` drops such pairs)."""
    limit = max_length or getattr(model.config, "max_seq_len", 1024)
    encode = lambda ex, answer: encode_chat(tokenizer, ex.conversation(answer), limit, ex.source, last_only=True)[:2]  # noqa: E731
    chosen, rejected = [encode(e, e.chosen) for e in pairs], [encode(e, e.rejected) for e in pairs]
    kept = [i for i in range(len(pairs)) if any(t != -100 for t in chosen[i][1]) and any(t != -100 for t in rejected[i][1])]
    device = next(model.parameters()).device
    training = model.training
    model.eval()
    out: list[tuple[float, float] | None] = [None] * len(pairs)
    try:
        for start in range(0, len(kept), batch_size):
            rows = kept[start:start + batch_size]
            batch = {k: v.to(device) for k, v in collate_rows([chosen[i] for i in rows] + [rejected[i] for i in rows],
                                                                tokenizer.pad_token_id or 0).items()}
            logps = sequence_logps(sft_forward(model, batch).logits, batch)[0].tolist()
            for j, i in enumerate(rows):
                out[i] = (logps[j], logps[len(rows) + j])
    finally:
        model.train(training)
    return out


def score_preferences(model: nn.Module, tokenizer: Any, pairs: Sequence[Any], reference: nn.Module | None = None,
                      **kwargs: Any) -> dict[str, float]:
    """Ranking accuracy (and with ``reference`` the preference accuracy) over ``pairs``, per task and
    in all, and ``pairs``, the number scored (a pair with an answer cut away entirely is not);
    ``kwargs`` go to :func:`pair_logps`."""
    ours = pair_logps(model, tokenizer, pairs, **kwargs)
    ref = pair_logps(reference, tokenizer, pairs, **kwargs) if reference is not None else None
    win = lambda a, b: 1.0 if a > b else 0.5 if a == b else 0.0  # noqa: E731
    groups: dict[str | None, list[int]] = defaultdict(list)
    for i, ex in enumerate(pairs):
        if ours[i] is not None:
            groups[getattr(ex, "task", None)].append(i)
    scores: dict[str, float] = {}
    scored = [i for i in range(len(pairs)) if ours[i] is not None]
    for task, idx in [*sorted((k, v) for k, v in groups.items() if k is not None), (None, scored)]:
        prefix = f"{task}_" if task is not None and len(groups) > 1 else ""
        if (task is not None and not prefix) or not idx:
            continue
        scores[f"{prefix}ranking_accuracy"] = sum(win(*ours[i]) for i in idx) / len(idx)
        if ref is not None:
            scores[f"{prefix}preference_accuracy"] = sum(
                win(ours[i][0] - ref[i][0], ours[i][1] - ref[i][1]) for i in idx) / len(idx)
    scores["pairs"] = float(len(scored))
    return scores


__all__ = ["pair_logps", "score_preferences"]

"""Preference tuning — ``dpo`` for decoders — as one more entry of the objective registry.

A batch holds each pair twice: the prompt with its chosen answer in the first half of the rows, the
same prompt with the rejected answer in the second half, rendered with the chat template and
labelled as ``sft`` labels (shifted; the answer's tokens and its end-of-turn token only). A
sequence's log-probability ``log π(y|x)`` is the sum over its labelled tokens. With the reference
model's log-probabilities of the same rows (``ref_logps``, computed by the loop with the starting
model frozen, or the LoRA adapters switched off), the implicit rewards are
``r = β (log π(y|x) − log π_ref(y|x))`` and the losses (``objective_args.dpo_loss``):

- ``sigmoid`` (DPO, Rafailov et al. 2023): ``−log σ(r_c − r_r)``, with ``label_smoothing`` ε the
  conservative form ``−(1−ε) log σ(h) − ε log σ(−h)``;
- ``ipo`` (Azar et al. 2023): ``(h − 1/(2β))²``, ``h`` the difference of the log-ratios averaged per
  answer token (as TRL);
- ``simpo`` (Meng et al. 2024), reference-free: ``−log σ(β (avg log π(y_c) − avg log π(y_r)) − γ)``
  with ``γ = objective_args.simpo_gamma``, log-probabilities averaged over each answer's tokens.

``objective_args.sft_weight`` α adds α times the chosen answers' negative log-likelihood (each pair's
mean over its answer's tokens, then the mean over pairs), RPO's term (Pang et al. 2024; TRL's
``loss_type=["sigmoid", "sft"]``, whose term is a mean over the batch's tokens instead): it keeps the
chosen answers likely, where DPO alone lowers the likelihood of both answers of a pair and the model
drifts from what instruction tuning taught it.

Evaluation reports the loss, the preference accuracy (the share of pairs whose chosen answer gets the
higher reward: its log-ratio to the reference grew more than the rejected one's, TRL's
``rewards/accuracies``), the ranking accuracy (the share of pairs whose chosen answer the model itself
finds more likely, ``log π(y_c|x) > log π(y_r|x)``: what it prefers, whatever the reference did), the
mean reward margin and the mean chosen and rejected rewards.

>>> import torch
>>> c, r = torch.tensor([-1.0]), torch.tensor([-3.0])
>>> round(pair_losses(c, r, torch.tensor([-2.0]), torch.tensor([-2.0]), None, None, "sigmoid", 0.1).item(), 4)
0.5981
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from .base import IGNORE_INDEX, LossOptions, ObjectiveSpec
from .generative import sft_forward, token_logps

DPO_LOSSES = ("sigmoid", "ipo", "simpo")


def sequence_logps(logits: Tensor, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Per row: the sum of the log-probabilities of its labelled tokens, and their number. ``logits``:
    (N, V) at the labelled positions, row-major (``sft_forward``), or (B, T, V)."""
    scored = batch["labels"] != IGNORE_INDEX
    token = token_logps(logits, batch)
    sums = token.new_zeros(scored.shape[0]).index_add(0, scored.nonzero()[:, 0], token)
    return sums, scored.sum(1)


def pair_losses(chosen: Tensor, rejected: Tensor, ref_chosen: Tensor | None, ref_rejected: Tensor | None,
                chosen_len: Tensor | None, rejected_len: Tensor | None, kind: str, beta: float,
                label_smoothing: float = 0.0, simpo_gamma: float = 0.5) -> Tensor:
    """The per-pair loss of ``kind`` from summed log-probabilities (policy, and reference unless
    ``simpo``); the lengths (answer tokens) average the log-probabilities for ``ipo`` and ``simpo``."""
    if kind == "simpo":
        h = beta * (chosen / chosen_len.clamp(min=1) - rejected / rejected_len.clamp(min=1)) - simpo_gamma
        return -F.logsigmoid(h)
    if ref_chosen is None or ref_rejected is None:
        raise ValueError(f"dpo_loss={kind}: the reference model's log-probabilities are missing from the batch")
    c, r = chosen - ref_chosen, rejected - ref_rejected
    if kind == "ipo":
        h = c / chosen_len.clamp(min=1) - r / rejected_len.clamp(min=1)
        return (h - 1 / (2 * beta)) ** 2
    if kind != "sigmoid":
        raise ValueError(f"dpo_loss: expected one of {', '.join(DPO_LOSSES)}, found {kind!r}")
    h = beta * (c - r)
    return -(1 - label_smoothing) * F.logsigmoid(h) - label_smoothing * F.logsigmoid(-h)


def _halves(t: Tensor) -> tuple[Tensor, Tensor]:
    n = t.shape[0] // 2
    return t[:n], t[n:]


def _pair_terms(logits: Tensor, batch: Mapping[str, Tensor]) -> dict[str, Tensor | None]:
    logps, lengths = sequence_logps(logits, batch)
    (c, r), (cl, rl) = _halves(logps), _halves(lengths)
    ref = batch.get("ref_logps")
    rc, rr = _halves(ref.float()) if ref is not None else (None, None)
    return {"chosen": c, "rejected": r, "ref_chosen": rc, "ref_rejected": rr, "chosen_len": cl, "rejected_len": rl}


def dpo_loss(model: nn.Module, batch: Mapping[str, Tensor], options: LossOptions) -> tuple[Tensor, int]:
    """The mean pair loss of ``options.dpo_loss`` over the batch's pairs; the count is the pairs."""
    t = _pair_terms(sft_forward(model, batch).logits, batch)
    losses = pair_losses(t["chosen"], t["rejected"], t["ref_chosen"], t["ref_rejected"], t["chosen_len"],
                         t["rejected_len"], options.dpo_loss, options.beta, options.label_smoothing,
                         options.simpo_gamma)
    if options.sft_weight > 0:  # RPO: the chosen answer's mean token NLL, per pair
        losses = losses - options.sft_weight * t["chosen"] / t["chosen_len"].clamp(min=1)
    return losses.mean(), int(losses.shape[0])


def pair_count(batch: Mapping[str, Tensor]) -> int:
    return int(batch["input_ids"].shape[0] // 2)


def dpo_predict(logits: Tensor, batch: Mapping[str, Tensor], model: Any = None
                ) -> tuple[list[tuple[float, float, float, float]], list[int]]:
    """Per pair: the implicit rewards ``(β-free) log π − log π_ref`` of the chosen and the rejected answer
    (without a reference, the answers' mean log-probabilities per token), and the two answers' own
    log-probabilities ``log π(y|x)``."""
    t = _pair_terms(logits, batch)
    if t["ref_chosen"] is not None:
        c, r = t["chosen"] - t["ref_chosen"], t["rejected"] - t["ref_rejected"]
    else:
        c, r = t["chosen"] / t["chosen_len"].clamp(min=1), t["rejected"] / t["rejected_len"].clamp(min=1)
    pairs = list(zip(c.tolist(), r.tolist(), t["chosen"].tolist(), t["rejected"].tolist()))
    return pairs, [1] * len(pairs)


def dpo_metrics(preds: list[tuple[float, ...]], refs: list[int], label_names: Any = None) -> dict[str, float]:
    """``preference_accuracy`` (chosen rewarded above rejected; a tie counts half), ``ranking_accuracy``
    (the chosen answer more likely than the rejected one; a tie counts half), ``reward_margin`` and the
    mean ``chosen_reward`` and ``rejected_reward`` (log-ratios, not multiplied by β)."""
    n = max(len(preds), 1)
    win = lambda a, b: 1.0 if a > b else 0.5 if a == b else 0.0  # noqa: E731
    return {"preference_accuracy": sum(win(p[0], p[1]) for p in preds) / n,
            "ranking_accuracy": sum(win(p[2], p[3]) for p in preds) / n,
            "reward_margin": sum(p[0] - p[1] for p in preds) / n,
            "chosen_reward": sum(p[0] for p in preds) / n, "rejected_reward": sum(p[1] for p in preds) / n}


DPO = ObjectiveSpec(
    name="dpo", families=("decoder",), head="lm", data="examples", loss=dpo_loss,
    default_metric="preference_accuracy", predict=dpo_predict, metrics=dpo_metrics, count=pair_count,
    forward=sft_forward)

__all__ = ["DPO", "DPO_LOSSES", "dpo_loss", "dpo_metrics", "dpo_predict", "pair_count", "pair_losses",
           "sequence_logps"]

"""Generative fine-tuning objectives — ``sft`` for decoders, ``seq2seq`` for encoder-decoders — as
entries of the one objective registry, beside pretraining and the understanding tasks.

``sft`` (instruction tuning): a conversation is rendered with the tokenizer's chat template and
tokenized once; the loss is on the assistant's tokens only — each answer's content and the
end-of-turn token that closes it (so the model learns to stop), never the system or user turns, nor
the template's own text. Labels are stored already shifted (``labels[t]`` is the token that
``logits[t]`` must predict, -100 elsewhere), so the loss is a plain token cross-entropy and the count
of a batch is its labelled positions. With ``data.packing`` several short conversations share one row:
each token attends only to the earlier tokens of its own conversation and positions restart at each,
so packing changes no conversation's loss, only how many fit a step.

``seq2seq``: source → target pairs, teacher-forced (the decoder reads the target shifted right behind
its start token), optionally with label smoothing. Sources and targets end with the end-of-sequence
token, as T5's do.

An example longer than ``data.seq_len`` is cut (``data.overflow=truncate``, counted in the log) or is
an error naming its file and line (``overflow=error``); a conversation cut before any of its answers
is dropped and counted.

The conversations and pairs are encoded by :mod:`duplexlm.data.examples`; the samplers that batch
them are in :mod:`duplexlm.train.samplers`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import IGNORE_INDEX, LossOptions, ObjectiveSpec

# ----------------------------------------------------------------------------------------------------
# Forward, loss, token accuracy


def packed_mask(segment_ids: Tensor) -> Tensor:
    """(B, T) segment ids → the boolean (B, 1, T, T) mask of packed rows: token ``i`` sees token
    ``j <= i`` of the same segment. A padding position (segment 0) sees only itself, so no row of the
    attention is empty (an empty row would be NaN, and NaN times a zero gradient is still NaN).

    >>> packed_mask(torch.tensor([[1, 1, 2, 0]]))[0, 0].int().tolist()
    [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    """
    T = segment_ids.shape[1]
    same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, :, None] > 0)
    causal = torch.ones(T, T, dtype=torch.bool, device=segment_ids.device).tril()
    eye = torch.eye(T, dtype=torch.bool, device=segment_ids.device)
    return ((same & causal) | eye)[:, None]


def sft_forward(model: nn.Module, batch: Mapping[str, Tensor]) -> Any:
    """The decoder on a batch, with the vocabulary logits at the labelled positions only: (N, V) for
    the N answer tokens, row-major (the same loss; the head's cost on the prompts saved)."""
    scored = batch["labels"] != IGNORE_INDEX
    if "segment_ids" in batch:
        return model(batch["input_ids"], attention_mask=packed_mask(batch["segment_ids"]),
                     position_ids=batch["position_ids"], logits_at=scored)
    return model(batch["input_ids"], attention_mask=batch.get("attention_mask"), logits_at=scored)


def seq2seq_forward(model: nn.Module, batch: Mapping[str, Tensor]) -> Any:
    """The encoder-decoder on a batch, teacher-forced, with the vocabulary logits at the targets'
    tokens only: (N, V), row-major (the padding's logits are never scored)."""
    return model(batch["input_ids"], attention_mask=batch.get("attention_mask"),
                 decoder_input_ids=batch["decoder_input_ids"],
                 decoder_attention_mask=batch.get("decoder_attention_mask"),
                 logits_at=batch["labels"] != IGNORE_INDEX)


def token_logps(logits: Tensor, batch: Mapping[str, Tensor], temperature: float = 1.0) -> Tensor:
    """The log-probability of each labelled token, row-major: (N,), from (N, V) logits at the labelled
    positions (``sft_forward``) or (B, T, V); ``temperature``: of the distribution the tokens were
    sampled from (the logits divided by it, as grpo samples)."""
    labels = batch["labels"]
    scored = labels != IGNORE_INDEX
    if logits.dim() == 3:
        logits = logits[scored]
    logits = logits.float() if temperature == 1.0 else logits.float() / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, labels[scored][:, None])[:, 0]


def example_index(batch: Mapping[str, Tensor]) -> Tensor:
    """The example each labelled position belongs to, row-major over the labelled positions: its row,
    or in a packed row (``segment_ids``) its row and conversation."""
    scored = batch["labels"] != IGNORE_INDEX
    rows = scored.nonzero()[:, 0]
    if "segment_ids" in batch:
        segments = batch["segment_ids"]
        rows = rows * (int(segments.max()) + 1) + segments[scored]
    return rows


def example_count(batch: Mapping[str, Tensor]) -> int:
    """How many examples of a batch have a labelled token: what ``reduction="example"`` averages over."""
    return int(example_index(batch).unique().numel())


def _token_loss(logits: Tensor | None, labels: Tensor, options: LossOptions,
                batch: Mapping[str, Tensor]) -> tuple[Tensor, int]:
    """Cross-entropy of ``logits`` (..., V) against ``labels`` (...), the batch's labelled positions
    or all of them: a mean over target tokens, or (``options.reduction == "example"``) over examples."""
    if logits is None or logits.shape[:-1] != labels.shape:
        found = None if logits is None else tuple(logits.shape)
        raise ValueError(f"logits: expected shape {tuple(labels.shape)} + (V,), found {found} (does the model have "
                         "an LM head?)")
    if options.reduction == "example":
        scored = labels != IGNORE_INDEX
        per_token = F.cross_entropy(logits.float()[scored], labels[scored], reduction="none",
                                    label_smoothing=options.label_smoothing)
        _, which, sizes = example_index(batch).unique(return_inverse=True, return_counts=True)
        sums = per_token.new_zeros(len(sizes)).index_add(0, which, per_token)
        return (sums / sizes).sum() / max(len(sizes), 1), len(sizes)
    total = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                            ignore_index=IGNORE_INDEX, reduction="sum", label_smoothing=options.label_smoothing)
    count = (labels != IGNORE_INDEX).sum()
    return total / count.clamp(min=1), int(count)


def sft_loss(model: nn.Module, batch: Mapping[str, Tensor], options: LossOptions) -> tuple[Tensor, int]:
    """Cross-entropy over the answers' tokens (labels already shifted; logits at those only)."""
    labels = batch["labels"]
    return _token_loss(sft_forward(model, batch).logits, labels[labels != IGNORE_INDEX], options, batch)


def seq2seq_loss(model: nn.Module, batch: Mapping[str, Tensor], options: LossOptions) -> tuple[Tensor, int]:
    """Cross-entropy over the target tokens, teacher-forced (logits at those only)."""
    labels = batch["labels"]
    return _token_loss(seq2seq_forward(model, batch).logits, labels[labels != IGNORE_INDEX], options, batch)


def token_predict(logits: Tensor, batch: Mapping[str, Tensor], model: Any = None) -> tuple[list[int], list[int]]:
    """Per example: the number of its labelled tokens predicted right (argmax), and of its labelled
    tokens. ``logits``: (B, T, V), or (N, V) at the labelled positions only (``sft``)."""
    labels = batch["labels"]
    scored = labels != IGNORE_INDEX
    if logits.dim() == 2:  # flattened over the scored positions, row-major
        hit = (logits.argmax(-1) == labels[scored]).long()
        right = torch.zeros(labels.shape[0], dtype=torch.long, device=labels.device)
        right.index_add_(0, scored.nonzero()[:, 0], hit)
        return right.tolist(), scored.sum(1).tolist()
    right = (logits.argmax(-1) == labels) & scored
    return right.sum(1).tolist(), scored.sum(1).tolist()


def token_metrics(right: list[int], total: list[int], label_names: Any = None) -> dict[str, float]:
    return {"token_accuracy": sum(right) / max(sum(total), 1)}


SFT = ObjectiveSpec(
    name="sft", families=("decoder",), head="lm", data="examples", loss=sft_loss, default_metric="loss",
    predict=token_predict, metrics=token_metrics, forward=sft_forward)
SEQ2SEQ = ObjectiveSpec(
    name="seq2seq", families=("seq2seq",), head="lm", data="examples", loss=seq2seq_loss, default_metric="loss",
    predict=token_predict, metrics=token_metrics, forward=seq2seq_forward)



__all__ = ["SEQ2SEQ", "SFT", "example_count", "example_index", "packed_mask", "seq2seq_forward", "seq2seq_loss",
           "sft_forward", "sft_loss", "token_logps", "token_metrics", "token_predict"]

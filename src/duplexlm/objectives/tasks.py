"""Fine-tuning objectives for understanding tasks — ``classify``, ``regress``, ``tag`` — as entries of
the one objective registry (:func:`duplexlm.objectives.get_objective`), beside the pretraining
ones. Each says which families it trains, which head it needs, its loss and how its predictions are
scored; the batches are labelled examples (:class:`duplexlm.train.samplers.ExampleSampler`).

============  ========================================  ===============================  ============
objective     families                                  loss                             metric
============  ========================================  ===============================  ============
``classify``  encoder ([CLS]), decoder (last token),    cross-entropy (class weights,    accuracy,
              rnn (attention pooling)                   label smoothing)                 macro F1
``regress``   encoder, decoder, rnn                     mean squared error               MSE, r, ρ
``tag``       encoder, rnn                              cross-entropy on the first       entity F1
                                                        sub-token of each word, or a
                                                        CRF's NLL over those positions
============  ========================================  ===============================  ============

>>> import torch
>>> from duplexlm.config import EncoderConfig
>>> from duplexlm.models import build_model
>>> model = build_model(EncoderConfig(vocab_size=50, max_seq_len=16, d_model=16, n_layer=1, n_head=2,
...                                   head="classify", num_labels=3))
>>> batch = {"input_ids": torch.randint(5, 50, (4, 7)), "attention_mask": torch.ones(4, 7, dtype=torch.long),
...          "labels": torch.tensor([0, 2, 1, 2])}
>>> loss, n = classify_loss(model, batch, LossOptions())
>>> n
4
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import IGNORE_INDEX, LossOptions, ObjectiveSpec


def _logits(model: nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
    out = model(batch["input_ids"], attention_mask=batch.get("attention_mask"))
    if out.logits is None:
        raise ValueError("logits: the model has no task head (build it with head='classify' or 'tag')")
    return out.logits.float()  # fp32 for the loss, as the LM losses do


# ----------------------------------------------------------------------------------------------------
# Losses: (mean over what is scored, how many were scored)


def classify_loss(model: nn.Module, batch: Mapping[str, Tensor], options: LossOptions) -> tuple[Tensor, int]:
    """Cross-entropy of (B, K) logits against (B,) classes; ``class_weights`` (K,) rescale each
    class's examples (the mean is then over the weights, as ``F.cross_entropy`` does)."""
    logits = _logits(model, batch)
    weights = None if options.class_weights is None else options.class_weights.to(logits.device)
    loss = F.cross_entropy(logits, batch["labels"], weight=weights, label_smoothing=options.label_smoothing)
    return loss, int(batch["labels"].shape[0])


def regress_loss(model: nn.Module, batch: Mapping[str, Tensor], options: LossOptions) -> tuple[Tensor, int]:
    """Mean squared error of (B, n_targets) predictions against (B, n_targets) targets."""
    pred = _logits(model, batch)
    target = batch["labels"].to(pred.dtype)
    if pred.shape != target.shape:
        raise ValueError(f"regress: the head gives {tuple(pred.shape)}, the targets are {tuple(target.shape)}; "
                         "build the model with num_labels = the number of targets")
    return F.mse_loss(pred, target), int(target.shape[0])


def tag_loss(model: nn.Module, batch: Mapping[str, Tensor], options: LossOptions) -> tuple[Tensor, int]:
    """Token cross-entropy of (B, T, K) logits against (B, T) tags, -100 where nothing is scored (padding,
    special tokens, sub-tokens after a word's first)."""
    logits = _logits(model, batch)
    labels = batch["labels"]
    crf = getattr(_unwrapped(model), "crf", None)
    if crf is not None:
        # the chain links consecutive scored positions (a word's first sub-token), skipping the rest
        from ..models.crf import compact

        emissions, tags, mask = compact(logits, labels, IGNORE_INDEX)
        count = int(mask.sum())
        return crf(emissions, tags, mask, reduction="token_mean"), count
    total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX,
                            reduction="sum", label_smoothing=options.label_smoothing)
    count = (labels != IGNORE_INDEX).sum()
    return total / count.clamp(min=1), int(count)


# ----------------------------------------------------------------------------------------------------
# Predictions and metrics


def classify_predict(logits: Tensor, batch: Mapping[str, Tensor], model: Any = None) -> tuple[list[int], list[int]]:
    return logits.argmax(-1).tolist(), batch["labels"].tolist()


def regress_predict(logits: Tensor, batch: Mapping[str, Tensor],
                    model: Any = None) -> tuple[list[list[float]], list[list[float]]]:
    return logits.float().tolist(), batch["labels"].float().tolist()


def _unwrapped(model: Any) -> Any:
    # DDP / torch.compile wrappers keep the model as .module / ._orig_mod; the loss replay has neither
    for attr in ("module", "_orig_mod"):
        model = getattr(model, attr, model)
    return model


def tag_predict(logits: Tensor, batch: Mapping[str, Tensor], model: Any = None) -> tuple[list[list[int]], list[list[int]]]:
    """Per example, the predicted and the true tag of each scored position (a word's first sub-token);
    with a CRF the tags are its Viterbi path over those positions."""
    labels = batch["labels"]
    crf = getattr(_unwrapped(model), "crf", None)
    if crf is not None:
        from ..models.crf import compact

        emissions, tags, mask = compact(logits, labels, IGNORE_INDEX)
        paths = crf.decode(emissions, mask)
        return paths, [t[: len(p)].tolist() for t, p in zip(tags, paths)]
    pred = logits.argmax(-1)
    preds, refs = [], []
    for p, y in zip(pred, labels):
        keep = y != IGNORE_INDEX
        preds.append(p[keep].tolist())
        refs.append(y[keep].tolist())
    return preds, refs


def classify_metrics(preds: list[int], refs: list[int], label_names: list[str] | None) -> dict[str, Any]:
    from ..scores.labels import classification_metrics

    names = label_names or [str(i) for i in range(max([*preds, *refs]) + 1)]
    return classification_metrics(refs, preds, names)


def regress_metrics(preds: list[list[float]], refs: list[list[float]], label_names: list[str] | None) -> dict[str, Any]:
    from ..scores.labels import regression_metrics

    return regression_metrics(refs, preds)


def tag_metrics(preds: list[list[int]], refs: list[list[int]], label_names: list[str] | None) -> dict[str, Any]:
    from ..scores.labels import entity_metrics

    if not label_names:
        raise ValueError("tag metrics: the label names (BIO tags) are needed to read entities")
    return entity_metrics([[label_names[i] for i in r] for r in refs], [[label_names[i] for i in p] for p in preds])


CLASSIFY = ObjectiveSpec(
    name="classify", families=("encoder", "decoder", "rnn"), head="classify", data="examples", loss=classify_loss,
    default_metric="accuracy", predict=classify_predict, metrics=classify_metrics)
REGRESS = ObjectiveSpec(
    # one linear output per target: the classification head with num_labels = targets, as transformers'
    # problem_type="regression" does
    name="regress", families=("encoder", "decoder", "rnn"), head="classify", data="examples", loss=regress_loss,
    default_metric="mse", predict=regress_predict, metrics=regress_metrics)
TAG = ObjectiveSpec(
    name="tag", families=("encoder", "rnn"), head="tag", data="examples", loss=tag_loss, default_metric="f1",
    predict=tag_predict, metrics=tag_metrics)


def _multi_loss(model: nn.Module, batch: Mapping[str, Tensor], options: LossOptions) -> tuple[Tensor, int]:
    raise RuntimeError("task=multi: each step uses one task's own loss (see duplexlm.train.multitask)")


# several tasks on one encoder: the loop draws each step's task and uses that task's entry above
MULTI = ObjectiveSpec(
    name="multi", families=("encoder",), head="none", data="examples", loss=_multi_loss, default_metric="loss")


def class_weights(labels: list[int], num_labels: int) -> torch.Tensor:
    """Inverse-frequency weights ``n / (K * count_k)`` (sklearn's "balanced"); an absent class gets 0.

    >>> class_weights([0, 0, 0, 1], 2).tolist()
    [0.6666666865348816, 2.0]
    """
    counts = torch.bincount(torch.tensor(labels, dtype=torch.long), minlength=num_labels).float()
    weights = len(labels) / (num_labels * counts.clamp(min=1))
    return torch.where(counts > 0, weights, torch.zeros_like(weights))


__all__ = ["CLASSIFY", "MULTI", "REGRESS", "TAG", "class_weights", "classify_loss", "regress_loss", "tag_loss"]

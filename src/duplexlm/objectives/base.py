"""What the training loop knows of an objective: :class:`ObjectiveSpec`, the options of the supervised
losses, and :class:`Replay`. The objectives themselves are in the sibling modules; the registry is the
package's ``__init__``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor, nn

from ..data.examples import IGNORE_INDEX


@dataclass(frozen=True)
class LossOptions:
    """Knobs of the supervised losses (the pretraining losses take none)."""

    label_smoothing: float = 0.0
    class_weights: Tensor | None = None  # (num_labels,) for classify
    rtd_weight: float = 50.0  # rtd: the discriminator's loss weight against the generator's (ELECTRA: 50)
    # sft, seq2seq in training: a mean over target tokens ("token"), or over examples, each the mean of
    # its own tokens ("example": a 2-token answer weighs as much as a 40-token one)
    reduction: Literal["token", "example"] = "token"
    # dpo (objectives/preference.py): the loss, β, and SimPO's target margin γ
    dpo_loss: Literal["sigmoid", "ipo", "simpo"] = "sigmoid"
    beta: float = 0.1
    simpo_gamma: float = 0.5
    sft_weight: float = 0.0  # dpo: the weight of the chosen answers' NLL added to the loss (RPO)
    clip_eps: float = 0.2  # grpo: PPO's clipping of the probability ratio
    kl_coef: float = 0.04  # grpo: the weight of the KL penalty to the reference (0: none, no reference)
    temperature: float = 1.0  # grpo: the sampling temperature, which the log-probabilities use too
    # grpo: how the per-token losses make the batch's (objectives/rl.py): each completion's mean, then
    # their mean ("grpo"); the mean over every completion token of the batch ("dapo"); their sum over
    # completions × max_completion ("dr_grpo")
    grpo_loss_type: Literal["grpo", "dapo", "dr_grpo"] = "grpo"
    max_completion: int = 1  # grpo: the most tokens a completion has (dr_grpo's constant)


@dataclass(frozen=True)
class ObjectiveSpec:
    """One training objective as the loop sees it: the model families it trains, the head it needs,
    where its batches come from (packed token ``shards`` or labelled ``examples``), its loss, and
    for tasks how predictions are read off the logits and scored.

    ``loss(model, batch, options) -> (mean loss, count)``: the count weights micro-batches and ranks
    (target tokens, or examples). ``predict(logits, batch) -> (predictions, references)``, one entry
    per example (``predict(logits, batch, model)``: the model for what reads more than the logits,
    a CRF's Viterbi decoding); ``metrics(predictions, references, label_names) -> {name: value}``.
    """

    name: str
    families: tuple[str, ...]
    head: str
    data: Literal["shards", "examples"]
    loss: Callable[[nn.Module, Mapping[str, Tensor], LossOptions], tuple[Tensor, int]]
    default_metric: str = "loss"
    predict: Callable[[Tensor, Mapping[str, Tensor], Any], tuple[list[Any], list[Any]]] | None = None
    metrics: Callable[[list[Any], list[Any], list[str] | None], dict[str, float]] | None = None
    # what the loss of a batch is a mean over, read off the batch before the forward pass (None: the
    # labelled positions, or the examples); it must agree with the count the loss returns
    count: Callable[[Mapping[str, Tensor]], int] | None = None
    # how the model reads a batch (None: ``model(input_ids, attention_mask=...)``); evaluation runs it
    # once and hands the output to both the loss and ``predict``
    forward: Callable[[nn.Module, Mapping[str, Tensor]], Any] | None = None


class Replay:
    """Stands in for the model in a loss function, handing back the output already computed (evaluation
    runs the model once for the loss and the predictions; distillation once for both of its losses)."""

    def __init__(self, out: Any, crf: Any = None) -> None:
        self.out = out
        if crf is not None:  # a multi-task tagger's CRF, which the loss finds on the model
            self.crf = crf

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.out


__all__ = ["IGNORE_INDEX", "LossOptions", "ObjectiveSpec", "Replay"]

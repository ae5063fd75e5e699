"""The reference model of preference tuning (``task=dpo``) and of ``task=grpo``'s KL term: the model as
training starts, frozen.

Its log-probabilities of each batch's rows join the batch (``ref_logps``) before the loss, in training
and in evaluation, as a teacher's outputs do for distillation: the policy's loss then reads them. Two
ways to hold it:

- ``method=full`` or ``freeze``: a copy of the starting weights, in evaluation mode, without gradients
  (a second model's memory);
- ``method=lora``: the policy itself with its adapters switched off
  (:func:`~duplexlm.models.lora.adapters_disabled`): the base weights are frozen under LoRA, so that is
  exactly the starting model, and no copy is made.

``simpo`` needs no reference: none is built. The reference runs deterministically (no dropout), so a
batch stays a function of (seed, step, rank) and a resumed run equals the uninterrupted one.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ..models.lora import adapters_disabled
from ..objectives.base import IGNORE_INDEX
from ..objectives.generative import sft_forward, token_logps


class Reference:
    """``targets(batch) -> {"ref_logps": (rows,)}``: the reference's summed log-probabilities of each
    row's labelled tokens."""

    def __init__(self, model: nn.Module, lora: bool) -> None:
        self.lora = lora
        if lora:
            self.model = model  # the policy: its adapters are switched off while the reference runs
        else:
            self.model = copy.deepcopy(model).eval()
            self.model.requires_grad_(False)

    @torch.no_grad()
    def token_targets(self, batch: Mapping[str, Tensor], temperature: float = 1.0) -> Tensor:
        """The reference's log-probability of each labelled token, row-major (N,) (grpo's KL term, at the
        sampling temperature)."""
        if not self.lora:
            return token_logps(sft_forward(self.model, batch).logits, batch, temperature)
        training = self.model.training
        self.model.eval()  # no dropout: the starting model's own probabilities
        try:
            with adapters_disabled(self.model):
                return token_logps(sft_forward(self.model, batch).logits, batch, temperature)
        finally:
            self.model.train(training)

    @torch.no_grad()
    def targets(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``ref_logps``: the reference's summed log-probability of each row's labelled tokens (dpo)."""
        scored = batch["labels"] != IGNORE_INDEX
        tokens = self.token_targets(batch)
        return {"ref_logps": tokens.new_zeros(scored.shape[0]).index_add(0, scored.nonzero()[:, 0], tokens)}


__all__ = ["Reference"]

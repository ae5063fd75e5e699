"""Reinforcement learning with verifiable rewards — ``grpo`` for decoders — as one more entry of the
objective registry.

GRPO (Shao et al. 2024, DeepSeekMath): for each prompt a group of ``G`` completions is sampled from
the policy (:class:`duplexlm.train.rollouts.RolloutSampler`, through the decoding engine), each gets a
reward from a rule (:mod:`duplexlm.scores.rewards`), and its advantage is its reward against its own
group's: ``A = (r − mean(r_group)) / (std(r_group) + 1e-4)`` — no value model. The batch then holds
every prompt + completion as a row, labelled on the completion's tokens (with the end-of-turn token
that closed it), and the loss per completion token ``t`` (log-probabilities of the logits divided by
the sampling temperature, for the policy, the sampling policy and the reference alike, as TRL) is the clipped policy gradient of PPO plus an
optional KL penalty to the reference model (the starting weights):

    ratio = π(y_t) / π_old(y_t)
    ℓ_t = −min(ratio · A, clip(ratio, 1 − ε, 1 + ε) · A) + β · (π_ref/π − log(π_ref/π) − 1)

averaged over each completion's tokens, then over the completions (``objective_args.loss_type=grpo``;
``dapo``: over every completion token of the batch alike, DAPO's; ``dr_grpo``: summed, and divided by
the completions × the most tokens a completion may have, Dr. GRPO's; both without the per-completion
mean's length bias, under which a token of a short completion weighs more). ``π_old`` is the policy that
sampled the group: with one optimisation step per group (``objective_args.grpo_iterations=1``) it is
the policy itself, detached (ratio 1, the plain policy gradient); with ``μ`` steps the batch carries the
sampling policy's log-probabilities (``old_logps``) and the ratio clips how far the later steps move.
The KL term uses the unbiased, always positive estimator of Schulman (k3).

>>> import torch
>>> lp = torch.tensor([-1.0, -2.0])
>>> grpo_token_losses(lp, lp.detach(), torch.tensor([1.0, -1.0]), None, 0.2, 0.0).tolist()
[-1.0, 1.0]
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .base import IGNORE_INDEX, LossOptions, ObjectiveSpec
from .generative import sft_forward, token_logps


def grpo_token_losses(logps: Tensor, old_logps: Tensor, advantages: Tensor, ref_logps: Tensor | None,
                      clip_eps: float, kl_coef: float) -> Tensor:
    """Per token: the clipped policy-gradient loss (``advantages`` per token) plus ``kl_coef`` × the k3
    estimate of KL(π ‖ π_ref)."""
    ratio = torch.exp(logps - old_logps)
    loss = -torch.minimum(ratio * advantages, ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantages)
    if kl_coef > 0 and ref_logps is not None:
        d = ref_logps - logps
        loss = loss + kl_coef * (torch.exp(d) - d - 1)
    return loss


def _per_row_mean(values: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
    scored = batch["labels"] != IGNORE_INDEX
    rows = scored.nonzero()[:, 0]
    sums = values.new_zeros(scored.shape[0]).index_add(0, rows, values)
    return sums / scored.sum(1).clamp(min=1)


def grpo_loss(model: nn.Module, batch: Mapping[str, Tensor], options: LossOptions) -> tuple[Tensor, int]:
    """The GRPO loss of a batch of completions (see the module); the count is what it is a mean over:
    the completions, or (``dapo``) their tokens."""
    logps = token_logps(sft_forward(model, batch).logits, batch, options.temperature)
    scored = batch["labels"] != IGNORE_INDEX
    rows = scored.nonzero()[:, 0]
    old = batch.get("old_logps")
    old = logps.detach() if old is None else old
    per_token = grpo_token_losses(logps, old, batch["advantages"][rows].float(), batch.get("ref_logps"),
                                  options.clip_eps, options.kl_coef)
    if options.grpo_loss_type == "dapo":
        return per_token.mean(), int(per_token.numel())
    if options.grpo_loss_type == "dr_grpo":
        return per_token.sum() / (scored.shape[0] * options.max_completion), int(scored.shape[0])
    return _per_row_mean(per_token, batch).mean(), int(scored.shape[0])


def completion_count(batch: Mapping[str, Tensor]) -> int:
    return int(batch["input_ids"].shape[0])


def kl_estimate(logps: Tensor, ref_logps: Tensor, batch: Mapping[str, Tensor]) -> float:
    """The mean over completions of their mean per-token k3 estimate of KL(π ‖ π_ref)."""
    d = ref_logps - logps
    return float(_per_row_mean(torch.exp(d) - d - 1, batch).mean())


GRPO = ObjectiveSpec(
    name="grpo", families=("decoder",), head="lm", data="examples", loss=grpo_loss, default_metric="reward",
    count=completion_count, forward=sft_forward)


__all__ = ["GRPO", "completion_count", "grpo_loss", "grpo_token_losses", "kl_estimate", "token_logps"]

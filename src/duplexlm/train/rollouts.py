"""What a ``task=grpo`` step reads: groups of completions sampled from the policy as it is, rewarded.

:class:`RolloutSampler` is the sampler of the training split: ``batch(start, count)`` takes prompts
``start .. start + count - 1`` (a seeded shuffle, epoch by epoch, as every sampler), samples
``group_size`` completions for each through the decoding engine (:class:`~duplexlm.infer.engine.Engine`,
the one ``duplex serve`` uses; each completion with its own seed, a function of the run's seed and the
global sample, so a resumed run samples what the uninterrupted one did), scores them with the reward,
turns the rewards into advantages within each group (each reward less its group's mean, divided by the
group's spread unless ``scale_rewards="none"``), and returns the rows of
:func:`duplexlm.objectives.rl.grpo_loss`. With ``objective_args.grpo_iterations`` μ > 1 the loop asks
for the same samples μ steps in a row: the sampler keeps the batches of the step (one per micro-batch)
and hands them back, with the sampling policy's log-probabilities (``old_logps``). The log-probabilities
of the sampling policy and of the reference are computed as the loss computes the policy's: at the
sampling temperature, under the run's autocast. ``stats()`` averages the rewards, their spread within
groups, the completions' lengths and the KL over every micro-batch of a step (``begin_step`` starts one).

:func:`evaluate_rollouts` scores a held-out split: one greedy answer per prompt, its reward, and the
task scores of :func:`~duplexlm.scores.text.score_generations` when the prompts carry answers.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..data.examples import IGNORE_INDEX, collate_rows
from ..errors import DataError
from ..objectives.generative import sft_forward, token_logps
from ..objectives.rl import kl_estimate
from .samplers import Shuffled


def _sample_seed(*keys: int) -> int:
    seed = 0
    for k in keys:
        seed = (seed * 1_000_003 + k) % (2**31 - 1)
    return seed


class RolloutSampler:
    """Prompts → groups of sampled, rewarded completions (see the module). ``attach`` gives it the
    policy (and the reference) before the first batch."""

    def __init__(self, examples: Sequence[Any], tokenizer: Any, *, seed: int, group_size: int, max_new_tokens: int,
                 temperature: float, reward: Any, max_prompt_len: int, shuffle: bool = True, name: str = "train",
                 iterations: int = 1, scale_rewards: str = "group") -> None:
        from ..infer.chat import chat_prompt

        if not examples:
            raise DataError(f"{name} split: no prompts")
        self.examples, self.tokenizer, self.name = list(examples), tokenizer, name
        self.seed, self.group_size, self.max_new_tokens = seed, group_size, max_new_tokens
        self.temperature, self.reward, self.iterations = temperature, reward, iterations
        self.scale_rewards = scale_rewards
        self.prompts = [chat_prompt(tokenizer, list(e.prompt)) for e in self.examples]
        self.ids = [tokenizer.encode(p.text, add_special_tokens=False)[-max_prompt_len:] for p in self.prompts]
        self.n = len(self.examples)
        self._order = Shuffled(self.n, seed, shuffle)
        self.model: nn.Module | None = None
        self.reference: Any = None
        self.amp_dtype: torch.dtype | None = None
        self.keep = 1
        self._kept: dict[tuple[int, int], tuple[dict[str, Tensor], dict[str, float]]] = {}
        self._step_stats: list[tuple[int, dict[str, float]]] = []

    def attach(self, model: nn.Module, reference: Any = None, amp_dtype: torch.dtype | None = None,
               keep: int = 1) -> None:
        """The policy to sample from, the reference (or None), the run's autocast dtype, and how many
        batches (micro-batches of a step) to keep for the steps that reuse them."""
        self.model, self.reference, self.amp_dtype, self.keep = model, reference, amp_dtype, keep

    def begin_step(self) -> None:
        self._step_stats = []

    @property
    def last_stats(self) -> dict[str, float]:
        """The statistics of the current step's samples, weighted by each micro-batch's completions."""
        total = sum(n for n, _ in self._step_stats)
        if not total:
            return {}
        names = self._step_stats[0][1].keys()
        return {k: sum(n * s[k] for n, s in self._step_stats) / total for k in names}

    def indices(self, start: int, count: int) -> list[int]:
        return [self._order.index(g) for g in range(start, start + count)]

    @torch.no_grad()
    def _sample(self, rows: list[int], starts: list[int]) -> list[Any]:
        from ..infer.engine import Engine, SamplingParams

        assert self.model is not None, "RolloutSampler.attach(model) first"
        G = self.group_size
        training = self.model.training
        engine = Engine(self.model, self.tokenizer, max_batch_size=len(rows) * G, cpu_layout=False,
                        max_len=self.model.config.max_seq_len)
        prompts, params = [], []
        for i, g in zip(rows, starts):
            p = self.prompts[i]
            for j in range(G):
                prompts.append(self.ids[i])
                params.append(SamplingParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                             stop=p.stop, stop_token_ids=p.stop_token_ids,
                                             seed=_sample_seed(self.seed, g, j)))
        try:
            return engine.generate(prompts, params)
        finally:
            self.model.train(training)

    def batch(self, start: int, count: int) -> dict[str, Tensor]:
        if (start, count) in self._kept:  # the same samples, another optimisation step on them
            batch, stats = self._kept[(start, count)]
            self._step_stats.append((count * self.group_size, stats))
            return batch
        rows = self.indices(start, count)
        done = self._sample(rows, list(range(start, start + count)))
        G = self.group_size
        exs = [self.examples[i] for i in rows for _ in range(G)]
        texts = [c.text.strip() for c in done]
        rewards = self.reward(prompts=[self.prompts[i].text for i in rows for _ in range(G)], completions=texts,
                              references=[e.answer for e in exs], tasks=[e.task for e in exs])
        r = torch.tensor(rewards, dtype=torch.float32).view(count, G)
        std = r.std(dim=1, keepdim=True)  # group_size >= 2
        advantages = r - r.mean(dim=1, keepdim=True)
        if self.scale_rewards == "group":
            advantages = advantages / (std + 1e-4)
        advantages = advantages.view(-1)
        # each row: the prompt and its completion, labelled (shifted) on the completion's tokens
        prompts = [self.ids[i] for i in rows for _ in range(G)]
        batch = collate_rows([([*p, *c.token_ids], [IGNORE_INDEX] * (len(p) - 1) + [*c.token_ids, IGNORE_INDEX])
                              for p, c in zip(prompts, done)], self.tokenizer.pad_token_id or 0)
        batch["advantages"] = advantages
        device = next(self.model.parameters()).device
        on = {k: v.to(device) for k, v in batch.items()}
        stats = {"reward": float(r.mean()), "reward_std": float(std.mean()),
                 "completion_tokens": statistics.mean(len(c.token_ids) for c in done),
                 # groups whose completions all earned the same reward: no advantage, nothing learnt
                 "zero_std_groups": float((r.min(dim=1).values == r.max(dim=1).values).float().mean())}
        needs_old = self.iterations > 1
        if self.reference is not None or needs_old:
            from ..precision import autocast

            with torch.no_grad(), autocast(device, self.amp_dtype):
                policy = token_logps(sft_forward(self.model, on).logits, on, self.temperature)
                ref = self.reference.token_targets(on, self.temperature) if self.reference is not None else None
            if needs_old:
                batch["old_logps"] = policy.float().cpu()
            if ref is not None:
                batch["ref_logps"] = ref.float().cpu()
                stats["kl"] = kl_estimate(policy.float(), ref.float(), on)
        self._step_stats.append((count * G, stats))
        if self.iterations > 1:  # kept for the steps that reuse these samples: the step's micro-batches
            self._kept[(start, count)] = (batch, stats)
            while len(self._kept) > self.keep:
                self._kept.pop(next(iter(self._kept)))
        return batch


@torch.no_grad()
def evaluate_rollouts(run: Any, sampler: RolloutSampler, prefix: str) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """A held-out split answered greedily: ``{prefix}_reward`` (the mean reward), the task scores when
    every prompt has an answer, and one record per prompt (prompt, answer, reference, reward)."""
    from ..eval.generate import generate_for, score_examples

    g = run.cfg.generation
    examples = sampler.examples[: g.val_examples or None] if prefix == "val" else sampler.examples
    answered = all(e.answer is not None for e in examples)
    chats = [e.as_chat() if answered else _bare_chat(e) for e in examples]
    if answered:
        scores, records = score_examples(run.raw_model, run.tokenizer, chats, max_new_tokens=g.max_new_tokens,
                                         batch_size=g.batch_size, max_source_len=run.cfg.data.seq_len)
        preds = [r["prediction"] for r in records]
    else:
        preds = generate_for(run.raw_model, run.tokenizer, chats, max_new_tokens=g.max_new_tokens,
                             batch_size=g.batch_size)
        scores, records = {}, [{"where": e.source, "task": e.task, "input": e.prompt[-1]["content"], "prediction": p}
                               for e, p in zip(examples, preds)]
    rewards = sampler.reward(prompts=[p.text for p in sampler.prompts[: len(examples)]], completions=preds,
                             references=[e.answer for e in examples], tasks=[e.task for e in examples])
    for rec, value in zip(records, rewards):
        rec["reward"] = value
    out = {f"{prefix}_reward": statistics.mean(rewards)}
    out.update({f"{prefix}_{k}": float(v) for k, v in scores.items()})
    return out, records


def _bare_chat(example: Any) -> Any:
    from ..data.gen_tasks import ChatExample

    return ChatExample((*example.prompt, {"role": "assistant", "content": ""}), example.task, example.source)


__all__ = ["RolloutSampler", "evaluate_rollouts"]

"""Scoring a generative model by what it generates: answers to held-out conversations (``sft``) or
targets of held-out sources (``seq2seq``), decoded greedily (or with beams) by the decoding engine,
then scored per task (:func:`duplexlm.scores.text.score_generations`: accuracy of the parsed
answer, chrF, BLEU, exact match, entity F1, ...). The generations are kept beside the scores so a
person can read them.

The training loop uses it for early stopping on a generation metric (``eval_metric=val_chrf``) over a
fixed validation subset; ``duplex eval`` uses it for the test split.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError

ANSWER_TOKENS = 64
"""A conversation's answer may grow to this many tokens when the caller does not say; a pair's to
twice its source's tokens plus 16 (:func:`answer_budget`)."""


def answer_budget(max_new_tokens: int | None, source_tokens: int | None = None) -> int:
    """How many tokens an answer may grow to: ``max_new_tokens`` when given; else
    :data:`ANSWER_TOKENS` for a conversation (``source_tokens`` None), twice the source plus 16 for a
    pair (a conversion or translation as long as its source is never cut)."""
    if max_new_tokens:
        return max_new_tokens
    return ANSWER_TOKENS if source_tokens is None else 2 * source_tokens + 16


def _reference(example: Any) -> str:
    if hasattr(example, "messages"):
        return example.messages[-1]["content"]
    return example.target


@torch.no_grad()
def generate_for(model: nn.Module, tokenizer: Any, examples: Sequence[Any], *, max_new_tokens: int | None = 64,
                 batch_size: int = 16, num_beams: int = 1, max_source_len: int = 512) -> list[str]:
    """The model's answer to each example: a conversation's last assistant turn is left out and
    generated (the chat template's end-of-turn token stops it); a pair's source is encoded as training
    encoded it (ending with EOS) and its target generated. Greedy unless ``num_beams > 1``.
    ``max_new_tokens=None``: :func:`answer_budget`'s default per example."""
    from ..infer.chat import chat_prompt
    from ..infer.engine import Engine, SamplingParams

    if not examples:
        return []
    family = model.config.family
    was_training = model.training
    rows = batch_size * num_beams
    engine = Engine(model, tokenizer, max_batch_size=rows, cpu_layout=False,
                    **({"max_source_len": max_source_len} if family == "seq2seq" else {}))
    prompts: list[Any] = []
    params: list[SamplingParams] = []
    for ex in examples:
        if hasattr(ex, "messages"):
            if family != "decoder":
                raise ConfigError(f"model: conversations are answered by a decoder, found a {family}")
            p = chat_prompt(tokenizer, list(ex.messages[:-1]))
            ids = tokenizer.encode(p.text, add_special_tokens=False)
            context, most = engine.runner.context, answer_budget(max_new_tokens)
            ids = ids[-(context - most):] if len(ids) > context - most else ids
            prompts.append(ids)
            params.append(SamplingParams(max_new_tokens=most, temperature=0, stop=p.stop,
                                         stop_token_ids=p.stop_token_ids, num_beams=num_beams))
        else:
            if family != "seq2seq":
                raise ConfigError(f"model: source → target pairs are answered by an encoder-decoder, found a {family}")
            src = tokenizer.encode(ex.source_text, add_special_tokens=False)[: max_source_len - 1]
            prompts.append([*src, tokenizer.eos_token_id])
            most = answer_budget(max_new_tokens, len(src))
            params.append(SamplingParams(max_new_tokens=most, temperature=0, num_beams=num_beams))
    try:
        out = []
        for start in range(0, len(prompts), batch_size):
            done = engine.generate(prompts[start:start + batch_size], params[start:start + batch_size])
            out.extend(c.text.strip() for c in done)
        return out
    finally:
        model.train(was_training)


def score_examples(model: nn.Module, tokenizer: Any, examples: Sequence[Any], **kwargs: Any
                   ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Generate for ``examples`` and score → (scores, generations). Scores are per task
    (``{task}_{metric}``) when the examples name their tasks, plus the mean over tasks of each metric
    they share (``chrf``, ``accuracy``, ...) without a prefix, and ``task_mean``, the mean of each
    task's :func:`~duplexlm.scores.text.headline_score`; ``generations``: one record per example
    (source, task, reference, prediction)."""
    from ..scores.text import headline_score, score_generations

    preds = generate_for(model, tokenizer, examples, **kwargs)
    by_task: dict[str | None, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        by_task[getattr(ex, "task", None)].append(i)
    scores: dict[str, float] = {}
    shared: dict[str, list[float]] = defaultdict(list)
    for task, idx in sorted(by_task.items(), key=lambda kv: str(kv[0])):
        s = score_generations(task, [preds[i] for i in idx], [_reference(examples[i]) for i in idx])
        for k, v in s.items():
            if task is not None and len(by_task) > 1:
                scores[f"{task}_{k}"] = float(v)
            shared[k].append(float(v))
        shared["task_mean"].append(headline_score(task, s))
    scores.update({k: sum(v) / len(v) for k, v in shared.items()})
    records = []
    for i, ex in enumerate(examples):
        where = getattr(ex, "source", None) if hasattr(ex, "messages") else getattr(ex, "where", None)
        prompt = ex.messages[-2]["content"] if hasattr(ex, "messages") else ex.source_text
        records.append({"where": where, "task": getattr(ex, "task", None), "input": prompt,
                        "reference": _reference(ex), "prediction": preds[i]})
    return scores, records


__all__ = ["generate_for", "score_examples"]

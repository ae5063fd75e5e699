"""Prompts for reinforcement learning (``task=grpo``): what the policy answers, and what its answers
are checked against.

Files are JSON lines (``.jsonl``/``.ndjson``): ``prompt`` (a text: one user turn, after an optional
``system`` string; or a list of chat messages ending with a user turn), an optional ``answer`` (the
reference the ``exact``, ``chrf`` and ``task`` rewards compare with) and an optional ``task`` (the
metric of the ``task`` reward and of the scores). Every bad record is a
:class:`~duplexlm.errors.DataError` naming ``file:line``.

Built-ins: ``zh-tasks`` (the prompts of :func:`~duplexlm.data.gen_tasks.zh_tasks`, its reference
answers as answers: every task verifiable by its metric), ``zh-tasks-unseen`` (the same tasks' training
prompts that zh-tasks' training split does not hold, :func:`~duplexlm.data.gen_tasks.zh_tasks_unseen`:
RL after instruction tuning on zh-tasks on prompts the model has not been trained on) and ``arithmetic`` (:func:`arithmetic`:
two-digit sums and differences, the number as the answer).

>>> data = load_prompt_data("arithmetic")
>>> ex = data.splits["train"][0]
>>> ex.prompt[-1]["content"], ex.answer, ex.task
('请直接写出结果：85-43=', '42', '算术')
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from ..scores.rewards import ARITHMETIC
from .corpus import json_type
from .gen_tasks import (
    BUILTIN_SEQ2SEQ,
    ChatExample,
    GenData,
    assemble_splits,
    resolve_data,
    zh_tasks,
    zh_tasks_unseen,
)
from .preference import prompt_messages
from .tasks import JSONL_SUFFIXES, jsonl_records, shown_value, where_in

BUILTIN_PROMPTS: dict[str, str] = {
    "zh-tasks": "the zh-tasks prompts with their reference answers (2,000 training and 200 validation and test "
                "prompts a task), each verifiable by its task's metric",
    "zh-tasks-unseen": "training prompts of the zh-tasks that zh-tasks' own training split does not hold (up to "
                       "2,000 a task, drawn from the same source splits: 转繁体 4,411), zh-tasks' validation and "
                       "test: what a model instruction-tuned on zh-tasks has not seen, for RL after it",
    "arithmetic": "两位数加减法: 'a+b' and 'a-b' with a, b in 10-99 in a few phrasings, the number as the answer; "
                  "2,000 training and 200 validation and test prompts, seeded",
}
_ARITHMETIC_TEMPLATES = ("计算：{q}=", "{q}=？", "请直接写出结果：{q}=", "算一算：{q}=")


@dataclass(frozen=True)
class PromptExample:
    """A prompt (chat messages ending with a user turn), its reference answer (or ``None``) and task."""

    prompt: tuple[dict[str, str], ...]
    answer: str | None = None
    task: str | None = None
    source: str = ""

    def as_chat(self) -> ChatExample:
        """The prompt with its reference answer: what generated answers are scored against."""
        if self.answer is None:
            raise DataError(f"{self.source}: no 'answer' to score a generated answer against")
        return ChatExample((*self.prompt, {"role": "assistant", "content": self.answer}), self.task, self.source)


def prompt_example(obj: dict[str, Any], where: str) -> PromptExample:
    """One JSONL record (see the module) → a :class:`PromptExample`."""
    for key in ("task", "answer"):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            raise DataError(f"{where}: expected a string in field {key!r}, found a JSON {json_type(obj[key])} "
                            f"({shown_value(obj[key])})")
    prompt = prompt_messages(obj, where)
    answer = obj.get("answer")
    if answer is not None and not answer.strip():
        raise DataError(f"{where}: expected a non-empty 'answer' (or none), found {answer!r}")
    return PromptExample(tuple(prompt), answer, obj.get("task") or None, where)


def _read_file(path: Path, name: str) -> list[PromptExample]:
    examples = [prompt_example(obj, where_in(name, line)) for line, obj in jsonl_records(path, name)]
    if not examples:
        raise DataError(f"{name}: expected at least one prompt, found none")
    return examples


@functools.lru_cache(maxsize=4)
def _arithmetic(seed: int, train: int, evaluation: int) -> dict[str, tuple[PromptExample, ...]]:
    rng = random.Random(f"arithmetic:{seed}")
    questions = [(a, op, b) for a in range(10, 100) for b in range(10, 100) for op in "+-"]
    rng.shuffle(questions)
    sizes = {"validation": evaluation, "test": evaluation, "train": train}
    out, start = {}, 0
    for split, n in sizes.items():  # disjoint: no training question is asked in validation or test
        part = []
        for i, (a, op, b) in enumerate(questions[start:start + n]):
            text = rng.choice(_ARITHMETIC_TEMPLATES).format(q=f"{a}{op}{b}")
            part.append(PromptExample(({"role": "user", "content": text},), str(a + b if op == "+" else a - b),
                                      ARITHMETIC, f"arithmetic:{split}:{i + 1}"))
        out[split], start = tuple(part), start + n
    return out


def arithmetic(seed: int = 1234, train: int = 2000, evaluation: int = 200) -> GenData:
    """The built-in ``arithmetic``: ``a+b`` and ``a-b`` for two-digit ``a`` and ``b`` (16,200 questions),
    shuffled by ``seed`` and split without overlap, each asked in one of four phrasings
    (``计算：37+45=``); the answer is the number alone (``82``), task ``算术``."""
    return GenData("prompt", {s: list(p) for s, p in _arithmetic(seed, train, evaluation).items()},
                   {"builtin": "arithmetic", "seed": seed})


def _zh_task_prompts(seed: int, unseen: bool = False) -> dict[str, list[PromptExample]]:
    splits = zh_tasks(seed).splits
    if unseen:
        splits["train"] = zh_tasks_unseen(seed)
    return {split: [PromptExample(e.messages[:-1], e.target, e.task, e.source) for e in part]
            for split, part in splits.items()}


def load_prompt_data(train: str, validation: str | None = None, test: str | None = None, *,
                     seed: int = 1234) -> GenData:
    """Prompts for ``task=grpo``: ``train``, ``validation`` and ``test`` each a ``.jsonl`` file (see the
    module) or a built-in (:data:`BUILTIN_PROMPTS`; a built-in ``train`` brings its validation and
    test splits)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed: expected an integer, found {seed!r}")
    others = {n: "a seq2seq dataset (train task=seq2seq on it)" for n in BUILTIN_SEQ2SEQ if n not in BUILTIN_PROMPTS}

    def resolve(spec: Any, flag: str) -> tuple[str, Path | None]:
        return resolve_data(spec, flag, "prompt", BUILTIN_PROMPTS, JSONL_SUFFIXES, others)

    def builtin(name: str) -> tuple[dict[str, list[Any]], dict[str, Any]]:
        if name == "arithmetic":
            data = arithmetic(seed)
            return data.splits, data.stats
        return _zh_task_prompts(seed, name == "zh-tasks-unseen"), {"builtin": name, "seed": seed}

    return assemble_splits("prompt", (("train", train), ("validation", validation), ("test", test)), builtin,
                           _read_file, resolve)


__all__ = ["BUILTIN_PROMPTS", "PromptExample", "arithmetic", "load_prompt_data", "prompt_example"]

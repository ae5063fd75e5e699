"""Verifiable rewards for reinforcement learning (``task=grpo``): one number per completion, from a
rule, never from a learnt model.

:func:`make_reward` turns ``objective_args.reward`` into a function
``reward(prompts, completions, references, tasks) -> list[float]`` (keyword arguments, as TRL calls
its reward functions):

- ``exact``: 1 when the completion, stripped, equals the reference, else 0;
- ``chrf``: the completion's sentence chrF against the reference, over 100 (0–1);
- ``task``: each prompt's task scored by its metric, per completion (:func:`task_reward`): the
  sentiment answer right (情感判断), sentence chrF / 100 (转繁体, 翻译, a task it does not know),
  the entity F1 of the sentence for an answer in the task's format, else 0 (实体识别), the number
  right (算术);
- ``regex:PATTERN``: 1 when the whole stripped completion matches ``PATTERN`` (Python ``re``), else 0;
- ``path/to/file.py:function``: a function of the user's, called as
  ``function(prompts=..., completions=..., references=..., tasks=...)``, which must return one
  finite number per completion; an exception, a non-number or a wrong count is a
  :class:`~duplexlm.errors.RewardError` naming ``file.py:function``.

>>> make_reward("exact")(prompts=["1+1="], completions=[" 2"], references=["2"], tasks=[None])
[1.0]
>>> task_reward("实体识别", "人名：张三；地名：无；机构名：无", "人名：张三、李四；地名：无；机构名：无")
0.6666666666666666
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DuplexError
from .text import answer_in_format, parse_entities, parse_sentiment

Reward = Callable[..., list[float]]
ARITHMETIC = "算术"
"""The task name of the built-in arithmetic prompts (:func:`duplexlm.data.prompts.arithmetic`)."""


class RewardError(DuplexError, ValueError):
    """A reward function raised, or returned something other than one finite number per completion."""


def sentence_chrf(pred: str, ref: str) -> float:
    """chrF of one completion against its reference, 0–1 (sacrebleu's sentence chrF / 100)."""
    from sacrebleu.metrics import CHRF

    return CHRF().sentence_score(pred, [ref]).score / 100.0


def _entity_f1(pred: str, ref: str) -> float:
    p, g = parse_entities(pred), parse_entities(ref)
    if not p and not g:
        return 1.0  # nothing to find, nothing listed
    hit = len(p & g)
    return 2 * hit / (len(p) + len(g))


def task_reward(task: str | None, completion: str, reference: str) -> float:
    """One completion of a ``task`` prompt scored against its reference, 0–1 (see the module)."""
    if task == "情感判断":
        return float(parse_sentiment(completion) is not None and parse_sentiment(completion) == parse_sentiment(reference))
    if task == "实体识别":  # an answer out of format earns nothing (else an empty one would match "none")
        return _entity_f1(completion, reference) if answer_in_format(task, completion.strip()) else 0.0
    if task == ARITHMETIC:  # the number alone, right
        got = completion.strip()
        return float(re.fullmatch(r"-?\d+", got) is not None and int(got) == int(reference.strip()))
    return sentence_chrf(completion.strip(), reference.strip())


def _needs_reference(name: str) -> Reward:
    def reward(*, completions: Sequence[str], references: Sequence[str | None], tasks: Sequence[str | None],
               **_: Any) -> list[float]:
        out = []
        for i, (c, r, t) in enumerate(zip(completions, references, tasks)):
            if r is None:
                raise RewardError(f"reward={name}: completion {i} has no reference answer to score against (give "
                                  "each prompt an 'answer')")
            out.append(float(c.strip() == r.strip()) if name == "exact" else
                       sentence_chrf(c.strip(), r.strip()) if name == "chrf" else task_reward(t, c, r))
        return out
    return reward


def _regex(pattern: str) -> Reward:
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"objective_args.reward: regex:{pattern!r} is not a regular expression ({e})") from e

    def reward(*, completions: Sequence[str], **_: Any) -> list[float]:
        return [float(compiled.fullmatch(c.strip()) is not None) for c in completions]
    return reward


def _from_file(spec: str) -> Reward:
    path_text, _, name = spec.rpartition(":")
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise ConfigError(f"objective_args.reward: {path_text} is not a file (expected path/to/file.py:function)")
    module_spec = importlib.util.spec_from_file_location(f"duplex_reward_{path.stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"objective_args.reward: cannot load {path_text} as Python")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        raise ConfigError(f"objective_args.reward: importing {path_text} raised {type(e).__name__}: {e}") from e
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(f"objective_args.reward: {path_text} has no function {name!r}")
    return fn


def checked(fn: Reward, where: str) -> Reward:
    """``fn`` whose every call must give one finite number per completion (else a :class:`RewardError`
    naming ``where``); what it raises is re-raised as a :class:`RewardError` naming ``where``."""

    def reward(*, prompts: Sequence[str], completions: Sequence[str], references: Sequence[str | None],
               tasks: Sequence[str | None]) -> list[float]:
        try:
            got = fn(prompts=list(prompts), completions=list(completions), references=list(references),
                     tasks=list(tasks))
        except RewardError:
            raise
        except Exception as e:
            raise RewardError(f"reward function {where} raised {type(e).__name__}: {e}") from e
        if isinstance(got, (str, bytes)) or not hasattr(got, "__len__") or len(got) != len(completions):
            n = len(got) if hasattr(got, "__len__") and not isinstance(got, (str, bytes)) else type(got).__name__
            raise RewardError(f"reward function {where}: expected a list of {len(completions)} numbers (one per "
                              f"completion), found {n if isinstance(n, str) else f'{n} values'}")
        out = []
        for i, v in enumerate(got):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
                raise RewardError(f"reward function {where}: completion {i}: expected a finite number, found {v!r}")
            out.append(float(v))
        return out
    return reward


def make_reward(spec: str) -> Reward:
    """``objective_args.reward`` → a checked reward function (see the module)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"objective_args.reward: expected exact, chrf, task, regex:PATTERN or file.py:function, "
                          f"found {spec!r}")
    if spec in ("exact", "chrf", "task"):
        return checked(_needs_reference(spec), f"reward={spec}")
    if spec.startswith("regex:"):
        return checked(_regex(spec[len("regex:"):]), spec)
    if ":" in spec and spec.rpartition(":")[0].endswith(".py"):
        return checked(_from_file(spec), spec)
    raise ConfigError(f"objective_args.reward: expected exact, chrf, task, regex:PATTERN or path/to/file.py:function, "
                      f"found {spec!r}")


__all__ = ["ARITHMETIC", "RewardError", "checked", "make_reward", "sentence_chrf", "task_reward"]

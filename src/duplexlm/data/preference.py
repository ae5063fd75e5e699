"""Preference data for ``task=dpo``: a prompt, the answer preferred (``chosen``) and one not
(``rejected``).

Files are JSON lines (``.jsonl``/``.ndjson``), TRL's two forms:

- text: ``{"prompt": "...", "chosen": "...", "rejected": "..."}``; the prompt is one user turn, an
  optional ``system`` string comes before it.
- chat: ``prompt`` a list of ``{"role", "content"}`` messages ending with a user turn (an optional
  leading system message, then user and assistant turns alternating), ``chosen`` and ``rejected``
  each a list of one assistant message (or a string).

An optional ``task`` string names the metrics the chosen answers are scored with when the model
generates (:func:`duplexlm.scores.text.score_generations`). ``chosen`` and ``rejected`` must differ.
Every bad record is a :class:`~duplexlm.errors.DataError` naming ``file:line`` and the field.

The built-in ``zh-prefs`` is made from the built-in ``zh-tasks`` (:func:`zh_prefs`): each example's
reference answer is chosen, a plausible wrong answer of the same task is rejected.

>>> import tempfile, pathlib
>>> f = pathlib.Path(tempfile.mkdtemp()) / "prefs.jsonl"
>>> _ = f.write_text('{"prompt": "1+1=?", "chosen": "2", "rejected": "3"}\\n', encoding="utf-8")
>>> ex = load_preference_data(str(f)).splits["train"][0]
>>> ex.prompt, ex.chosen, ex.rejected, ex.source.endswith("prefs.jsonl:1")
(({'role': 'user', 'content': '1+1=?'},), '2', '3', True)
"""

from __future__ import annotations

import functools
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..scores.text import ENTITY_LABELS, NO_ENTITY, SENTIMENT_ANSWERS, format_entities
from .corpus import json_type
from .gen_tasks import (
    BUILTIN_SEQ2SEQ,
    BUILTIN_SFT,
    ChatExample,
    GenData,
    assemble_splits,
    chat_messages,
    resolve_data,
    text_field,
    zh_task_input,
    zh_tasks,
)
from .tasks import JSONL_SUFFIXES, jsonl_records, shown_value, where_in

BUILTIN_PREFERENCE: dict[str, str] = {
    "zh-prefs": "zh-tasks' 情感判断, 转繁体 and 实体识别 with a wrong answer each: chosen the reference, rejected "
                "the other sentiment, the conversion with some characters left Simplified, the entity list with "
                "one entity dropped, retyped or made up",
}
PREFERENCE_TASKS: tuple[str, ...] = ("情感判断", "转繁体", "实体识别")
"""The zh-tasks in ``zh-prefs``. 翻译 is not: a wrong gloss is told from the right one only by knowing
the word (the instruction-tuned decoder of docs/recipes.md scores chrF 1.4 on it), which a preference
between two glosses it has never learnt cannot teach (measured: held-out preference accuracy 0.52)."""


@dataclass(frozen=True)
class PreferenceExample:
    """A prompt (chat messages ending with a user turn), the answer preferred and the one not."""

    prompt: tuple[dict[str, str], ...]
    chosen: str
    rejected: str
    task: str | None = None
    source: str = ""

    def conversation(self, answer: str) -> tuple[dict[str, str], ...]:
        return (*self.prompt, {"role": "assistant", "content": answer})

    def as_chat(self) -> ChatExample:
        """The prompt with the chosen answer: what generation is scored against."""
        return ChatExample(self.conversation(self.chosen), self.task, self.source)


def _answer(obj: dict[str, Any], key: str, where: str) -> str:
    """``chosen``/``rejected``: a non-empty string, or a list of one assistant message."""
    if key not in obj:
        raise DataError(f"{where}: expected a field {key!r}, found none (keys: {', '.join(obj) or 'none'})")
    value = obj[key]
    if isinstance(value, list):
        if len(value) != 1:
            raise DataError(f"{where}: expected {key!r} to hold one assistant message, found {len(value)} messages")
        message = value[0]
        if not isinstance(message, dict) or message.get("role") != "assistant":
            raise DataError(f"{where}: {key}[0]: expected an object with role 'assistant' and its content, found "
                            f"{shown_value(message)}")
        value = message.get("content")
    if not isinstance(value, str):
        raise DataError(f"{where}: expected {key!r} to be a string or a list of one assistant message, found a "
                        f"JSON {json_type(value)} ({shown_value(value)})")
    if not value.strip():
        raise DataError(f"{where}: expected a non-empty answer in field {key!r}, found {value!r}")
    return value


def prompt_messages(obj: dict[str, Any], where: str) -> list[dict[str, str]]:
    """A record's ``prompt`` as chat messages ending with a user turn: a text (one user turn, after an
    optional ``system`` string) or a list of messages; errors name ``where``."""
    if "prompt" not in obj:
        raise DataError(f"{where}: expected a field 'prompt' (a text or a list of chat messages), found none "
                        f"(keys: {', '.join(obj) or 'none'})")
    if isinstance(obj["prompt"], list):
        prompt = chat_messages(obj["prompt"], where, last="user", field="prompt")
    else:
        system = text_field(obj, "system", where, optional=True)
        prompt = ([{"role": "system", "content": system}] if system and system.strip() else []) + [
            {"role": "user", "content": str(text_field(obj, "prompt", where))}]
    return prompt


def preference_example(obj: dict[str, Any], where: str) -> PreferenceExample:
    """One JSONL record (either form of the module's docstring) → a :class:`PreferenceExample`."""
    task = obj.get("task")
    if task is not None and not isinstance(task, str):
        raise DataError(f"{where}: expected a string in field 'task', found a JSON {json_type(task)} "
                        f"({shown_value(task)})")
    prompt = prompt_messages(obj, where)
    chosen, rejected = _answer(obj, "chosen", where), _answer(obj, "rejected", where)
    if chosen.strip() == rejected.strip():
        raise DataError(f"{where}: 'chosen' and 'rejected' are the same answer ({shown_value(chosen)}): a pair "
                        "must prefer one answer to another")
    return PreferenceExample(tuple(prompt), chosen, rejected, task or None, where)


def _read_file(path: Path, name: str) -> list[PreferenceExample]:
    examples = [preference_example(obj, where_in(name, line)) for line, obj in jsonl_records(path, name)]
    if not examples:
        raise DataError(f"{name}: expected at least one preference pair, found none")
    return examples


# ----------------------------------------------------------------------------------------------------
# The built-in zh-prefs


def _entities(answer: str) -> list[tuple[str, str]]:
    """A 实体识别 answer as :func:`format_entities` writes it → its ``(type, name)`` entities in order."""
    types = {label: typ for typ, label in ENTITY_LABELS.items()}
    out = []
    for section in answer.split("；"):
        label, _, names = section.partition("：")
        out += [(types[label], n) for n in names.split("、") if n and n != NO_ENTITY]
    return out


def _is_cjk(c: str) -> bool:
    return "\u3400" <= c <= "\u4dbf" or "\u4e00" <= c <= "\u9fff" or "\uf900" <= c <= "\ufaff"


def wrong_answer(example: ChatExample, rng: random.Random) -> str | None:
    """A plausible wrong answer to a zh-tasks example of :data:`PREFERENCE_TASKS` (``None`` when there
    is none for it):

    - 情感判断: the other sentiment;
    - 转繁体: the reference with one to all of the characters that differ from the Simplified input
      put back as they were in the input (a conversion left half done);
    - 实体识别: the reference with one entity dropped or given another type, or, when it lists none,
      two to four Chinese characters of the sentence listed as an entity.

    >>> ex = ChatExample(({"role": "user", "content": "简体转繁体：发展"}, {"role": "assistant", "content": "發展"}),
    ...                  "转繁体", "x")
    >>> wrong_answer(ex, random.Random(0))
    '发展'
    """
    answer = example.target
    if example.task == "情感判断":
        pos, neg = SENTIMENT_ANSWERS.values()
        return neg if answer == pos else pos
    if example.task == "转繁体":
        text = zh_task_input(example)
        if len(text) != len(answer):
            return None
        differ = [i for i, (a, b) in enumerate(zip(text, answer)) if a != b]
        if not differ:
            return None
        back = set(rng.sample(differ, rng.randint(1, len(differ))))
        return "".join(text[i] if i in back else c for i, c in enumerate(answer))
    if example.task == "实体识别":
        ents = _entities(answer)
        if not ents:
            text, n = zh_task_input(example), rng.randint(2, 4)
            starts = [i for i in range(len(text) - n + 1) if all(_is_cjk(c) for c in text[i:i + n])]
            if not starts:
                return None
            start = rng.choice(starts)
            return format_entities([(rng.choice(list(ENTITY_LABELS)), text[start:start + n])])
        k = rng.randrange(len(ents))
        if rng.random() < 0.5:  # dropped
            return format_entities(ents[:k] + ents[k + 1:])
        typ, name = ents[k]
        other = rng.choice([t for t in ENTITY_LABELS if t != typ])
        return format_entities([*ents[:k], (other, name), *ents[k + 1:]])
    return None


@functools.lru_cache(maxsize=4)
def _zh_prefs_cached(seed: int, train_per_task: int, eval_per_task: int
                     ) -> tuple[dict[str, tuple[PreferenceExample, ...]], dict[str, Any]]:
    data = zh_tasks(seed, train_per_task, eval_per_task)
    splits: dict[str, tuple[PreferenceExample, ...]] = {}
    skipped: dict[str, Counter[str]] = {}
    for split, part in data.splits.items():
        rng = random.Random(f"zh-prefs:{seed}:{split}")
        out, skipped[split] = [], Counter()
        for ex in part:
            if ex.task not in PREFERENCE_TASKS:
                continue
            rejected = wrong_answer(ex, rng)
            if rejected is None or rejected == ex.target:
                skipped[split][str(ex.task)] += 1
                continue
            out.append(PreferenceExample(ex.messages[:-1], ex.target, rejected, ex.task,
                                         ex.source.replace("zh-tasks:", "zh-prefs:", 1)))
        splits[split] = tuple(out)
    stats = {"builtin": "zh-prefs", "seed": seed, "from": "zh-tasks",
             "pairs": {s: dict(Counter(str(e.task) for e in p)) for s, p in splits.items()},
             "skipped": {s: dict(c) for s, c in skipped.items()}}
    return splits, stats


def zh_prefs(seed: int = 1234, train_per_task: int = 2000, eval_per_task: int = 200) -> GenData:
    """The built-in ``zh-prefs``: every example of :data:`PREFERENCE_TASKS` in
    :func:`~duplexlm.data.gen_tasks.zh_tasks` (same seed and sizes, same splits, so the test prompts are
    zh-tasks' test prompts) with its reference answer chosen and a :func:`wrong_answer` rejected,
    drawn by an RNG seeded by ``seed`` and the split. An example without a wrong answer (a 转繁体
    sentence with no character to convert, or whose conversion changes its length; a 实体识别 sentence
    without entities nor two Chinese characters in a row) is left out;
    ``stats["pairs"]`` counts the pairs per split and task, ``stats["skipped"]`` what was left out."""
    splits, stats = _zh_prefs_cached(seed, train_per_task, eval_per_task)
    return GenData("preference", {s: list(p) for s, p in splits.items()}, dict(stats))


def load_preference_data(train: str, validation: str | None = None, test: str | None = None, *,
                         seed: int = 1234) -> GenData:
    """Preference pairs (``kind="preference"``): ``train``, ``validation`` and ``test`` each a
    ``.jsonl`` file (see the module) or the built-in ``zh-prefs`` (a built-in ``train`` brings its
    validation and test splits, as :func:`~duplexlm.data.gen_tasks.load_sft_data`'s built-ins do)."""
    others = {n: "an sft dataset (train task=sft on it)" for n in BUILTIN_SFT}
    others.update({n: "a seq2seq dataset (train task=seq2seq on it)" for n in BUILTIN_SEQ2SEQ if n not in others})

    def resolve(spec: Any, flag: str) -> tuple[str, Path | None]:
        return resolve_data(spec, flag, "preference", BUILTIN_PREFERENCE, JSONL_SUFFIXES, others)

    def builtin(name: str) -> tuple[dict[str, list[Any]], dict[str, Any]]:
        data = zh_prefs(seed)
        return data.splits, data.stats

    return assemble_splits("preference", (("train", train), ("validation", validation), ("test", test)), builtin,
                           _read_file, resolve)


__all__ = ["BUILTIN_PREFERENCE", "PREFERENCE_TASKS", "PreferenceExample", "load_preference_data", "preference_example",
           "prompt_messages", "wrong_answer",
           "zh_prefs"]

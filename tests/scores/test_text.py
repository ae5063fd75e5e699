"""Scores of generated text against sacrebleu and rouge-score called directly and against hand-computed
values; the zh-tasks answer parsers on the format the data builder writes and on what a model may vary."""

from __future__ import annotations

import random
import sys

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from duplexlm.data.gen_tasks import ENTITY_LABELS, format_entities
from duplexlm.errors import ConfigError, DataError
from duplexlm.scores import text as generation
from duplexlm.scores.text import (
    answer_in_format,
    bleu,
    char_accuracy,
    chrf,
    exact_match,
    parse_entities,
    parse_sentiment,
    rouge,
    score_generations,
)

ZH_PREDS = ["中共中央總書記、國家主席江澤民", "迈向充满希望的新世纪", "今天天气很好", "北京"]
ZH_REFS = ["中共中央總書記、國家主席江澤民", "邁向充滿希望的新世紀", "今天天氣很好", "北京市"]
EN_PREDS = ["the cat sat on the mat", "a quick brown fox jumps", "hello world"]
EN_REFS = ["the cat is on the mat", "the quick brown fox jumped", "hello there world"]


# ----------------------------------------------------------------------------------------------------
# chrF, BLEU, ROUGE


def test_identical_strings_score_100() -> None:
    assert chrf(ZH_REFS, ZH_REFS) == 100.0
    assert chrf(["北京"], ["北京"]) == 100.0
    assert bleu(ZH_REFS, ZH_REFS) == pytest.approx(100.0)
    assert bleu(EN_REFS, EN_REFS, chinese=False) == pytest.approx(100.0)
    assert rouge(ZH_REFS, ZH_REFS) == pytest.approx({"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0})


def test_chrf_and_bleu_agree_with_sacrebleu() -> None:
    assert chrf(ZH_PREDS, ZH_REFS) == sacrebleu.corpus_chrf(ZH_PREDS, [ZH_REFS]).score
    assert chrf(EN_PREDS, EN_REFS) == sacrebleu.metrics.CHRF().corpus_score(EN_PREDS, [EN_REFS]).score
    assert bleu(ZH_PREDS, ZH_REFS) == sacrebleu.corpus_bleu(ZH_PREDS, [ZH_REFS], tokenize="zh").score
    assert bleu(EN_PREDS, EN_REFS, chinese=False) == sacrebleu.corpus_bleu(EN_PREDS, [EN_REFS]).score
    # the zh tokenizer matters: without it a Chinese sentence is one word
    assert bleu(ZH_PREDS, ZH_REFS) != bleu(ZH_PREDS, ZH_REFS, chinese=False)
    assert 0 < chrf(ZH_PREDS, ZH_REFS) < 100 and 0 < bleu(ZH_PREDS, ZH_REFS) < 100


def test_rouge_by_hand_and_against_rouge_score() -> None:
    # 北京欢迎你 / 北京欢迎您: 4 of 5 characters, 3 of 4 bigrams, a longest common subsequence of 4
    assert rouge(["北京欢迎你"], ["北京欢迎您"]) == pytest.approx({"rouge1": 80.0, "rouge2": 75.0, "rougeL": 80.0})
    # a mean over examples: (100 + 0) / 2
    assert rouge(["北京", "上海"], ["北京", "广州"])["rouge1"] == pytest.approx(50.0)
    # words and numbers stay whole in Chinese mode: 2 of 3 tokens (iphone, 很, 好 / iphone, 很, 差)
    assert rouge(["iPhone很好"], ["iphone很差"])["rouge1"] == pytest.approx(200 / 3)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    expected = {t: 100 * sum(scorer.score(r, p)[t].fmeasure for p, r in zip(EN_PREDS, EN_REFS)) / len(EN_REFS)
                for t in ("rouge1", "rouge2", "rougeL")}
    assert rouge(EN_PREDS, EN_REFS, chinese=False) == pytest.approx(expected)
    # rouge-score's own tokenizer sees no Chinese: the reason for the character tokenizer
    assert scorer.score("北京欢迎您", "北京欢迎你")["rouge1"].fmeasure == 0.0


# ----------------------------------------------------------------------------------------------------
# Exact match, character accuracy


def test_exact_match() -> None:
    assert exact_match(["花瓶", "花瓶 ", "\n花瓶", "花瓶。", "瓶"], ["花瓶"] * 5) == 0.6
    assert exact_match(["a"], ["a"]) == 1.0 and exact_match(["A"], ["a"]) == 0.0


def test_char_accuracy() -> None:
    # 3 of 3, then 1 of 4 (国 is not 國; 家 matches; 主席 missing): 4 of 7 reference characters
    assert char_accuracy(["聯合國", "國家"], ["聯合國", "国家主席"]) == pytest.approx(4 / 7)
    # characters past the reference's end are ignored; an insertion shifts the rest
    assert char_accuracy(["國家主席們"], ["國家主席"]) == 1.0
    assert char_accuracy(["X國家"], ["國家"]) == 0.0
    assert char_accuracy([" 國家 "], ["國家"]) == 1.0
    # micro: the long reference weighs more than the short one
    assert char_accuracy(["ab", "x"], ["ab", "yzzz"]) == pytest.approx(2 / 6)
    assert char_accuracy(["", ""], ["", " "]) == 1.0 and char_accuracy(["a"], [""]) == 0.0


@pytest.mark.parametrize("fn", [chrf, bleu, exact_match, char_accuracy, rouge])
def test_bad_inputs(fn: object) -> None:
    with pytest.raises(DataError, match="expected one reference per prediction, found 2 predictions and 1"):
        fn(["a", "b"], ["a"])  # type: ignore[operator]
    with pytest.raises(DataError, match="preds: expected at least one prediction, found none"):
        fn([], [])  # type: ignore[operator]
    with pytest.raises(DataError, match=r"refs: expected a list of strings .*found a string"):
        fn(["a"], "a")  # type: ignore[operator]
    with pytest.raises(DataError, match=r"preds\[1\]: expected a string, found NoneType"):
        fn(["a", None], ["a", "b"])  # type: ignore[operator]


def test_missing_packages_are_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sacrebleu", None)  # import raises ImportError
    with pytest.raises(ConfigError, match="sacrebleu package, which is not installed; install it with: pip"):
        chrf(["a"], ["a"])
    with pytest.raises(ConfigError, match="sacrebleu"):
        score_generations("翻译", ["a"], ["a"])
    assert exact_match(["a"], ["a"]) == 1.0  # needs neither
    monkeypatch.setitem(sys.modules, "rouge_score", None)
    with pytest.raises(ConfigError, match="rouge-score package, which is not installed; install it with: pip"):
        rouge(["a"], ["a"])


# ----------------------------------------------------------------------------------------------------
# Parsers


@pytest.mark.parametrize(("text", "label"), [
    ("正面", "正面"), ("负面", "负面"), (" 正面。\n", "正面"), ("情感：负面", "负面"), ("答案是正面的。", "正面"),
    ("这条评论是负面的", "负面"), ("**正面**", "正面"), ("正面正面", "正面"),
    # a negated label votes for the other one
    ("不是正面", "负面"), ("这条评论不是负面的", "正面"), ("并非负面", "正面"), ("并不是很正面", "负面"),
    ("非正面", "负面"), ("不是正面，是负面", "负面"),
    # no vote, or votes for both
    ("正面还是负面？", None), ("正面，负面", None), ("不是正面，也是正面", None), ("不知道", None), ("", None),
    ("积极", None), ("positive", None),
    # 非常 is no negation
    ("非常正面", "正面"),
])
def test_parse_sentiment(text: str, label: str | None) -> None:
    assert parse_sentiment(text) == label


def test_parse_entities_reads_the_builder_format() -> None:
    assert parse_entities("人名：江泽民、李鹏；地名：北京；机构名：无") == {
        ("PER", "江泽民"), ("PER", "李鹏"), ("LOC", "北京")}
    assert parse_entities("人名：无；地名：无；机构名：无") == set()
    # 无 alone is none, but a name may start with it
    assert parse_entities("人名：厉无畏；地名：无锡、无棣县；机构名：无") == {
        ("PER", "厉无畏"), ("LOC", "无锡"), ("LOC", "无棣县")}
    rng = random.Random(0)
    names = ["张三", "李四", "北京", "新华社", "无锡", "中共中央", "克林顿", "欧阳海", "联合国", "香港特别行政区"]
    for _ in range(200):
        gold = {(rng.choice(list(ENTITY_LABELS)), rng.choice(names)) for _ in range(rng.randrange(6))}
        assert parse_entities(format_entities(sorted(gold))) == gold


@pytest.mark.parametrize(("text", "entities"), [
    ("人名: 张三, 李四; 地名: 北京; 机构名: 无", {("PER", "张三"), ("PER", "李四"), ("LOC", "北京")}),
    ("人名：张三\n地名：北京\n机构名：新华社", {("PER", "张三"), ("LOC", "北京"), ("ORG", "新华社")}),
    ("机构名：新华社；人名：张三", {("ORG", "新华社"), ("PER", "张三")}),  # any order, a type missing
    ("地名：北京，上海。", {("LOC", "北京"), ("LOC", "上海")}),
    ("好的。人名：张三；地名：没有", {("PER", "张三")}),  # text before the first label
    ("人名：张三；地名：北京\n以上是全部实体。", {("PER", "张三"), ("LOC", "北京")}),  # a remark on its own line
    ("人名：\n张三", {("PER", "张三")}),
    ("人名：张三、张三", {("PER", "张三")}),
    ("没有实体", set()), ("", set()), ("张三、北京", set()),
    ("中国人名：张三", set()),  # a label must start the answer or follow a separator
])
def test_parse_entities_tolerates_variations(text: str, entities: set[tuple[str, str]]) -> None:
    assert parse_entities(text) == entities


def test_parsers_reject_non_strings() -> None:
    with pytest.raises(DataError, match="expected a string"):
        parse_sentiment(None)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="expected a string"):
        parse_entities(3)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------
# Per task


def test_score_sentiment() -> None:
    preds = ["正面", "情感：负面。", "不是正面", "我不确定", "正面"]
    refs = ["正面", "负面", "负面", "正面", "负面"]
    # in format: "正面" twice (情感：负面。 and 不是正面 are read, but not written as the answers are)
    expected = {"accuracy": 3 / 5, "parsable": 4 / 5, "format": 2 / 5}
    assert score_generations("情感判断", preds, refs) == expected
    assert score_generations("reviews-zh", preds, refs) == expected
    with pytest.raises(DataError, match=r"refs\[1\]: expected a sentiment answer \(正面 or 负面\), found '好'"):
        score_generations("情感判断", ["正面", "正面"], ["正面", "好"])


def test_score_entities_by_hand() -> None:
    preds = ["人名：张三；地名：北京、上海；机构名：无", "人名：无；地名：无；机构名：新华社", "随便说说"]
    refs = ["人名：张三、李四；地名：北京；机构名：无", "人名：无；地名：无；机构名：新华社", "人名：王五；地名：无；机构名：无"]
    # predicted: 张三, 北京, 上海, 新华社 (4); true: 张三, 李四, 北京, 新华社, 王五 (5); correct: 张三, 北京, 新华社
    scores = score_generations("实体识别", preds, refs)
    assert scores == pytest.approx({"precision": 3 / 4, "recall": 3 / 5, "f1": 2 * 3 / (4 + 5), "format": 2 / 3})
    # the type must match too; a section alone is read but is out of format
    assert score_generations("实体识别", ["地名：张三"], ["人名：张三"]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0,
                                                                    "format": 0.0}
    none = "人名：无；地名：无；机构名：无"
    assert score_generations("peoples-daily-ner", [none], [none]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0,
                                                                      "format": 1.0}


@pytest.mark.parametrize(("task", "answer", "ok"), [
    ("情感判断", "正面", True), ("情感判断", " 负面。", True), ("情感判断", "正面的", False), ("情感判断", "", False),
    ("实体识别", "人名：江泽民、李鹏；地名：北京；机构名：无", True), ("实体识别", "人名：无；地名：无；机构名：无", True),
    ("实体识别", "地名：北京；人名：无；机构名：无", False),  # out of order
    ("实体识别", "人名：江泽民，李鹏；地名：北京；机构名：无", False),  # ， not 、
    ("实体识别", "人名：；地名：北京；机构名：无", False), ("实体识别", "人名：江泽民", False),
    ("转繁体", "邁向新世紀", True), ("转繁体", "邁向\n新世紀", False), ("转繁体", "", False),
    ("转繁体", "人名：无；地名：无；机构名：无", False), ("翻译", "花瓶", True), ("翻译", "vase", False),
    ("cedict-en-zh", "花瓶", True),
])
def test_answer_in_format(task: str, answer: str, ok: bool) -> None:
    assert answer_in_format(task, answer) is ok


def test_answer_in_format_refuses_other_tasks() -> None:
    with pytest.raises(ConfigError, match="expected one of the zh-tasks"):
        answer_in_format("摘要", "x")


def test_score_translation_and_s2t() -> None:
    preds, refs = ["花瓶", "猫咪", "狗"], ["花瓶", "猫", "犬"]
    scores = score_generations("翻译", preds, refs)
    assert scores == {"chrf": chrf(preds, refs), "bleu": bleu(preds, refs), "exact_match": 1 / 3, "format": 1.0}
    assert score_generations("cedict-en-zh", preds, refs) == scores
    scores = score_generations("转繁体", ZH_PREDS, ZH_REFS)
    assert set(scores) == {"chrf", "bleu", "exact_match", "char_accuracy", "format"}
    assert scores["exact_match"] == 0.25 and scores["chrf"] == sacrebleu.corpus_chrf(ZH_PREDS, [ZH_REFS]).score
    # 15 of 15 + (迈向充满希望的新世纪: all but 迈, 满, 纪 = 7 of 10) + (今天天气很好: 5 of 6) + (北京: 2 of 3)
    assert scores["char_accuracy"] == pytest.approx((15 + 7 + 5 + 2) / (15 + 10 + 6 + 3))
    assert score_generations("s2t", ZH_PREDS, ZH_REFS) == scores


def test_score_other_tasks() -> None:
    scores = score_generations(None, EN_PREDS, EN_REFS)
    assert scores == pytest.approx({
        "chrf": chrf(EN_PREDS, EN_REFS), "bleu": bleu(EN_PREDS, EN_REFS, chinese=False),
        "rougeL": rouge(EN_PREDS, EN_REFS, chinese=False)["rougeL"], "exact_match": 0.0})
    scores = score_generations("摘要", ZH_PREDS, ZH_REFS)
    assert scores["bleu"] == bleu(ZH_PREDS, ZH_REFS, chinese=True)
    assert scores["rougeL"] == pytest.approx(rouge(ZH_PREDS, ZH_REFS)["rougeL"]) and scores["exact_match"] == 0.25
    with pytest.raises(ConfigError, match="task: expected a task name or None, found 3"):
        score_generations(3, ["a"], ["a"])  # type: ignore[arg-type]


def test_module_exports() -> None:
    assert set(generation.__all__) == {"answer_in_format", "bleu", "char_accuracy", "chrf", "exact_match", "headline_score",
                                       "parse_entities",
                                       "parse_sentiment", "rouge", "score_generations"}

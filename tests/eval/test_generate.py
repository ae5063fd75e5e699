"""Scoring by generation: how long an answer may grow when the caller does not say."""

from __future__ import annotations

import pytest

from duplexlm.config import Seq2SeqConfig
from duplexlm.data.gen_tasks import PairExample
from duplexlm.eval.generate import generate_for
from duplexlm.models.seq2seq import Seq2Seq
from duplexlm.tokenizer import train_tokenizer

TEXTS = ["我们发展经济，头发很长。", "东方红，太阳升"] * 10


@pytest.fixture(scope="module")
def t5_and_tokenizer():
    tok = train_tokenizer(TEXTS, "bpe", vocab_size=300, num_sentinels=0, cjk_chars=True)
    model = Seq2Seq(Seq2SeqConfig(vocab_size=tok.vocab_size, d_model=32, head_dim=8, d_ff=64, n_layer=1, n_head=4,
                                  eos_token_id=tok.eos_token_id, pad_token_id=0)).eval()
    return model, tok


def _limits(monkeypatch, model, tok, examples, **kwargs) -> list[int]:
    from duplexlm.infer.engine import Engine

    seen: list[int] = []

    def record(self, prompts, params):  # the engine's answer does not matter here, only what it was asked
        seen.extend(p.max_new_tokens for p in params)
        return [type("Done", (), {"text": ""})() for _ in prompts]

    monkeypatch.setattr(Engine, "generate", record)
    generate_for(model, tok, examples, **kwargs)
    return seen


def test_a_pairs_answer_may_grow_to_twice_its_source_by_default(t5_and_tokenizer, monkeypatch):
    """A conversion as long as its source must never be cut: without max_new_tokens each pair gets
    twice its source's tokens plus 16 (a 100-character sentence got 64 before, cut mid-sentence)."""
    model, tok = t5_and_tokenizer
    long = "我们发展经济" * 17  # 102 characters, one token each
    examples = [PairExample(long, long, "转繁体", "a"), PairExample("东方红", "東方紅", "转繁体", "b")]
    n = len(tok.encode(long, add_special_tokens=False))
    assert n >= 100
    assert _limits(monkeypatch, model, tok, examples, max_new_tokens=None) == [2 * n + 16, 2 * 3 + 16]
    assert _limits(monkeypatch, model, tok, examples, max_new_tokens=40)[-2:] == [40, 40]  # said: kept


def test_several_tasks_are_scored_each_and_by_the_mean_of_their_headlines(monkeypatch):
    """Examples of several zh-tasks: each task's scores under its name, the metrics they share averaged,
    and ``task_mean`` (what picks a multi-task checkpoint): accuracy, entity F1 and chrF / 100 averaged,
    so that a drop in sentiment counts as much as one in conversion."""
    import duplexlm.eval.generate as gen
    from duplexlm.data.gen_tasks import ChatExample
    from duplexlm.scores.text import chrf

    def chat(task, prompt, answer):
        return ChatExample(messages=({"role": "user", "content": prompt}, {"role": "assistant", "content": answer}),
                           task=task)

    examples = [chat("情感判断", "这本书很好", "正面"), chat("情感判断", "太差了", "负面"),
                chat("转繁体", "头发很长", "頭髮很長"), chat("实体识别", "江泽民在北京",
                                                       "人名：江泽民；地名：北京；机构名：无")]
    answers = ["正面", "正面", "頭發很長", "人名：江泽民；地名：无；机构名：无"]
    monkeypatch.setattr(gen, "generate_for", lambda model, tok, exs, **kw: answers)
    scores, records = gen.score_examples(None, None, examples)
    assert scores["情感判断_accuracy"] == 0.5 and scores["实体识别_f1"] == pytest.approx(2 / 3)
    s2t = chrf(["頭發很長"], ["頭髮很長"])
    assert scores["转繁体_chrf"] == pytest.approx(s2t) and 0 < s2t < 100
    assert scores["task_mean"] == pytest.approx((0.5 + 2 / 3 + s2t / 100) / 3)
    assert [r["prediction"] for r in records] == answers

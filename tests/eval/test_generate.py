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

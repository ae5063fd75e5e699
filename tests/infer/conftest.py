"""Fixtures shared by the engine's tests and its command-line tests."""

from __future__ import annotations

import pytest
import torch

from duplexlm.tokenizer import Tokenizer, train_tokenizer

LINES = ["我爱北京天安门", "北京欢迎你", "今天天气很好", "你好，世界", "hello world", "the cat sat on the mat",
         "表情 🙂 和 👍 都很好", "emoji 🎉 party"] * 20


@pytest.fixture(scope="module")
def one_thread():
    # models this small run fastest on one thread, and on a busy 2-core machine much faster than on two
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    # a small vocabulary, so that most Chinese characters and every emoji take several tokens
    return train_tokenizer(LINES, "bpe", vocab_size=300, num_sentinels=2)

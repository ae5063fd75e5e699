"""Text into examples (duplexlm.data.examples): sub-word alignment of tags, truncation that keeps the
special tokens, every character of the NER data keeping its label."""

import pytest

from duplexlm.data.examples import IGNORE_INDEX, align_labels, encode_examples, encode_texts
from duplexlm.data.tasks import Example, load_task_data
from duplexlm.tokenizer import train_tokenizer


def test_align_labels() -> None:
    assert align_labels([None, 0, 0, 1, 2, 2, 2, None], [4, 5, 6]) == [-100, 4, -100, 5, 6, -100, -100, -100]
    assert align_labels([0, 1], [1, 2], ignore_index=-1) == [1, 2]
    assert align_labels([], []) == []
    with pytest.raises(ValueError, match="word id 2 is out of range for 2 word labels"):
        align_labels([0, 2], [1, 1])


@pytest.fixture(scope="module")
def tokenizers() -> dict:
    corpus = ["the quick brown fox jumps over the lazy dog", "hello world, hello there, new york",
              "中共中央总书记、国家主席江泽民发表新年讲话", "江泽民在北京"] * 20
    return {"wordpiece": train_tokenizer(corpus, "wordpiece", vocab_size=300, num_sentinels=0),
            "bpe": train_tokenizer(corpus, "bpe", vocab_size=400, num_sentinels=0)}


NAMES = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def _tag(tok, words, tags, max_length=32):
    ids, labels = encode_examples([Example(tuple(words), tuple(tags))], tok, "tag", max_length, NAMES)
    return ids[0], labels[0]


def test_tags_align_to_wordpiece_tokens(tokenizers: dict) -> None:
    tok = tokenizers["wordpiece"]
    ids, labels = _tag(tok, "江泽民在北京", ["B-PER", "I-PER", "I-PER", "O", "B-LOC", "I-LOC"])
    assert [tok.id_to_token(i) for i in ids] == ["[CLS]", *"江泽民在北京", "[SEP]"]
    assert labels == [-100, 1, 2, 2, 0, 3, 4, -100]
    ids, labels = _tag(tok, ["hello", "worlds"], ["B-LOC", "I-LOC"])  # 'worlds' → world ##s
    assert [tok.id_to_token(i) for i in ids] == ["[CLS]", "hello", "world", "##s", "[SEP]"]
    assert labels == [-100, 3, 4, -100, -100]  # a word's later pieces carry no tag
    # truncation keeps the closing [SEP]
    ids, labels = _tag(tok, "江泽民在北京", ["B-PER", "I-PER", "I-PER", "O", "B-LOC", "I-LOC"], max_length=4)
    assert [tok.id_to_token(i) for i in ids] == ["[CLS]", "江", "泽", "[SEP]"]
    assert labels == [-100, 1, 2, -100]


def test_tags_align_to_byte_level_bpe_tokens(tokenizers: dict) -> None:
    tok = tokenizers["bpe"]
    # Chinese characters: each its own word, no special tokens, several bytes for a rarer character
    ids, labels = _tag(tok, "江泽民", ["B-PER", "I-PER", "I-PER"])
    assert tok.decode(ids) == "江泽民"
    assert [lab for lab in labels if lab != IGNORE_INDEX] == [1, 2, 2]
    assert len(ids) == len(labels) >= 3
    ids, labels = _tag(tok, "江泽民在北京", ["O"] * 6, max_length=2)  # no special tokens to keep
    assert len(ids) == 2 and labels[0] == 0


def test_encode_texts_truncates_and_never_pads(tokenizers: dict) -> None:
    tok = tokenizers["wordpiece"]
    short, long = encode_texts(tok, ["江泽民", "中共中央总书记、国家主席江泽民发表新年讲话"], 6)
    assert [tok.id_to_token(i) for i in short.ids] == ["[CLS]", "江", "泽", "民", "[SEP]"]
    assert len(long.ids) == 6 and tok.id_to_token(long.ids[-1]) == "[SEP]"


def test_every_character_of_the_ner_data_keeps_its_label(tokenizers: dict) -> None:
    ner = load_task_data("tag", "peoples-daily-ner")
    names = ner.label_names
    for kind, tok in tokenizers.items():
        examples = ner.splits["test"][:20]
        ids, labels = encode_examples(examples, tok, "tag", 10_000, names)
        for e, row_ids, row in zip(examples, ids, labels):
            assert [lab for lab in row if lab != IGNORE_INDEX] == [names.index(t) for t in e.label], kind
            assert len(row_ids) == len(row)

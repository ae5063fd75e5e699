"""Cleaning, hashes, MinHash and the LSH index, on their own."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from duplexlm.data import MinHasher, NearDuplicateIndex, clean_text
from duplexlm.data.clean import split_key, text_digest
from duplexlm.data.dedup import estimated_jaccard, lsh_bands, shingle_hashes


@pytest.mark.parametrize(("raw", "clean"), [
    ("  Ｈｅｌｌｏ，　ｗｏｒｌｄ！ ", "Hello, world!"),  # NFKC: full-width forms and ideographic space
    ("zero\u200bwidth\u00adsoft\ufeffbom", "zerowidthsoftbom"),  # format characters (Cf)
    ("bell\x07 nul\x00 esc\x1b[0m", "bell nul esc[0m"),  # control characters (Cc)
    ("tabs\t\tand\u00a0\u2003spaces\nand lines", "tabs and spaces and lines"),
    ("ﬁ ① ㎏", "fi 1 kg"),  # compatibility decompositions
    ("\u200b \t", ""),
])
def test_clean_text(raw: str, clean: str) -> None:
    assert clean_text(raw) == clean


def test_clean_text_keeps_paragraphs_when_asked() -> None:
    raw = "  first  line \r\nsecond\tline\r\n\r\n\r\n\n  next paragraph\u200b \n"
    assert clean_text(raw, keep_newlines=True) == "first line\nsecond line\n\nnext paragraph"
    assert clean_text(raw) == "first line second line next paragraph"


def test_hashes_are_stable() -> None:
    assert text_digest("héllo") == hashlib.blake2b("héllo".encode(), digest_size=16).digest()
    assert split_key("héllo", 1234) == split_key("héllo", 1234)
    keys = [split_key(f"doc {i}", 7) / 2**64 for i in range(2000)]
    assert 0.45 < float(np.mean(keys)) < 0.55  # spread evenly over [0, 1)


def test_minhash_estimates_jaccard() -> None:
    rng = np.random.default_rng(0)
    mh = MinHasher(num_perm=128)
    base = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz "), 400))
    assert estimated_jaccard(mh.signature(base), mh.signature(base)) == 1.0
    for cut in (40, 120, 200):
        other = base[:cut] + "#" * 60 + base[cut + 60:]
        a, b = set(shingle_hashes(base)), set(shingle_hashes(other))
        true = len(a & b) / len(a | b)
        assert abs(estimated_jaccard(mh.signature(base), mh.signature(other)) - true) < 0.12
    unrelated = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz "), 400))
    assert estimated_jaccard(mh.signature(base), mh.signature(unrelated)) < 0.1
    # batched and single signatures agree, short texts included
    texts = [base, "ab", "", unrelated, "x" * 5000]
    assert np.array_equal(mh.signatures(texts), np.stack([mh.signature(t) for t in texts]))


def test_lsh_bands_put_the_threshold_on_the_curve() -> None:
    for threshold in (0.5, 0.8, 0.9):
        bands, rows = lsh_bands(128, threshold)
        assert bands * rows <= 128
        assert abs((1 / bands) ** (1 / rows) - threshold) < 0.1  # the S-curve's steep point


def test_near_duplicate_index() -> None:
    mh = MinHasher()
    rng = np.random.default_rng(1)
    text = "".join(chr(c) for c in rng.integers(0x4E00, 0x4E00 + 500, 200))  # 200 random characters
    index = NearDuplicateIndex(threshold=0.8)
    assert index.add_if_new(mh.signature(text))
    assert not index.add_if_new(mh.signature(text[:100] + "X" + text[101:]))  # one character differs
    assert index.add_if_new(mh.signature("完全不同的另一段文字，讲的是别的事情。" * 5))
    assert len(index) == 2
    with pytest.raises(ValueError, match="near_dedup_threshold"):
        NearDuplicateIndex(threshold=1.5)

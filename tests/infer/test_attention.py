"""Attention maps of every family (encoder, GPT-2 and Llama decoders, T5 cross-attention, RNN attention
pooling) on tiny random models: shapes, rows that sum to 1, causality, padding, readable Chinese token
labels, the PNG heat map, and named errors for bad arguments."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib
import pytest
import torch
from torch import nn

from duplexlm import presets
from duplexlm.errors import ConfigError
from duplexlm.infer import attention as attention_module
from duplexlm.infer.attention import (
    AttentionMaps,
    attention_maps,
    attention_weights,
    plot_attention,
    token_labels,
)
from duplexlm.models import build_model
from duplexlm.tokenizer import Tokenizer, train_tokenizer

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LINES = ["我爱北京天安门", "北京欢迎你", "今天天气很好", "你好，世界", "hello world", "the cat sat on the mat"] * 20
TEXT = "北京欢迎你，今天天气很好"
MOJIBAKE = set("ÃÂæçåäéèĠĪĳ")  # what byte-level pieces of Chinese look like when shown raw


@pytest.fixture(autouse=True)
def _own_rcparams():
    # setup_cjk_font edits rcParams; keep each test's edits to itself
    with matplotlib.rc_context():
        yield


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return train_tokenizer(LINES, "bpe", vocab_size=360, num_sentinels=4)


@pytest.fixture(scope="module")
def wordpiece() -> Tokenizer:
    return train_tokenizer(LINES, "wordpiece", vocab_size=200, num_sentinels=4)


@pytest.fixture(scope="module")
def models(bpe: Tokenizer, wordpiece: Tokenizer) -> dict[str, tuple[nn.Module, Tokenizer]]:
    """One tiny random model per family (and both decoder flavours), from the presets, made small."""
    torch.manual_seed(0)
    v = bpe.vocab_size
    configs = {
        "bert": (presets.bert_tiny().replace(vocab_size=wordpiece.vocab_size, max_seq_len=64, d_model=32,
                                             n_layer=2, n_head=2, d_ff=None), wordpiece),
        "gpt2": (presets.gpt2_tiny().replace(vocab_size=v, max_seq_len=64, d_model=32, n_layer=2, n_head=4,
                                             head_dim=None, d_ff=None), bpe),
        "llama": (presets.llama_tiny().replace(vocab_size=v, max_seq_len=64, d_model=32, n_layer=3, n_head=4,
                                               n_kv_head=2, head_dim=None, d_ff=64), bpe),
        "t5": (presets.t5_tiny().replace(vocab_size=v, d_model=32, head_dim=8, d_ff=64, n_layer=2,
                                         n_decoder_layer=3, n_head=4), bpe),
        "lstm": (presets.lstm_tiny().replace(vocab_size=v, d_embed=16, d_hidden=16), bpe),
    }
    return {name: (build_model(cfg).eval(), tok) for name, (cfg, tok) in configs.items()}


def _n_tokens(tok: Tokenizer, text: str) -> int:
    return len(tok.encode(text))


# ----------------------------------------------------------------------------------------------------
# Shapes and the properties of attention weights


@pytest.mark.parametrize(("name", "kind", "layers", "heads"), [
    ("bert", "self", 2, 2), ("gpt2", "self", 2, 4), ("llama", "self", 3, 4), ("t5", "cross", 3, 4),
    ("lstm", "pooling", 1, 1),
])
def test_every_family_gives_maps_of_the_right_shape(models, name: str, kind: str, layers: int, heads: int) -> None:
    model, tok = models[name]
    maps = attention_maps(model, tok, TEXT)
    T = _n_tokens(tok, TEXT)
    Tq = {"self": T, "cross": 1, "pooling": 1}[kind]  # T5 without a target: the decoder start token only
    assert isinstance(maps, AttentionMaps)
    assert (maps.kind, maps.family) == (kind, model.config.family)
    assert tuple(maps.layers.shape) == (layers, heads, Tq, T)
    assert maps.layers.dtype == torch.float32 and maps.layers.device.type == "cpu"
    assert len(maps.tokens) == Tq and len(maps.key_tokens) == T
    assert maps.key_token_ids == tok.encode(TEXT)
    if kind == "self":
        assert maps.tokens == maps.key_tokens
    assert torch.isfinite(maps.layers).all() and (maps.layers >= 0).all()


@pytest.mark.parametrize("name", ["bert", "gpt2", "llama", "t5", "lstm"])
def test_each_row_sums_to_one(models, name: str) -> None:
    model, tok = models[name]
    maps = attention_maps(model, tok, TEXT, target="今天很好" if name == "t5" else None)
    sums = maps.layers.sum(-1)
    torch.testing.assert_close(sums, torch.ones_like(sums), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_decoders_are_causal(models, name: str) -> None:
    model, tok = models[name]
    w = attention_maps(model, tok, TEXT).layers  # (L, nh, T, T)
    T = w.shape[-1]
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    assert w[..., future].abs().max().item() == 0.0  # exactly zero above the diagonal
    assert (w[..., ~future] > 0).all()  # and something on every allowed key
    assert w[..., 0, 0].eq(1.0).all()  # the first token can only look at itself


def test_the_encoder_sees_both_ways(models) -> None:
    model, tok = models["bert"]
    w = attention_maps(model, tok, TEXT).layers
    T = w.shape[-1]
    assert (w[..., torch.ones(T, T, dtype=torch.bool).triu(1)] > 0).all()


def test_t5_cross_attention_over_the_source_with_a_target(models, bpe: Tokenizer) -> None:
    model, _ = models["t5"]
    maps = attention_maps(model, bpe, TEXT, target="你好，世界")
    target_ids = bpe.encode("你好，世界")
    assert maps.kind == "cross"
    assert maps.token_ids == [model.config.decoder_start_token_id, *target_ids]
    assert maps.tokens[0] == bpe.id_to_token(model.config.decoder_start_token_id)  # [PAD], T5's start token
    assert maps.tokens[1:] == token_labels(bpe, target_ids)
    assert maps.key_tokens == token_labels(bpe, bpe.encode(TEXT))
    assert tuple(maps.layers.shape) == (3, 4, 1 + len(target_ids), _n_tokens(bpe, TEXT))
    # the first query row is the same with or without the target: the decoder is causal
    alone = attention_maps(model, bpe, TEXT)
    torch.testing.assert_close(maps.layers[:, :, :1], alone.layers, atol=1e-6, rtol=0)


def _batch(tok: Tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tok(texts)
    return enc["input_ids"], enc["attention_mask"]


@pytest.mark.parametrize("name", ["bert", "gpt2", "llama", "t5", "lstm"])
def test_padding_is_not_attended(models, name: str) -> None:
    model, tok = models[name]
    long, short = TEXT, "北京"
    ids, mask = _batch(tok, [long, short])
    n = int(mask[1].sum())
    assert n < ids.shape[1]  # the short row is right-padded
    w, kind = attention_weights(model, ids, mask)  # (L, B, nh, Tq, Tk)
    assert w[:, 1, ..., n:].abs().max().item() == 0.0  # no query looks at a padded key
    # and the real tokens' weights are those of the short text alone
    alone, _ = attention_weights(model, ids[1:, :n], mask[1:, :n])
    rows = slice(None) if kind != "self" else slice(0, n)
    torch.testing.assert_close(w[:, 1:, :, rows, :n], alone, atol=1e-5, rtol=0)


def test_runs_in_eval_mode_and_restores_the_mode(models) -> None:
    model, tok = models["bert"]  # dropout 0.1 on attention: train mode would change the weights
    model.train()
    try:
        first = attention_maps(model, tok, TEXT).layers
        assert model.training
        torch.testing.assert_close(attention_maps(model, tok, TEXT).layers, first, atol=0, rtol=0)
    finally:
        model.eval()


# ----------------------------------------------------------------------------------------------------
# Token labels


def test_byte_level_labels_are_readable_chinese(bpe: Tokenizer) -> None:
    ids = bpe.encode(TEXT)
    raw = [bpe.id_to_token(i) for i in ids]
    assert any(MOJIBAKE & set(r) for r in raw)  # what a naive label would show
    labels = token_labels(bpe, ids)
    assert len(labels) == len(ids)
    assert not any(MOJIBAKE & set(label) for label in labels)
    assert "".join(labels) == TEXT  # every character of the corpus is merged whole
    assert all(any("\u4e00" <= ch <= "\u9fff" or ch == "，" for ch in label) for label in labels)


def test_a_character_split_over_byte_pieces_is_named_in_each_piece() -> None:
    tok = train_tokenizer(["中国人", "hello"], "bpe", vocab_size=264, num_sentinels=0)  # the 256 bytes only
    ids = tok.encode("a 中!")
    assert len(ids) == 6
    assert token_labels(tok, ids) == ["a", " ", "中(1/3)", "中(2/3)", "中(3/3)", "!"]
    # a lone continuation byte is not text: shown as its value
    assert token_labels(tok, [tok.token_to_id("Ģ")]) == ["<0x80>"]  # GPT-2's stand-in for byte 0x80


def test_special_and_wordpiece_tokens_keep_their_spelling(wordpiece: Tokenizer, bpe: Tokenizer) -> None:
    assert token_labels(wordpiece, wordpiece.encode("北京 hello"))[:3] == ["[CLS]", "北", "京"]
    assert token_labels(wordpiece, wordpiece.encode("北京"))[-1] == "[SEP]"
    ids = [bpe.eos_token_id, *bpe.encode("北京"), bpe.eos_token_id]
    assert token_labels(bpe, ids) == ["<|endoftext|>", "北京", "<|endoftext|>"]


# ----------------------------------------------------------------------------------------------------
# The PNG


def _capture_ticks(monkeypatch) -> list[dict[str, object]]:
    """Record each figure's tick labels and title as plot_attention saves it."""
    seen: list[dict[str, object]] = []
    save = attention_module.save_figure

    def recording(fig, path, dpi, font):
        ax = fig.axes[0]
        seen.append({"x": [t.get_text() for t in ax.get_xticklabels()],
                     "y": [t.get_text() for t in ax.get_yticklabels()], "title": ax.get_title()})
        return save(fig, path, dpi, font)

    monkeypatch.setattr(attention_module, "save_figure", recording)
    return seen


@pytest.mark.parametrize("name", ["bert", "gpt2", "llama", "t5", "lstm"])
def test_the_png_is_written_for_each_family(models, name: str, tmp_path: Path, monkeypatch) -> None:
    model, tok = models[name]
    seen = _capture_ticks(monkeypatch)
    maps = attention_maps(model, tok, TEXT, target="你好" if name == "t5" else None)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from")  # a machine without CJK fonts
        out = plot_attention(maps, tmp_path / "sub" / f"{name}.png")
        plot_attention(maps, tmp_path / f"{name}-head0.png", layer=0, head=0)
    assert out == tmp_path / "sub" / f"{name}.png"
    for path in (out, tmp_path / f"{name}-head0.png"):
        data = path.read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 2000
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(["sub", f"{name}.png", f"{name}-head0.png"])

    mean, head0 = seen
    assert mean["x"] == maps.key_tokens
    title = str(mean["title"])
    assert model.config.family in title
    if name == "lstm":
        assert "pooling" in title and mean["y"] == ["pooling"]
    else:
        assert mean["y"] == maps.tokens
        assert f"layer {maps.n_layer - 1} of {maps.n_layer}" in title
        assert f"mean of {maps.n_head} heads" in title
        assert ("cross-attention" if name == "t5" else "self-attention") in title
        assert f"layer 0 of {maps.n_layer}" in str(head0["title"]) and "head 0 of" in str(head0["title"])


def test_chinese_tokens_draw_without_missing_glyphs(models, tmp_path: Path, monkeypatch) -> None:
    from duplexlm.plots import setup_cjk_font

    if setup_cjk_font() is None:
        pytest.skip("no CJK font on this machine (apt-get install fonts-wqy-microhei)")
    seen = _capture_ticks(monkeypatch)
    model, tok = models["gpt2"]
    maps = attention_maps(model, tok, "北京 hello\n你好")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot_attention(maps, tmp_path / "zh.png")
    assert [str(w.message) for w in caught if "missing from" in str(w.message)] == []
    labels = seen[0]["x"]
    assert "北京" in labels and "你好" in labels and "\\n" in labels  # the newline shown escaped
    assert "·" in labels  # a lone space is visible


# ----------------------------------------------------------------------------------------------------
# Errors


def _rnn_mean_pooling(bpe: Tokenizer) -> nn.Module:
    return build_model(presets.lstm_tiny().replace(vocab_size=bpe.vocab_size, d_embed=8, d_hidden=8, pooling="mean"))


@pytest.mark.parametrize(("call", "words"), [
    (lambda m, d: plot_attention(attention_maps(*m["gpt2"], TEXT), d / "x.png", layer=2),
     ["layer", "[-2, 1]", "2 layers", "found 2"]),
    (lambda m, d: plot_attention(attention_maps(*m["gpt2"], TEXT), d / "x.png", layer=-3),
     ["layer", "[-2, 1]", "found -3"]),
    (lambda m, d: plot_attention(attention_maps(*m["llama"], TEXT), d / "x.png", head=4),
     ["head", "[-4, 3]", "4 heads", "found 4"]),
    (lambda m, d: plot_attention(attention_maps(*m["llama"], TEXT), d / "x.png", layer=True),
     ["layer", "found True"]),
    (lambda m, d: plot_attention(attention_maps(*m["lstm"], TEXT), d / "x.png", head=1),
     ["head", "[-1, 0]", "found 1"]),
    (lambda m, d: plot_attention(attention_maps(*m["bert"], TEXT), d / "x.jpg"), ["path", ".png", "x.jpg"]),
    (lambda m, d: attention_maps(*m["bert"], ""), ["text", "non-empty", "found ''"]),
    (lambda m, d: attention_maps(*m["gpt2"], "  \n"), ["text", "non-empty"]),
    (lambda m, d: attention_maps(*m["t5"], TEXT, target=""), ["target", "non-empty", "found ''"]),
    (lambda m, d: attention_maps(*m["gpt2"], TEXT, target="你好"), ["target", "seq2seq", "decoder model"]),
    (lambda m, d: attention_maps(m["gpt2"][0], None, TEXT), ["tokenizer", "found None"]),
    (lambda m, d: attention_maps(*m["bert"], "北京" * 100), ["text", "max_seq_len is 64", "at most 64"]),
    (lambda m, d: attention_maps(_rnn_mean_pooling(m["lstm"][1]), m["lstm"][1], TEXT),
     ["model", "pooling='attention'", "found pooling='mean'"]),
    (lambda m, d: attention_weights(_rnn_mean_pooling(m["lstm"][1]), torch.tensor([[5, 6]])),
     ["model", "pooling='attention'", "found pooling='mean'"]),
    (lambda m, d: attention_maps(nn.Linear(2, 2), m["gpt2"][1], TEXT), ["model", "Linear"]),
])
def test_bad_arguments_raise_named_config_errors(models, tmp_path: Path, call, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        call(models, tmp_path)
    for w in words:
        assert w in str(info.value), (w, str(info.value))
    assert list(tmp_path.iterdir()) == []  # nothing half-written

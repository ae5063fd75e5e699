"""Attention maps of any model family, and a heat map of one layer drawn as a PNG.

Every family's forward returns its attention weights when asked (``output_attentions=True``, which
switches the Transformers to the explicit-math attention path):

- encoder and decoder: self-attention, per layer ``(B, nh, T, T)`` — the decoder's is causal;
- seq2seq (T5): the decoder's cross-attention over the source, ``(B, nh, T_target, S_source)``,
  collected with a forward hook on each decoder block's ``cross_attn`` (the model's output carries
  only the decoder's self-attention);
- rnn with ``pooling='attention'``: the pooling weights ``(B, T)``, one row per text.

:func:`attention_weights` works on batches of token ids (padding included); :func:`attention_maps`
runs one text and labels both axes with readable tokens (:func:`token_labels` turns byte-level BPE
pieces back into text); :func:`plot_attention` draws one layer and head, or the mean over heads.

>>> import tempfile, pathlib
>>> from duplexlm.config import DecoderConfig
>>> from duplexlm.models import build_model
>>> from duplexlm.tokenizer import train_tokenizer
>>> tok = train_tokenizer(["我爱北京", "北京欢迎你"] * 10, "bpe", vocab_size=300, num_sentinels=0)
>>> model = build_model(DecoderConfig(vocab_size=tok.vocab_size, max_seq_len=32, d_model=32, n_layer=2,
...                                   n_head=4))
>>> maps = attention_maps(model, tok, "你好北京")  # 好 is rare here: BPE keeps its 3 bytes apart
>>> maps.kind, tuple(maps.layers.shape), maps.tokens
('self', (2, 4, 5, 5), ['你', '好(1/3)', '好(2/3)', '好(3/3)', '北京'])
>>> plot_attention(maps, pathlib.Path(tempfile.mkdtemp()) / "attn.png", layer=0, head=1).name
'attn.png'
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tokenizers import decoders
from torch import Tensor, nn

from ..errors import ConfigError
from ..plots import new_figure, png_path, save_figure, setup_cjk_font
from ..tokenizer import Tokenizer

Kind = Literal["self", "cross", "pooling"]


@dataclass
class AttentionMaps:
    """The attention of one text, every layer and head.

    ``layers`` is (L, nh, Tq, Tk) in float32 on the CPU: row ``q`` of ``layers[l, h]`` is how query
    token ``tokens[q]`` spreads its attention over ``key_tokens``. ``kind`` is ``'self'`` (keys are
    the same tokens), ``'cross'`` (T5: target tokens on the query axis, source tokens on the key
    axis) or ``'pooling'`` (RNN attention pooling: L = nh = Tq = 1, one learned query whose token
    label is ``'<pool>'``).
    """

    tokens: list[str]
    key_tokens: list[str]
    layers: Tensor  # (L, nh, Tq, Tk)
    kind: Kind
    family: str
    token_ids: list[int]
    key_token_ids: list[int]

    @property
    def n_layer(self) -> int:
        return int(self.layers.shape[0])

    @property
    def n_head(self) -> int:
        return int(self.layers.shape[1])


# ----------------------------------------------------------------------------------------------------
# Readable token labels


def _byte_alphabet() -> dict[str, int]:
    """GPT-2's byte → printable-character table, inverted: each character of a byte-level BPE piece
    back to the byte it stands for."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, n = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars)}


_BYTE_OF = _byte_alphabet()


def _is_byte_level(tokenizer: Tokenizer) -> bool:
    return isinstance(tokenizer.backend.decoder, decoders.ByteLevel)


def _utf8_chars(data: bytes) -> list[tuple[int, int, str]]:
    """(start, end, text) for each character of ``data``; a byte that starts no valid UTF-8
    sequence is a character of its own, shown as ``<0xNN>``."""
    chars, p = [], 0
    while p < len(data):
        lead = data[p]
        n = 1 if lead < 0x80 else 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else \
            4 if lead >> 3 == 0b11110 else 0
        try:
            text = data[p:p + n].decode("utf-8") if n else None
        except UnicodeDecodeError:
            text = None
        if text is None:
            chars.append((p, p + 1, f"<0x{lead:02X}>"))
            p += 1
        else:
            chars.append((p, p + n, text))
            p += n
    return chars


def _byte_run_labels(pieces: list[bytes]) -> list[str]:
    """Labels for consecutive byte-level pieces: the characters each piece's bytes belong to. A
    piece holding only some bytes of a character (byte-level BPE splits rare Chinese characters) shows
    that whole character followed by ``(k/n)``: it is part k of the n pieces sharing the character."""
    starts = [0, *itertools.accumulate(map(len, pieces))]  # piece i holds bytes starts[i]:starts[i+1]
    chars = _utf8_chars(b"".join(pieces))
    char_starts = [c[0] for c in chars]
    labels = []
    for i in range(len(pieces)):
        ts, te = starts[i], starts[i + 1]
        first = bisect.bisect_right(char_starts, ts) - 1  # the character holding the piece's first byte
        touched = chars[first:bisect.bisect_left(char_starts, te)]
        label = "".join(c[2] for c in touched)
        split = next((c for c in touched if c[0] < ts or c[1] > te), None)
        if split is not None:
            # pieces sharing the split character: from the one holding its first byte to its last
            lo = bisect.bisect_right(starts, split[0]) - 1
            hi = bisect.bisect_left(starts, split[1])
            label += f"({i - lo + 1}/{hi - lo})"
        labels.append(label)
    return labels


def token_labels(tokenizer: Tokenizer, ids: Sequence[int]) -> list[str]:
    """One readable label per token id: byte-level BPE pieces turned back into text (``'中国'`` rather
    than ``'ä¸ŃåĽ½'``, a leading space as a space), other pieces (WordPiece's ``##`` continuations,
    SentencePiece's ``▁``) and special tokens as the vocabulary spells them.

    >>> from duplexlm.tokenizer import train_tokenizer
    >>> tok = train_tokenizer(["中国人", "hello"], "bpe", vocab_size=264, num_sentinels=0)  # bytes only
    >>> token_labels(tok, tok.encode("中a"))
    ['中(1/3)', '中(2/3)', '中(3/3)', 'a']
    """
    ids = [int(i) for i in ids]
    raw = [tokenizer.id_to_token(i) for i in ids]
    if not _is_byte_level(tokenizer):
        return [r if r is not None else f"<{i}>" for i, r in zip(ids, raw)]
    added = set(tokenizer.backend.get_added_tokens_decoder()) | tokenizer.special_ids
    labels: list[str] = []
    run: list[bytes] = []
    for i, r in zip(ids, raw):
        if r is not None and i not in added and all(ch in _BYTE_OF for ch in r):
            run.append(bytes(_BYTE_OF[ch] for ch in r))
            continue
        labels += _byte_run_labels(run)
        run = []
        labels.append(r if r is not None else f"<{i}>")
    return labels + _byte_run_labels(run)


# ----------------------------------------------------------------------------------------------------
# Running the model


def _family(model: nn.Module) -> str:
    family = getattr(getattr(model, "config", None), "family", None)
    if family not in ("encoder", "decoder", "seq2seq", "rnn"):
        raise ConfigError(f"model: expected a duplexlm model (family encoder, decoder, seq2seq or rnn), "
                          f"found {type(model).__name__} with family {family!r}")
    return family


def _check_has_attention(model: nn.Module, family: str) -> None:
    pooling = getattr(model.config, "pooling", None)
    if family == "rnn" and pooling != "attention":
        raise ConfigError(f"model: an RNN has attention weights only with pooling='attention'; "
                          f"found pooling={pooling!r} (mean, max and last pooling weigh nothing)")


@torch.no_grad()
def attention_weights(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None, *,
                      decoder_input_ids: Tensor | None = None,
                      decoder_attention_mask: Tensor | None = None) -> tuple[Tensor, Kind]:
    """Run ``model`` once in eval mode (its training mode is restored after) on a batch and return
    ``(weights, kind)``: weights (L, B, nh, Tq, Tk) in float32 on the CPU.

    ``input_ids`` (B, T) with ``attention_mask`` (B, T) of 1 = real token, 0 = padding: padded keys get
    weight 0. For seq2seq, ``input_ids`` is the source and ``decoder_input_ids`` (B, Tq) the decoder's
    input (default: the decoder start token alone); the weights are the decoder's cross-attention
    over the source. For an RNN with attention pooling: (1, B, 1, 1, T).

    >>> from duplexlm.config import EncoderConfig
    >>> from duplexlm.models import build_model
    >>> model = build_model(EncoderConfig(vocab_size=50, max_seq_len=16, d_model=16, n_layer=2, n_head=2))
    >>> w, kind = attention_weights(model, torch.tensor([[5, 6, 7], [8, 9, 0]]),
    ...                             torch.tensor([[1, 1, 1], [1, 1, 0]]))
    >>> kind, tuple(w.shape), w[:, 1, :, :, 2].abs().max().item()
    ('self', (2, 2, 2, 3, 3), 0.0)
    """
    family = _family(model)
    _check_has_attention(model, family)
    if decoder_input_ids is not None and family != "seq2seq":
        raise ConfigError(f"decoder_input_ids: only an encoder-decoder (seq2seq) model has a decoder input; "
                          f"found a {family} model")
    was_training = model.training
    model.eval()
    try:
        if family == "seq2seq":
            weights, kind = _cross_attention(model, input_ids, attention_mask, decoder_input_ids,
                                             decoder_attention_mask), "cross"
        else:
            out = model(input_ids, attention_mask=attention_mask, output_attentions=True)
            if not out.attentions:
                raise ConfigError(f"model: the {family} model returned no attention weights for "
                                  "output_attentions=True")
            if family == "rnn":
                weights, kind = out.attentions[0][None, :, None, None, :], "pooling"  # (1, B, 1, 1, T)
            else:
                weights, kind = torch.stack(out.attentions), "self"  # (L, B, nh, T, T)
    finally:
        model.train(was_training)
    return weights.float().cpu(), kind  # type: ignore[return-value]


def _cross_attention(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None,
                     decoder_input_ids: Tensor | None, decoder_attention_mask: Tensor | None) -> Tensor:
    """The decoder's cross-attention weights (L, B, nh, Tq, S). Seq2Seq's output holds only the
    decoder's self-attention, so each decoder block's ``cross_attn`` is hooked: with the eager path
    (``output_attentions=True``) an attention module returns ``(output, weights)``."""
    if decoder_input_ids is None:
        start = model.config.decoder_start_token_id
        decoder_input_ids = torch.full((input_ids.shape[0], 1), start, dtype=torch.long, device=input_ids.device)
    captured: list[Tensor] = []
    handles = [block.cross_attn.register_forward_hook(lambda _m, _a, out: captured.append(out[1]))
               for block in model.decoder.blocks]
    try:
        model(input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
              decoder_attention_mask=decoder_attention_mask, output_attentions=True)
    finally:
        for h in handles:
            h.remove()
    if len(captured) != len(model.decoder.blocks) or any(w is None for w in captured):
        raise ConfigError("model: the seq2seq decoder's cross-attention returned no weights on the eager path")
    return torch.stack(captured)  # (L, B, nh, Tq, S)


def _max_positions(model: nn.Module, family: str) -> int | None:
    """The longest input the model's learned position table takes (None: no such limit)."""
    c = model.config
    if family == "encoder" or (family == "decoder" and getattr(c, "positions", None) == "learned"):
        return int(c.max_seq_len)
    return None


def _encode(tokenizer: Tokenizer, text: str, name: str) -> list[int]:
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{name}: expected a non-empty text, found {text!r}")
    # through __call__, which drops padding a tokenizer.json may add on its own (all-MiniLM pads to 128)
    enc = tokenizer([text])
    ids = enc["input_ids"][0][enc["attention_mask"][0].bool()].tolist()
    if not ids:
        raise ConfigError(f"{name}: {text!r} encodes to no tokens; expected at least one")
    return ids


def attention_maps(model: nn.Module, tokenizer: Tokenizer | None, text: str, *,
                   target: str | None = None) -> AttentionMaps:
    """The attention of ``model`` on one ``text``, every layer and head, with readable token labels.

    Encoder, decoder: self-attention over the text's tokens (with the special tokens the tokenizer
    adds, e.g. ``[CLS]``/``[SEP]``). Seq2seq: the decoder's cross-attention over ``text`` (the
    source); the decoder reads the decoder start token (T5: the pad token) followed by ``target``'s
    tokens, so query row i is the state that predicts target token i. Without ``target`` the decoder
    reads the start token only (one query row: where the first generated token looks); no text is
    generated. RNN with attention pooling: the pooling weights, one row.

    >>> from duplexlm.config import RNNConfig
    >>> from duplexlm.models import build_model
    >>> from duplexlm.tokenizer import train_tokenizer
    >>> tok = train_tokenizer(["我爱北京", "北京欢迎你"] * 10, "bpe", vocab_size=300, num_sentinels=0)
    >>> rnn = build_model(RNNConfig(vocab_size=tok.vocab_size, d_embed=8, d_hidden=8))
    >>> maps = attention_maps(rnn, tok, "我爱北京 hello")
    >>> maps.kind, tuple(maps.layers.shape), maps.tokens, maps.key_tokens
    ('pooling', (1, 1, 1, 7), ['<pool>'], ['我爱北京', ' ', 'h', 'e', 'l', 'l', 'o'])
    """
    family = _family(model)
    _check_has_attention(model, family)
    if tokenizer is None:
        raise ConfigError("tokenizer: expected the model's tokenizer (a model directory with tokenizer.json), "
                          "found None")
    if target is not None and family != "seq2seq":
        raise ConfigError(f"target: only an encoder-decoder (seq2seq) model reads a target text; found a "
                          f"{family} model (leave target out)")
    ids = _encode(tokenizer, text, "text")
    limit = _max_positions(model, family)
    if limit is not None and len(ids) > limit:
        raise ConfigError(f"text: encodes to {len(ids)} tokens; this model's max_seq_len is {limit}, expected "
                          f"at most {limit} tokens")
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)

    query_ids, key_ids = ids, ids
    decoder_input_ids = None
    if family == "seq2seq":
        query_ids = [int(model.config.decoder_start_token_id)]
        if target is not None:
            query_ids += _encode(tokenizer, target, "target")
        decoder_input_ids = torch.tensor([query_ids], dtype=torch.long, device=device)
    weights, kind = attention_weights(model, input_ids, decoder_input_ids=decoder_input_ids)
    labels = token_labels(tokenizer, key_ids)
    if kind == "pooling":
        query_ids, tokens = [], ["<pool>"]
    elif family == "seq2seq":
        tokens = token_labels(tokenizer, query_ids)
    else:
        tokens = labels
    return AttentionMaps(tokens=tokens, key_tokens=labels, layers=weights[:, 0], kind=kind, family=family,
                         token_ids=list(query_ids), key_token_ids=list(key_ids))


# ----------------------------------------------------------------------------------------------------
# The heat map


def _index(name: str, value: Any, size: int, what: str) -> int:
    """``value`` as an index into ``size`` things (negative counts from the end), or a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not -size <= value < size:
        raise ConfigError(f"{name}: expected an integer in [{-size}, {size - 1}] (the maps have {size} {what}), "
                          f"found {value!r}")
    return int(value) % size


def _display(label: str) -> str:
    """A tick label: control characters escaped, a token of spaces only as middle dots (CJK fonts
    have ·, few have ␣)."""
    if label and not label.strip(" "):
        return "·" * len(label)
    return label.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def _ticks(n: int) -> tuple[list[int], float]:
    """Which positions to label (all up to 100, then every k-th) and the font size."""
    step = max(1, -(-n // 100))
    size = 10.0 if n <= 20 else 8.0 if n <= 50 else 6.0
    return list(range(0, n, step)), size


def plot_attention(maps: AttentionMaps, path: str | Path, *, layer: int = -1, head: int | None = None,
                   dpi: int = 120) -> Path:
    """Draw one layer's attention as a heat map (``head=None``: the mean over heads; negative
    ``layer`` and ``head`` count from the end), tokens on both axes, and write it as a PNG,
    atomically. Chinese tokens need a CJK font (see :func:`duplexlm.plots.setup_cjk_font`).
    RNN attention pooling is one row over the tokens, each cell annotated with its weight. Returns
    ``path``.

    >>> import tempfile, pathlib
    >>> maps = AttentionMaps(tokens=["<pool>"], key_tokens=["很", "好"], layers=torch.tensor([[[[0.3, 0.7]]]]),
    ...                      kind="pooling", family="rnn", token_ids=[], key_token_ids=[10, 11])
    >>> png = plot_attention(maps, pathlib.Path(tempfile.mkdtemp()) / "pool.png")
    >>> png.read_bytes()[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
    """
    out = png_path(path)
    if maps.layers.dim() != 4:
        raise ConfigError(f"maps.layers: expected a tensor (L, nh, Tq, Tk), found shape {tuple(maps.layers.shape)}")
    L, nh, Tq, Tk = maps.layers.shape
    li = _index("layer", layer, L, "layers")
    hi = None if head is None else _index("head", head, nh, "heads")
    grid = maps.layers[li].float()
    data = (grid.mean(0) if hi is None else grid[hi]).numpy()  # (Tq, Tk)

    font = setup_cjk_font()
    pooling = maps.kind == "pooling"
    width = float(np.clip(3.0 + 0.3 * Tk, 5.0, 32.0))
    height = 2.6 if pooling else float(np.clip(2.2 + 0.3 * Tq, 3.5, 32.0))
    fig = new_figure(width + 1.2, height)
    ax = fig.add_subplot()
    im = ax.imshow(data, cmap="viridis", vmin=0.0, vmax=max(float(data.max()), 1e-6), aspect="auto",
                   interpolation="nearest")
    fig.colorbar(im, ax=ax, label="attention weight", fraction=0.046 if not pooling else 0.03, pad=0.02)

    xs, xsize = _ticks(Tk)
    ax.set_xticks(xs, labels=[_display(maps.key_tokens[i]) for i in xs], rotation=90, fontsize=xsize)
    if pooling:
        ax.set_yticks([0], labels=["pooling"])
        if Tk <= 30:  # few enough cells to print each weight
            for j in range(Tk):
                ax.text(j, 0, f"{data[0, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if data[0, j] < 0.6 * data.max() else "black")
        ax.set_xlabel("token")
    else:
        ys, ysize = _ticks(Tq)
        ax.set_yticks(ys, labels=[_display(maps.tokens[i]) for i in ys], fontsize=ysize)
        if maps.kind == "cross":
            ax.set_xlabel("source token (encoder, key)")
            ax.set_ylabel("target token (decoder, query)")
        else:
            ax.set_xlabel("key token")
            ax.set_ylabel("query token")

    what = {"self": "self-attention", "cross": "cross-attention", "pooling": "attention pooling"}[maps.kind]
    if pooling:
        ax.set_title(f"{maps.family} · {what}")
    else:
        heads = f"mean of {nh} heads" if hi is None else f"head {hi} of {nh}"
        ax.set_title(f"{maps.family} · {what} · layer {li} of {L} · {heads}")
    return save_figure(fig, out, dpi, font)


__all__ = ["AttentionMaps", "attention_maps", "attention_weights", "plot_attention", "token_labels"]

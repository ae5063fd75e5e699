"""Pretraining objectives: turn a packed chunk of token ids into model inputs and labels, and score them.

The trainer draws, for every step, a chunk ``(B, L)`` of token ids from packed shards (documents
concatenated, each followed by a separator) and calls one batch builder per objective:

========  =========================================  ==========================================
name      builder                                    model family
========  =========================================  ==========================================
``clm``   :func:`clm_batch` — next-token prediction   decoder (GPT-2, Llama, Qwen2)
``mlm``   :func:`mlm_batch` — BERT masking            encoder with ``head="mlm"``
``span``  :func:`span_batch` — T5 span corruption     encoder-decoder (T5)
``rtd``   :func:`rtd_batch` — ELECTRA replaced-token  encoder with ``head="rtd"`` (a small
          detection: masked positions filled by a      generator inside, sharing the embeddings)
          generator, every token judged
========  =========================================  ==========================================

then :func:`compute_loss`, which returns the mean cross-entropy over the labelled positions and
their count, so that micro-batches and ranks can be averaged weighted by tokens.
:func:`chunk_length` says how many tokens to draw for a model's sequence length, and
:func:`make_batch` dispatches on the objective's name with the ids of an :class:`ObjectiveTokens`.

Every random choice comes from the ``generator`` passed in, so a seeded generator gives the same
batch again. It is either one ``torch.Generator`` for the whole batch, or a sequence of ``B``
generators, one per row: then every draw is made row by row, so a row's result depends only on its
own generator and its tokens, never on the other rows of the batch. The trainer seeds one generator
per global sample, which makes masks and spans independent of how a global batch is split across
processes and micro-batches. Labels use -100 (PyTorch's ``ignore_index``) where nothing is to be
predicted.

>>> import torch
>>> chunk = torch.arange(10, 20).reshape(2, 5)
>>> batch = clm_batch(chunk)
>>> batch["input_ids"].tolist(), batch["labels"].tolist()
([[10, 11, 12, 13], [15, 16, 17, 18]], [[11, 12, 13, 14], [16, 17, 18, 19]])
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.examples import IGNORE_INDEX
from ..models.seq2seq import shift_right
from .base import ObjectiveSpec

Objective = Literal["clm", "mlm", "span", "rtd"]
OBJECTIVES: tuple[str, ...] = get_args(Objective)
# one generator for the whole batch, or one per row (row i draws from generator i)
Generators = torch.Generator | Sequence[torch.Generator]

_SENTINEL = re.compile(r"<extra_id_(\d+)>")


# ----------------------------------------------------------------------------------------------------
# Checks and random draws shared by the builders


def _check_chunk(chunk: Tensor, min_len: int, name: str = "chunk") -> None:
    if not isinstance(chunk, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of token ids, found {type(chunk).__name__}")
    if chunk.dim() != 2:
        raise ValueError(f"{name}: expected shape (B, L), found {tuple(chunk.shape)}")
    if chunk.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{name}: expected integer token ids (int64), found dtype {chunk.dtype}")
    if chunk.shape[1] < min_len:
        raise ValueError(f"{name}: expected at least {min_len} tokens per row, found L={chunk.shape[1]}")


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: expected a probability in [0, 1], found {value}")


def _check_generator(generator: Generators, rows: int) -> None:
    """One ``torch.Generator``, or exactly one per row."""
    if isinstance(generator, torch.Generator):
        return
    if not isinstance(generator, Sequence) or not all(isinstance(g, torch.Generator) for g in generator):
        raise TypeError(f"generator: expected a torch.Generator or a sequence of them (one per row), "
                        f"found {type(generator).__name__}")
    if len(generator) != rows:
        raise ValueError(f"generator: expected one generator per row ({rows}), found {len(generator)}")


def _rand(shape: tuple[int, ...], generator: Generators, device: torch.device) -> Tensor:
    """Uniform [0, 1) draws made on the generator's device, then moved to ``device``, so a CPU
    generator can feed a batch that already lives on the GPU. With one generator per row, row ``i``
    is ``shape[1:]`` draws from generator ``i``."""
    if isinstance(generator, torch.Generator):
        return torch.rand(shape, generator=generator, device=generator.device).to(device)
    _check_generator(generator, shape[0])
    return torch.stack([torch.rand(shape[1:], generator=g, device=g.device).to(device) for g in generator])


def _randint(high: int, shape: tuple[int, ...], generator: Generators, device: torch.device) -> Tensor:
    """Uniform integers in [0, high), drawn as :func:`_rand` draws."""
    if isinstance(generator, torch.Generator):
        return torch.randint(0, high, shape, generator=generator, device=generator.device).to(device)
    _check_generator(generator, shape[0])
    return torch.stack([torch.randint(0, high, shape[1:], generator=g, device=g.device).to(device)
                        for g in generator])


def _as_id_tensor(ids: Collection[int] | Tensor, device: torch.device) -> Tensor:
    if isinstance(ids, Tensor):
        return ids.to(device=device, dtype=torch.long).flatten()
    return torch.tensor(sorted(int(i) for i in ids), dtype=torch.long, device=device)


# ----------------------------------------------------------------------------------------------------
# Causal LM


def clm_batch(chunk: Tensor) -> dict[str, Tensor]:
    """Next-token prediction: the model reads ``chunk[:, :-1]`` and predicts ``chunk[:, 1:]``.

    A chunk of ``L = T + 1`` tokens gives ``T`` inputs and ``T`` labels, every one of them scored:
    ``loss = -1/(B T) sum_{b,t} log p(x_{b,t+1} | x_{b,<=t})``. Packed chunks have no padding, so no
    attention mask is returned (the decoder's causal mask is all it needs).

    >>> clm_batch(torch.tensor([[1, 2, 3]]))["labels"].tolist()
    [[2, 3]]
    """
    _check_chunk(chunk, 2)
    chunk = chunk.long()
    return {"input_ids": chunk[:, :-1].contiguous(), "labels": chunk[:, 1:].contiguous()}


# ----------------------------------------------------------------------------------------------------
# Masked LM (BERT)


def _word_ids(word_starts: Tensor, special: Tensor) -> Tensor:
    """Number each token by the word it belongs to: ``cumsum`` of the word starts along the row.

    A special token always stands alone (it starts a word and the token after it starts the next),
    so a missing boundary around a document separator cannot glue two documents' words together.
    Tokens before a row's first start (the tail of a word cut by the chunk) form word 0.
    """
    boundary = word_starts.bool() | special
    boundary[:, 1:] |= special[:, :-1]
    return boundary.long().cumsum(dim=1)  # (B, L) in [0, L]


def mlm_batch(
    chunk: Tensor,
    *,
    mask_token_id: int,
    vocab_size: int,
    special_ids: Collection[int] | Tensor,
    generator: Generators,
    mask_prob: float = 0.15,
    replace_prob: float = 0.8,
    random_prob: float = 0.1,
    word_starts: Tensor | None = None,
    cls_token_id: int | None = None,
    sep_token_id: int | None = None,
) -> dict[str, Tensor]:
    """BERT's masked-LM corruption of a chunk ``(B, L)``.

    1. **Choose** positions to predict among the non-special tokens, each with probability
       ``mask_prob``. With ``word_starts`` (``(B, L)`` bool, True where a token begins a word) whole
       words are chosen instead, each with probability ``mask_prob``, and every non-special token of
       a chosen word is predicted; since each token is chosen exactly when its word is,
       ``E[chosen tokens] = mask_prob * maskable tokens`` still holds. A row with any maskable token
       gets at least one chosen position (one word with whole-word masking), so the loss of a row is
       never an empty mean.
    2. **Corrupt** each chosen position independently: with probability ``replace_prob`` it becomes
       ``mask_token_id``, with ``random_prob`` a token drawn uniformly from the non-special ids of
       ``[0, vocab_size)``, and otherwise it keeps its id (BERT's 80/10/10).
    3. **Label** the chosen positions with their original ids, every other position with -100.

    With both ``cls_token_id`` and ``sep_token_id`` the rows are wrapped as ``[CLS] chunk [SEP]``:
    two tokens are *added*, so ``input_ids`` and ``labels`` are ``(B, L + 2)`` (draw
    ``chunk_length("mlm", seq_len, ...)`` = ``seq_len - 2`` tokens) and no token of the chunk is lost.
    Packed chunks have no padding, so no attention mask is returned.

    ``generator`` is one ``torch.Generator``, or ``B`` of them: then row ``i`` makes all its draws
    from generator ``i`` (the same draws, in the same order, for every row), so it comes out the same
    alone or inside any batch.

    >>> g = torch.Generator().manual_seed(0)
    >>> chunk = torch.randint(5, 100, (2, 8), generator=g)
    >>> batch = mlm_batch(chunk, mask_token_id=4, vocab_size=100, special_ids={0, 1, 2, 3, 4},
    ...                   generator=g, cls_token_id=2, sep_token_id=3)
    >>> batch["input_ids"].shape, int((batch["labels"] != -100).sum(1).min()) >= 1
    (torch.Size([2, 10]), True)
    >>> gens = lambda *seeds: [torch.Generator().manual_seed(s) for s in seeds]
    >>> kw = dict(mask_token_id=4, vocab_size=100, special_ids={0, 1, 2, 3, 4})
    >>> both, alone = mlm_batch(chunk, generator=gens(7, 8), **kw), mlm_batch(chunk[1:], generator=gens(8), **kw)
    >>> torch.equal(both["input_ids"][1:], alone["input_ids"]), torch.equal(both["labels"][1:], alone["labels"])
    (True, True)
    """
    _check_chunk(chunk, 1)
    for name, p in (("mask_prob", mask_prob), ("replace_prob", replace_prob), ("random_prob", random_prob)):
        _check_probability(name, p)
    if replace_prob + random_prob > 1.0 + 1e-9:
        raise ValueError(f"replace_prob + random_prob: expected at most 1, found {replace_prob + random_prob}")
    if not 0 <= mask_token_id < vocab_size:
        raise ValueError(f"mask_token_id: expected an id in [0, {vocab_size}), found {mask_token_id}")
    if (cls_token_id is None) != (sep_token_id is None):
        raise ValueError(f"cls_token_id, sep_token_id: give both or neither, found {cls_token_id}, {sep_token_id}")
    if word_starts is not None and tuple(word_starts.shape) != tuple(chunk.shape):
        raise ValueError(f"word_starts: expected shape {tuple(chunk.shape)} (as chunk), "
                         f"found {tuple(word_starts.shape)}")

    _check_generator(generator, chunk.shape[0])

    chunk = chunk.long()
    device = chunk.device
    B, L = chunk.shape
    specials = _as_id_tensor(special_ids, device)
    special = torch.isin(chunk, specials)  # (B, L)
    maskable = ~special

    # Every draw below is (B, ...) with a row's draws depending only on L, so with one generator per
    # row each row's result is independent of the batch it is in.
    # 1. choose the positions to predict
    if word_starts is None:
        chosen = (_rand((B, L), generator, device) < mask_prob) & maskable
        word = None
    else:
        word = _word_ids(word_starts.to(device), special)  # (B, L)
        word_chosen = _rand((B, L + 1), generator, device) < mask_prob  # one draw per possible word id
        chosen = word_chosen.gather(1, word) & maskable

    # A row left without a chosen position (likely only for short rows) gets one, picked uniformly
    # among its maskable tokens (the word holding it, with whole-word masking). The scores are drawn
    # for every row, needy or not, so a row's later draws do not depend on the others.
    needy = maskable.any(dim=1) & ~chosen.any(dim=1)  # (B,)
    scores = _rand((B, L), generator, device).masked_fill(~maskable, -1.0)
    pick = scores.argmax(dim=1, keepdim=True)  # (B, 1)
    if word is None:
        extra = torch.zeros_like(chosen).scatter_(1, pick, True)
    else:
        extra = (word == word.gather(1, pick)) & maskable
    chosen |= extra & needy[:, None]

    # 2. corrupt: [MASK] / random non-special token / unchanged
    allowed = torch.arange(vocab_size, device=device)
    allowed = allowed[~torch.isin(allowed, specials)]
    if allowed.numel() == 0:
        raise ValueError(f"special_ids: cover the whole vocabulary of {vocab_size}; no id left to sample")
    u = _rand((B, L), generator, device)
    random_ids = allowed[_randint(allowed.numel(), (B, L), generator, device)]
    input_ids = torch.where(chosen & (u < replace_prob), mask_token_id, chunk)
    use_random = chosen & (u >= replace_prob) & (u < replace_prob + random_prob)
    input_ids = torch.where(use_random, random_ids, input_ids)

    # 3. labels
    labels = torch.where(chosen, chunk, IGNORE_INDEX)

    if cls_token_id is not None and sep_token_id is not None:
        cls = torch.full((B, 1), cls_token_id, dtype=torch.long, device=device)
        sep = torch.full((B, 1), sep_token_id, dtype=torch.long, device=device)
        ignore = torch.full((B, 1), IGNORE_INDEX, dtype=torch.long, device=device)
        input_ids = torch.cat([cls, input_ids, sep], dim=1)  # (B, L + 2)
        labels = torch.cat([ignore, labels, ignore], dim=1)
    return {"input_ids": input_ids, "labels": labels}


def rtd_batch(chunk: Tensor, *, generator: Generators, **kw: Any) -> dict[str, Tensor]:
    """ELECTRA's replaced-token detection input: :func:`mlm_batch` with every chosen position set to
    ``[MASK]`` (the generator fills them; ``kw`` as for :func:`mlm_batch`, ``mask_prob`` included),
    plus ``replace_u`` ``(B, L')``: the uniform draw with which the generator samples each position's
    replacement, made after the masking draws from the same generator(s) — so a row stays the same
    alone or in any batch.

    >>> g = [torch.Generator().manual_seed(s) for s in (1, 2)]
    >>> b = rtd_batch(torch.randint(5, 50, (2, 6)), generator=g, mask_token_id=4, vocab_size=50,
    ...               special_ids={0, 1, 2, 3, 4})
    >>> sorted(b), bool(((b["labels"] != -100) == (b["input_ids"] == 4)).all())
    (['input_ids', 'labels', 'replace_u'], True)
    """
    kw = {**kw, "replace_prob": 1.0, "random_prob": 0.0}
    batch = mlm_batch(chunk, generator=generator, **kw)
    batch["replace_u"] = _rand(tuple(batch["input_ids"].shape), generator, chunk.device)
    return batch


def rtd_loss(model: nn.Module, batch: Mapping[str, Tensor], weight: float = 50.0) -> tuple[Tensor, int]:
    """ELECTRA's loss: the generator's masked-LM cross-entropy plus ``weight`` times the
    discriminator's binary cross-entropy ("replaced or original?") over every real token; a sampled
    token that equals the original counts as original. Returns ``(loss, tokens judged)``."""
    labels = batch["labels"]
    at = labels != IGNORE_INDEX
    attention_mask = batch.get("attention_mask")
    out = model(batch["input_ids"], attention_mask=attention_mask, replace_at=at, replace_u=batch["replace_u"])
    target = labels[at]
    gen_loss = F.cross_entropy(out.aux["generator_logits"].float(), target)
    replaced = torch.zeros_like(at)
    replaced[at] = out.aux["sampled"] != target
    judged = attention_mask.bool() if attention_mask is not None else torch.ones_like(at)
    disc_loss = F.binary_cross_entropy_with_logits(out.logits.float()[judged], replaced[judged].float())
    return gen_loss + weight * disc_loss, rtd_count(batch)


def rtd_count(batch: Mapping[str, Tensor]) -> int:
    """What :func:`rtd_loss` is a mean over, for weighting micro-batches and ranks: every real token
    (the discriminator judges them all)."""
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())


# ----------------------------------------------------------------------------------------------------
# Span corruption (T5)


@dataclass(frozen=True)
class SpanLengths:
    """The fixed sizes of a span-corrupted row, derived from the chunk length ``L`` alone.

    ``num_noise = clamp(round(L * noise_density), 1, L - 1)``,
    ``num_spans = max(1, round(num_noise / mean_span_length))``,
    ``input_length = L - num_noise + num_spans + 1`` (kept tokens, one sentinel per span, EOS),
    ``target_length = num_noise + num_spans + 1`` (a sentinel before each span's tokens, EOS).
    """

    length: int
    num_noise: int
    num_spans: int
    input_length: int
    target_length: int


def span_lengths(length: int, noise_density: float = 0.15, mean_span_length: float = 3.0) -> SpanLengths:
    """Sizes of :func:`span_batch`'s output for a chunk of ``length`` tokens (see :class:`SpanLengths`).

    Python's ``round`` rounds halves to even, as T5's ``tf.round`` does.

    >>> s = span_lengths(512)
    >>> s.num_noise, s.num_spans, s.input_length, s.target_length
    (77, 26, 462, 104)
    """
    if length < 2:
        raise ValueError(f"length: span corruption needs at least 2 tokens per row, found {length}")
    if not 0.0 < noise_density < 1.0:
        raise ValueError(f"noise_density: expected a value in (0, 1), found {noise_density}")
    if mean_span_length < 1.0:
        raise ValueError(f"mean_span_length: expected at least 1, found {mean_span_length}")
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    num_spans = max(1, round(num_noise / mean_span_length))
    num_kept = length - num_noise
    if num_spans > num_kept:
        # every noise span follows a non-empty kept span, so there must be as many kept tokens
        raise ValueError(f"noise_density={noise_density}, mean_span_length={mean_span_length}: "
                         f"{num_spans} noise spans need as many kept tokens, but L={length} keeps {num_kept}")
    return SpanLengths(length, num_noise, num_spans, num_kept + num_spans + 1, num_noise + num_spans + 1)


def _random_segmentation(num_items: int, num_segments: int, batch: int, generator: Generators,
                         device: torch.device) -> Tensor:
    """Split ``num_items`` into ``num_segments`` positive lengths, uniformly over all such splits,
    independently for each of ``batch`` rows: place ``num_segments - 1`` cuts among the
    ``num_items - 1`` gaps between items, chosen without replacement. Returns ``(batch, num_segments)``.
    Row ``i`` depends only on its own ``num_items - 1`` keys (drawn from generator ``i`` when given one
    per row).
    """
    if num_segments == 1:
        return torch.full((batch, 1), num_items, dtype=torch.long, device=device)
    # The gaps with the num_segments - 1 smallest random keys get a cut (a random subset, uniformly).
    keys = _rand((batch, num_items - 1), generator, device)
    cut_at = keys.topk(num_segments - 1, dim=1, largest=False).indices  # (batch, k - 1)
    first_in_segment = torch.zeros((batch, num_items), dtype=torch.long, device=device)
    first_in_segment.scatter_(1, cut_at + 1, 1)  # item g + 1 starts a segment when gap g is cut
    segment_id = first_in_segment.cumsum(dim=1)  # (batch, num_items) in [0, k)
    lengths = torch.zeros((batch, num_segments), dtype=torch.long, device=device)
    return lengths.scatter_add_(1, segment_id, torch.ones_like(segment_id))


def random_spans_noise_mask(batch: int, sizes: SpanLengths, generator: Generators,
                            device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Which tokens T5's span corruption drops, as in T5's ``random_spans_noise_mask``.

    Each row alternates ``num_spans`` kept spans and ``num_spans`` noise spans, starting with a kept
    one and ending with a noise one; the kept and the noise lengths are independent uniform random
    splits of ``L - num_noise`` and ``num_noise`` tokens. Returns ``is_noise`` ``(B, L)`` bool and
    ``span_index`` ``(B, L)``: the number of the noise span a token belongs to (0, 1, ...; -1 for kept).
    With ``batch`` generators, row ``i`` draws from generator ``i`` alone.

    >>> sizes = span_lengths(20, noise_density=0.3, mean_span_length=2.0)
    >>> noise, index = random_spans_noise_mask(1, sizes, torch.Generator().manual_seed(0))
    >>> int(noise.sum()), int(index.max()) + 1
    (6, 3)
    >>> gens = lambda *seeds: [torch.Generator().manual_seed(s) for s in seeds]
    >>> in_batch, _ = random_spans_noise_mask(3, sizes, gens(1, 2, 3))
    >>> torch.equal(in_batch[2:], random_spans_noise_mask(1, sizes, gens(3))[0])
    True
    """
    _check_generator(generator, batch)
    device = torch.device(device)
    L, K = sizes.length, sizes.num_spans
    noise_lengths = _random_segmentation(sizes.num_noise, K, batch, generator, device)  # (B, K)
    kept_lengths = _random_segmentation(L - sizes.num_noise, K, batch, generator, device)  # (B, K)
    interleaved = torch.stack([kept_lengths, noise_lengths], dim=2).reshape(batch, 2 * K)  # kept, noise, ...
    span_starts = interleaved.cumsum(dim=1)[:, :-1]  # (B, 2K - 1), all < L
    starts = torch.zeros((batch, L), dtype=torch.long, device=device)
    starts.scatter_(1, span_starts, 1)
    span_number = starts.cumsum(dim=1)  # (B, L): 0 first kept span, 1 first noise span, 2 ...
    is_noise = span_number % 2 == 1
    span_index = torch.where(is_noise, span_number // 2, -1)
    return is_noise, span_index


def span_batch(
    chunk: Tensor,
    *,
    sentinel_ids: list[int] | tuple[int, ...],
    eos_token_id: int,
    pad_token_id: int,
    decoder_start_token_id: int,
    generator: Generators,
    noise_density: float = 0.15,
    mean_span_length: float = 3.0,
) -> dict[str, Tensor]:
    """T5's span corruption of a chunk ``(B, L)``.

    :func:`random_spans_noise_mask` picks ``num_noise = round(L * noise_density)`` tokens in
    ``num_spans = max(1, round(num_noise / mean_span_length))`` spans. In the input each noise span
    is replaced by one sentinel, ``sentinel_ids[0]``, ``sentinel_ids[1]``, ... in order; the target
    is each sentinel followed by the tokens it hides. Both end with ``eos_token_id``, as in T5::

        chunk    a b c d e f g h            noise: c d, g
        input    a b <0> e f <1> h </s>
        labels   <0> c d <1> g </s>

    Every row has the same number of noise tokens and spans, so the widths are fixed by ``L``
    (:func:`span_lengths`): ``input_ids`` ``(B, L - num_noise + num_spans + 1)`` and ``labels``
    ``(B, num_noise + num_spans + 1)``. Nothing is padded, so both attention masks are all ones
    (returned for the trainer's uniformity) and no label is -100. ``decoder_input_ids`` is
    ``shift_right(labels, decoder_start_token_id, pad_token_id)``.

    The chunk must not itself contain sentinel ids (the target would be ambiguous); this is not
    checked, to keep the builder cheap — a tokenizer only produces them from literal ``<extra_id_N>``.

    ``generator`` is one ``torch.Generator``, or ``B`` of them, one per row: a row's spans then depend
    only on its own generator and ``L``, so it comes out the same alone or inside any batch.

    >>> g = torch.Generator().manual_seed(0)
    >>> batch = span_batch(torch.arange(10, 30)[None], sentinel_ids=[99, 98, 97], eos_token_id=1,
    ...                    pad_token_id=0, decoder_start_token_id=0, generator=g)
    >>> batch["input_ids"].shape, batch["labels"].shape
    (torch.Size([1, 19]), torch.Size([1, 5]))
    >>> gens = lambda *seeds: [torch.Generator().manual_seed(s) for s in seeds]
    >>> chunk = torch.arange(10, 50).reshape(2, 20)
    >>> kw = dict(sentinel_ids=[99, 98, 97], eos_token_id=1, pad_token_id=0, decoder_start_token_id=0)
    >>> both, alone = span_batch(chunk, generator=gens(5, 6), **kw), span_batch(chunk[1:], generator=gens(6), **kw)
    >>> torch.equal(both["input_ids"][1:], alone["input_ids"]), torch.equal(both["labels"][1:], alone["labels"])
    (True, True)
    """
    _check_chunk(chunk, 2)
    chunk = chunk.long()
    device = chunk.device
    B, L = chunk.shape
    sizes = span_lengths(L, noise_density, mean_span_length)
    if sizes.num_spans > len(sentinel_ids):
        raise ValueError(f"sentinel_ids: {sizes.num_spans} noise spans (L={L}, noise_density={noise_density}, "
                         f"mean_span_length={mean_span_length}) need as many sentinels, found {len(sentinel_ids)}")
    sentinels = torch.as_tensor(list(sentinel_ids)[: sizes.num_spans], dtype=torch.long, device=device)

    is_noise, span_index = random_spans_noise_mask(B, sizes, generator, device)  # (B, L) each
    span_start = is_noise.clone()
    span_start[:, 1:] &= ~is_noise[:, :-1]  # first token of each noise span
    sentinel_here = sentinels[span_index.clamp(min=0)]  # (B, L), meaningful where is_noise
    eos = torch.full((B, 1), eos_token_id, dtype=torch.long, device=device)

    # Input: kept tokens, and the first token of each noise span turned into its sentinel. Every row
    # keeps the same count, so the boolean selection (row-major) reshapes back to (B, S_in).
    keep_in = ~is_noise | span_start
    input_ids = torch.where(span_start, sentinel_here, chunk)[keep_in].view(B, -1)
    input_ids = torch.cat([input_ids, eos], dim=1)

    # Target: each noise span's tokens behind its sentinel. Interleave two columns per position —
    # (sentinel if a span starts here, the token if it is noise) — and keep the wanted entries.
    pairs = torch.stack([sentinel_here, chunk], dim=2)  # (B, L, 2)
    keep_pairs = torch.stack([span_start, is_noise], dim=2)  # (B, L, 2)
    labels = pairs[keep_pairs].view(B, -1)
    labels = torch.cat([labels, eos], dim=1)

    if input_ids.shape[1] != sizes.input_length or labels.shape[1] != sizes.target_length:
        raise RuntimeError(f"span_batch: built widths {input_ids.shape[1]}, {labels.shape[1]}, expected "
                           f"{sizes.input_length}, {sizes.target_length}")  # an internal bug, not user input
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "labels": labels,
        "decoder_input_ids": shift_right(labels, decoder_start_token_id, pad_token_id),
        "decoder_attention_mask": torch.ones_like(labels),
    }


# ----------------------------------------------------------------------------------------------------
# Token ids an objective needs


@dataclass(frozen=True)
class ObjectiveTokens:
    """The token ids the objectives need, gathered once from a tokenizer.

    ``special_ids`` are never masked nor drawn as random replacements by :func:`mlm_batch`;
    ``sentinel_ids`` are T5's ``<extra_id_0>``, ``<extra_id_1>``, ... in that order.
    ``decoder_start_token_id`` defaults to ``pad_token_id`` (T5's convention).

    >>> t = ObjectiveTokens(vocab_size=100, mask_token_id=4, special_ids=frozenset({0, 4}))
    >>> t.decoder_start
    0
    """

    vocab_size: int
    mask_token_id: int | None = None
    special_ids: frozenset[int] = field(default_factory=frozenset)
    sentinel_ids: tuple[int, ...] = ()
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    cls_token_id: int | None = None
    sep_token_id: int | None = None
    decoder_start_token_id: int | None = None

    @property
    def decoder_start(self) -> int:
        if self.decoder_start_token_id is not None:
            return self.decoder_start_token_id
        return self.pad_token_id if self.pad_token_id is not None else 0

    @classmethod
    def from_tokenizer(cls, tok: Any) -> ObjectiveTokens:
        """Read the ids from a :class:`duplexlm.tokenizer.Tokenizer`.

        Uses its ``sentinel_ids`` and ``special_ids`` when it has them; otherwise the sentinels are
        the vocabulary's ``<extra_id_N>`` sorted by ``N``, and the special ids are its named special
        tokens, the sentinels and every added token the backend marks as special.
        """
        backend = tok.backend

        def named(key: str) -> int | None:
            text = tok.special_tokens.get(key)
            return None if text is None else backend.token_to_id(text)

        sentinels = getattr(tok, "sentinel_ids", None)
        if sentinels is None:
            found = ((int(m.group(1)), i) for t, i in backend.get_vocab().items() if (m := _SENTINEL.fullmatch(t)))
            sentinels = [i for _, i in sorted(found)]
        specials = getattr(tok, "special_ids", None)
        if specials is None:
            specials = {i for key in tok.special_tokens if (i := named(key)) is not None}
            specials |= set(sentinels)
            added = getattr(backend, "get_added_tokens_decoder", None)
            if added is not None:
                specials |= {i for i, t in added().items() if getattr(t, "special", False)}
        return cls(
            vocab_size=tok.vocab_size,
            mask_token_id=tok.mask_token_id,
            special_ids=frozenset(int(i) for i in specials),
            sentinel_ids=tuple(int(i) for i in sentinels),
            eos_token_id=named("eos_token"),
            pad_token_id=named("pad_token"),
            cls_token_id=named("cls_token"),
            sep_token_id=named("sep_token"),
            decoder_start_token_id=getattr(tok, "decoder_start_token_id", None),
        )


def _check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective: expected one of {', '.join(OBJECTIVES)}, found {objective!r}")


def chunk_length(objective: Objective, seq_len: int, *, tokens: ObjectiveTokens | None = None,
                 noise_density: float = 0.15, mean_span_length: float = 3.0) -> int:
    """How many tokens ``L`` to draw per row so the model sees sequences of ``seq_len`` tokens.

    ``clm``: ``seq_len + 1`` (inputs and labels are shifted copies). ``mlm``: ``seq_len - 2`` when
    ``tokens`` has both a CLS and a SEP id (the builder wraps the row), else ``seq_len``. ``span``:
    the largest ``L`` whose corrupted input (:func:`span_lengths`) is at most ``seq_len`` tokens.

    >>> chunk_length("clm", 128), chunk_length("span", 512)
    (129, 568)
    """
    _check_objective(objective)
    if seq_len < 2:
        raise ValueError(f"seq_len: expected at least 2, found {seq_len}")
    if objective == "clm":
        return seq_len + 1
    if objective in ("mlm", "rtd"):
        wrap = tokens is not None and tokens.cls_token_id is not None and tokens.sep_token_id is not None
        if wrap and seq_len < 3:
            raise ValueError(f"seq_len: [CLS] and [SEP] take 2 positions, so at least 3 are needed, found {seq_len}")
        return seq_len - 2 if wrap else seq_len
    # The input length grows with L (by about 1 - density + density/mean per token), so step back from
    # the generous guess until it fits.
    length = int(seq_len / (1.0 - noise_density)) + 2
    while length > 2 and span_lengths(length, noise_density, mean_span_length).input_length > seq_len:
        length -= 1
    return length


def make_batch(objective: Objective, chunk: Tensor, *, tokens: ObjectiveTokens | Mapping[str, Any],
               generator: Generators, word_starts: Tensor | None = None, **kw: Any) -> dict[str, Tensor]:
    """Build one objective's batch from a chunk, taking the ids from ``tokens``.

    ``kw`` passes the objective's own knobs (``mask_prob``, ``noise_density``, ...). ``mlm`` wraps rows in
    CLS ... SEP when ``tokens`` has both ids (set ``cls_token_id=None, sep_token_id=None`` in ``kw`` to
    avoid it); ``word_starts`` turns on whole-word masking. ``generator`` is one ``torch.Generator`` or
    one per row of ``chunk`` (see :func:`mlm_batch`); ``clm`` draws nothing.

    >>> t = ObjectiveTokens(vocab_size=100, mask_token_id=4, special_ids=frozenset(range(5)))
    >>> g = torch.Generator().manual_seed(0)
    >>> make_batch("mlm", torch.randint(5, 100, (2, 6)), tokens=t, generator=g)["labels"].shape
    torch.Size([2, 6])
    """
    _check_objective(objective)
    if isinstance(tokens, Mapping):
        tokens = ObjectiveTokens(**tokens)
    if objective == "clm":
        if kw:
            raise TypeError(f"clm_batch: takes no options, found {sorted(kw)}")
        return clm_batch(chunk)
    if objective in ("mlm", "rtd"):
        if tokens.mask_token_id is None:
            raise ValueError(f"tokens.mask_token_id: the {objective} objective needs a mask token, found None")
        options: dict[str, Any] = {"cls_token_id": tokens.cls_token_id, "sep_token_id": tokens.sep_token_id}
        if options["cls_token_id"] is None or options["sep_token_id"] is None:
            options = {}
        options.update(kw)
        build = rtd_batch if objective == "rtd" else mlm_batch
        return build(chunk, mask_token_id=tokens.mask_token_id, vocab_size=tokens.vocab_size,
                     special_ids=tokens.special_ids, generator=generator, word_starts=word_starts, **options)
    if tokens.eos_token_id is None:
        raise ValueError("tokens.eos_token_id: the span objective ends inputs and targets with EOS, found None")
    if not tokens.sentinel_ids:
        raise ValueError("tokens.sentinel_ids: the span objective needs <extra_id_N> sentinel tokens, found none")
    return span_batch(chunk, sentinel_ids=tokens.sentinel_ids, eos_token_id=tokens.eos_token_id,
                      pad_token_id=tokens.pad_token_id if tokens.pad_token_id is not None else 0,
                      decoder_start_token_id=tokens.decoder_start, generator=generator, **kw)


# ----------------------------------------------------------------------------------------------------
# Loss


def compute_loss(model: nn.Module, batch: Mapping[str, Tensor], objective: Objective) -> tuple[Tensor, int]:
    """Run the model on a batch and score it: ``(mean cross-entropy, number of target tokens)``.

    ``loss = -1/N sum_{i: labels_i != -100} log softmax(logits_i)[labels_i]`` with the logits cast to
    fp32 first (bf16 log-softmax over a large vocabulary loses digits). ``N`` is returned too, so the
    trainer can weight micro-batches and ranks by tokens: ``sum_k loss_k N_k / sum_k N_k``. With
    ``N = 0`` the loss is 0 (still attached to the graph), never NaN. Reading ``N`` as a Python int
    waits for the device once per call.

    ``clm`` and ``mlm`` call ``model(input_ids, attention_mask=...)``; ``span`` also passes
    ``decoder_input_ids`` and ``decoder_attention_mask``. Masks absent from the batch are None.

    >>> from duplexlm.config import DecoderConfig
    >>> from duplexlm.models import build_model
    >>> model = build_model(DecoderConfig(vocab_size=64, d_model=32, n_layer=1, n_head=2))
    >>> loss, n = compute_loss(model, clm_batch(torch.randint(0, 64, (2, 9))), "clm")
    >>> n
    16
    """
    _check_objective(objective)
    for key in ("input_ids", "labels") + (("decoder_input_ids",) if objective == "span" else ()):
        if key not in batch:
            raise KeyError(f"batch: the {objective} objective needs {key!r}, found keys {sorted(batch)}")
    labels = batch["labels"]
    if objective == "span":
        out = model(batch["input_ids"], attention_mask=batch.get("attention_mask"),
                    decoder_input_ids=batch["decoder_input_ids"],
                    decoder_attention_mask=batch.get("decoder_attention_mask"))
    elif objective == "mlm":
        # the vocabulary logits at the masked positions only: the same loss, most of the head's cost saved
        scored = labels != IGNORE_INDEX
        out = model(batch["input_ids"], attention_mask=batch.get("attention_mask"), logits_at=scored)
        labels = labels[scored]
    else:
        out = model(batch["input_ids"], attention_mask=batch.get("attention_mask"))
    logits = out.logits
    if logits is None or logits.shape[:-1] != labels.shape:
        found = None if logits is None else tuple(logits.shape)
        raise ValueError(f"logits: expected shape {tuple(labels.shape)} + (V,) to match labels, found {found} "
                         f"(does the model have an LM head for {objective!r}?)")
    total = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                            ignore_index=IGNORE_INDEX, reduction="sum")
    count = (labels != IGNORE_INDEX).sum()
    loss = total / count.clamp(min=1)
    return loss, int(count)


def _pretraining(name: Objective, family: str, head: str) -> ObjectiveSpec:
    return ObjectiveSpec(name=name, families=(family,), head=head, data="shards",
                         loss=lambda model, batch, options: compute_loss(model, batch, name))


CLM = _pretraining("clm", "decoder", "lm")
MLM = _pretraining("mlm", "encoder", "mlm")
SPAN = _pretraining("span", "seq2seq", "lm")
RTD = ObjectiveSpec(name="rtd", families=("encoder",), head="rtd", data="shards",
                    loss=lambda model, batch, options: rtd_loss(model, batch, options.rtd_weight), count=rtd_count)


__all__ = [
    "CLM",
    "MLM",
    "OBJECTIVES",
    "RTD",
    "SPAN",
    "Generators",
    "Objective",
    "ObjectiveTokens",
    "SpanLengths",
    "chunk_length",
    "clm_batch",
    "compute_loss",
    "make_batch",
    "mlm_batch",
    "random_spans_noise_mask",
    "rtd_batch",
    "rtd_count",
    "rtd_loss",
    "span_batch",
    "span_lengths",
]

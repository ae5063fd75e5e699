"""Language-model evaluation: perplexity and bits per byte of a causal LM, masked-token perplexity of a
masked LM, span-corruption loss of a T5, over a text file, token shards or a built-in corpus.

**The text.** Documents are cleaned as ``duplex data prepare`` cleans them and tokenized into one
stream, each document followed by the separator (the tokenizer's eos token, else its sep token) —
the stream the models were pretrained on. The data is

- a ``.txt`` file (one document per line) or ``.jsonl`` (the ``text_field`` of each line), a
  directory or a glob of those: scored whole;
- a directory written by ``duplex data prepare``: its ``val`` split by default (``split='train'``
  picks the other), read as it is; the shards must come from the model's tokenizer;
- a built-in corpus (``peoples-daily``, ``reviews-zh``): its ``val`` split is the held-out slice that
  ``duplex data prepare`` with its defaults (seed 1234, ``val_fraction`` 0.005) sets aside — the
  documents whose seeded hash of the cleaned text falls under 0.5 % — so a model pretrained on the
  prepared corpus never saw it; ``split='train'`` is the rest. ``seed`` changes the slice as it
  changes prepare's.

**Causal LMs** (decoders and one-directional RNNs with an ``lm`` head). The stream starts with one
separator, so every token of the text, and each document's closing separator, is predicted once
from what precedes it. Windows of ``context`` input tokens slide by ``stride`` over the stream and
score only the tokens that no earlier window scored, as in the Hugging Face perplexity guide, but
every token counts exactly once: the first window scores its whole length; each later window's
new tokens see at least ``context - stride + 1`` tokens of context. ``stride == context`` gives
disjoint windows (each token sees the tokens since its window's start); a smaller stride costs
more and gives each token more context. Then::

    loss = total NLL / scored tokens          (nats per token)
    perplexity = exp(loss)
    bits_per_byte = total NLL / (ln 2 · UTF-8 bytes of the scored text)

The bytes are those of the cleaned text, one per separator (the convention of prepare's
``meta.json``, so the number matches ``val_bpb`` in training); they do not depend on the tokenizer,
so models with different vocabularies compare. For token shards scored whole the bytes come from
``meta.json``; where ``max_tokens`` cuts the stream, the scored ids are decoded with the tokenizer
and their UTF-8 bytes counted (a cut through a multi-byte character, or a WordPiece decoder's
spaces, can shift that count by a few bytes).

**Masked LMs** (encoders with an ``mlm`` head). Pseudo-perplexity (masking each token in turn) costs
one forward pass per token; instead the stream is cut into rows of ``context`` tokens (``[CLS]`` and
``[SEP]`` included), 15 % of the non-special tokens are masked with BERT's 80/10/10 corruption
(:func:`duplexlm.objectives.mlm_batch`, one seeded generator per row, so the score is
reproducible), and the loss is the mean cross-entropy over the masked tokens. Its exponential is a
*masked-token* perplexity: each prediction sees both sides of the text, so it is not comparable with
a causal LM's perplexity. No bits per byte.

**T5** (seq2seq with an ``lm`` head). The same with T5's span corruption
(:func:`duplexlm.objectives.span_batch`: 15 % noise in spans of mean length 3, seeded per
row): the loss is the mean cross-entropy per target token (sentinels, the hidden tokens and the
closing eos), and its exponential the span-corruption perplexity — again not a causal LM's.

>>> metrics = evaluate_lm("runs/gpt/model", "peoples-daily")  # doctest: +SKIP
>>> metrics["perplexity"], metrics["bits_per_byte"]  # doctest: +SKIP
(41.7, 1.52)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, DataError, ModelError
from ..fileutil import atomic_directory, write_json
from ..scores.labels import perplexity
from ..tokenizer import Tokenizer

LMObjective = Literal["clm", "mlm", "span"]

HELD_OUT_FRACTION = 0.005  # `duplex data prepare`'s default val_fraction: a built-in corpus's held-out slice
DEFAULT_CONTEXT = 512  # models without a maximum length (T5's relative positions, RNNs)
MASK_PROB = 0.15
NOISE_DENSITY = 0.15
MEAN_SPAN_LENGTH = 3.0
_IGNORE = -100


def lm_objective(model: nn.Module) -> LMObjective | None:
    """How a model is scored as a language model: ``clm`` (a decoder, or a one-directional RNN, with
    an ``lm`` head), ``mlm`` (an encoder with an ``mlm`` head), ``span`` (a T5 with an ``lm`` head), or
    None for a model without a language-model head.

    >>> from duplexlm.models import build_model
    >>> from duplexlm.presets import get_preset
    >>> lm_objective(build_model(get_preset("bert-tiny"))), lm_objective(build_model(get_preset("lstm-tiny")))
    ('mlm', None)
    """
    c = model.config
    head = getattr(c, "head", "none")
    if c.family in ("decoder", "rnn") and head == "lm":
        return "clm"
    if c.family == "encoder" and head == "mlm":
        return "mlm"
    if c.family == "seq2seq" and head == "lm":
        return "span"
    return None


# ----------------------------------------------------------------------------------------------------
# The text as one token stream


@dataclass
class LMText:
    """The token stream to score: ``ids`` (each document followed by ``sep_id``), how many documents
    it holds, the UTF-8 bytes of their text (one per separator), and where it came from."""

    ids: np.ndarray  # (N,) int64
    sep_id: int
    documents: int
    nbytes: int
    source: str  # "text", "shards" or "builtin"
    split: str


def separator_id(tokenizer: Tokenizer, where: str) -> int:
    """The document separator, as ``duplex data prepare`` chooses it: the eos token, else the sep token."""
    for key in ("eos_token", "sep_token"):
        text = tokenizer.special_tokens.get(key)
        if text is not None and tokenizer.backend.token_to_id(text) is not None:
            return int(tokenizer.backend.token_to_id(text))
    raise DataError(f"{where}: the tokenizer has neither an eos_token nor a sep_token to separate documents "
                    f"(special tokens: {tokenizer.special_tokens or 'none'})")


def is_shards_dir(data: str | Path) -> bool:
    """Whether ``data`` is a directory written by ``duplex data prepare`` (it holds ``meta.json``)."""
    path = Path(data)
    return path.is_dir() and (path / "meta.json").is_file()


def load_lm_text(data: str, tokenizer: Tokenizer, *, split: str | None = None, text_field: str = "text",
                 seed: int = 1234, model_dir: str | Path = "--model") -> LMText:
    """Read ``data`` (a text/JSONL file, directory or glob; token shards; a built-in corpus) as one
    token stream; ``split`` picks a shards directory's or a built-in corpus's split (default ``val``)."""
    from ..data.corpus import BUILTIN_CORPORA

    if is_shards_dir(data):
        return _shards_text(data, tokenizer, split or "val", model_dir)
    builtin = data in BUILTIN_CORPORA and not Path(data).exists()
    if builtin and (split or "val") not in ("train", "val"):
        raise ConfigError(f"--split: a built-in corpus has splits train and val (held out), found {split!r}")
    return _documents_text(data, tokenizer, text_field=text_field, split=(split or "val") if builtin else None,
                           seed=seed)


def _documents_text(data: str, tokenizer: Tokenizer, *, text_field: str, split: str | None,
                    seed: int) -> LMText:
    from ..data.clean import clean_text, nfkc_for, split_key
    from ..data.corpus import iter_documents

    sep = separator_id(tokenizer, str(data))
    below = int(HELD_OUT_FRACTION * 2**64)
    texts: list[str] = []
    seen: set[str] = set()
    nfkc = nfkc_for(tokenizer.kind)  # as duplex data prepare cleaned them for this tokenizer
    for doc in iter_documents([data], text_field=text_field):
        text = clean_text(doc.text, nfkc=nfkc)
        if not text:
            continue
        if split is not None:  # a built-in corpus: prepare's split, and its exact de-duplication
            if (split_key(text, seed) < below) != (split == "val") or text in seen:
                continue
            seen.add(text)
        texts.append(text)
    if not texts:
        where = f"{data} ({split} split, seed {seed})" if split is not None else str(data)
        raise DataError(f"{where}: no text to score (every document is empty after cleaning)")
    ids: list[int] = []
    for enc in tokenizer.backend.encode_batch(texts, add_special_tokens=False):
        ids += enc.ids
        ids.append(sep)
    nbytes = sum(len(t.encode("utf-8")) + 1 for t in texts)  # + 1: the separator, as in prepare's meta.json
    return LMText(np.asarray(ids, dtype=np.int64), sep, len(texts), nbytes,
                  "builtin" if split is not None else "text", split or "all")


def _shards_text(data: str, tokenizer: Tokenizer, split: str, model_dir: str | Path) -> LMText:
    from ..data.shards import TokenShards

    if split not in ("train", "val"):
        raise ConfigError(f"--split: token shards have splits train and val, found {split!r}")
    shards = TokenShards(data, split)
    if len(shards) == 0:
        raise DataError(f"{Path(data) / 'meta.json'}: split {split!r} holds no tokens; nothing to score")
    own = Path(data) / "tokenizer.json"
    if own.is_file():
        # ids only mean something under the tokenizer that made them: a different vocabulary would
        # score the model on scrambled text without any error
        if Tokenizer.from_dir(data).backend.get_vocab(with_added_tokens=True) != \
                tokenizer.backend.get_vocab(with_added_tokens=True):
            raise DataError(f"{own}: the shards were made with another tokenizer than {model_dir}'s; prepare "
                            "the text with the model's tokenizer, or give the text itself")
    elif shards.vocab_size != tokenizer.vocab_size:
        raise DataError(f"{Path(data) / 'meta.json'}: the shards' tokenizer has {shards.vocab_size} tokens, "
                        f"{model_dir}'s {tokenizer.vocab_size}; prepare the text with the model's tokenizer")
    nbytes = int(shards.meta["splits"][split]["bytes"])
    return LMText(shards.get(0, len(shards)), shards.doc_sep_token_id, shards.documents, nbytes, "shards", split)


def decoded_bytes(ids: np.ndarray, sep_id: int, tokenizer: Tokenizer) -> int:
    """UTF-8 bytes of the text behind ``ids``: each run between separators decoded (special tokens
    dropped), one byte per separator — how bits per byte counts a stream whose text is not at hand.

    >>> from duplexlm.tokenizer import train_tokenizer
    >>> tok = train_tokenizer(["你好世界"] * 4, "bpe", vocab_size=300, num_sentinels=0)
    >>> sep = tok.eos_token_id
    >>> decoded_bytes(np.array(tok.encode("你好") + [sep] + tok.encode("ab")), sep, tok)
    9
    """
    cuts = np.flatnonzero(ids == sep_id)
    runs = [r.tolist() for r in np.split(ids, cuts + 1)]
    runs = [r[:-1] if r and r[-1] == sep_id else r for r in runs]
    texts = tokenizer.backend.decode_batch([r for r in runs if r], skip_special_tokens=True)
    return sum(len(t.encode("utf-8")) for t in texts) + len(cuts)


# ----------------------------------------------------------------------------------------------------
# Scoring


def clm_windows(n: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """The sliding windows over a stream of ``n`` tokens: ``(begin, end, first)`` reads
    ``ids[begin:end-1]`` (at most ``context`` tokens) and scores the tokens ``first .. end-1`` (each
    from the logits of the position before it). Token 0 is context only; every other token is scored
    by exactly one window.

    >>> clm_windows(10, 4, 4)
    [(0, 5, 1), (4, 9, 5), (8, 10, 9)]
    >>> clm_windows(10, 4, 2)
    [(0, 5, 1), (2, 7, 5), (4, 9, 7), (6, 10, 9)]
    """
    if not 1 <= stride <= context:
        raise ConfigError(f"--stride: expected 1 <= stride <= context ({context}), found {stride}")
    windows = []
    begin, first = 0, 1
    while first < n:
        end = min(begin + context + 1, n)
        windows.append((begin, end, first))
        begin, first = begin + stride, end
    return windows


def _groups(items: list[Any], key: Any, size: int) -> Iterator[list[Any]]:
    """Batches of at most ``size`` items that share ``key(item)`` (so the rows stack without padding)."""
    by_key: dict[Any, list[Any]] = {}
    for item in items:
        by_key.setdefault(key(item), []).append(item)
    for group in by_key.values():
        for i in range(0, len(group), size):
            yield group[i:i + size]


@torch.inference_mode()
def score_clm(model: nn.Module, ids: torch.Tensor, *, context: int, stride: int,
              batch_size: int = 8) -> tuple[float, int, int]:
    """``(total NLL in nats, scored tokens, windows)`` of the 1-D stream ``ids`` under a causal LM,
    over :func:`clm_windows`; the sum is taken in float64."""
    device = next(model.parameters()).device
    ids = ids.long().cpu()
    windows = clm_windows(ids.numel(), context, stride)
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    for batch in _groups(windows, lambda w: w[1] - w[0], batch_size):
        x = torch.stack([ids[b:e - 1] for b, e, _ in batch])  # (B, T)
        y = torch.stack([ids[b + 1:e] for b, e, _ in batch])  # (B, T): y[:, j] follows x[:, :j + 1]
        for row, (b, _, first) in enumerate(batch):
            y[row, : first - b - 1] = _IGNORE  # already scored by an earlier window
        logits = model(x.to(device)).logits  # (B, T, V)
        nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.to(device).reshape(-1),
                              ignore_index=_IGNORE, reduction="none")
        total += nll.double().sum().cpu()
        count += int((y != _IGNORE).sum())
    return float(total), count, len(windows)


def _row_generator(seed: int, row: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + row) % (2**63 - 1))


@torch.inference_mode()
def score_corrupted(model: nn.Module, ids: torch.Tensor, objective: Literal["mlm", "span"], tokens: Any, *,
                    row_length: int, batch_size: int = 8, seed: int = 1234, **options: Any) -> tuple[float, int, int]:
    """``(total loss in nats, target tokens, rows)`` of a masked LM (``mlm``) or a T5 (``span``) on the
    stream ``ids`` cut into rows of ``row_length`` tokens (the last may be shorter), each corrupted
    with its own generator seeded by ``(seed, row)``."""
    from ..objectives import compute_loss, make_batch

    device = next(model.parameters()).device
    ids = ids.long().cpu()
    starts = [(i, s) for i, s in enumerate(range(0, ids.numel(), row_length))]
    rows = [(i, ids[s:s + row_length]) for i, s in starts]
    if objective == "span":
        rows = [r for r in rows if r[1].numel() >= 2]  # span corruption needs two tokens: a last 1-token row is left out
    total, count = 0.0, 0
    for batch in _groups(rows, lambda r: r[1].numel(), batch_size):
        chunk = torch.stack([r for _, r in batch])
        gens = [_row_generator(seed, i) for i, _ in batch]
        inputs = make_batch(objective, chunk, tokens=tokens, generator=gens, **options)
        loss, n = compute_loss(model, {k: v.to(device) for k, v in inputs.items()}, objective)
        total += float(loss) * n
        count += n
    return total, count, len(rows)


def _context(model: nn.Module, context: int | None) -> int:
    limit = getattr(model.config, "max_seq_len", None)
    if context is None:
        return limit if limit is not None else DEFAULT_CONTEXT
    if context < 2:
        raise ConfigError(f"--context: expected at least 2 tokens, found {context}")
    if limit is not None and context > limit:
        raise ConfigError(f"--context: {context} is longer than the model's max_seq_len ({limit})")
    return context


def evaluate_lm(model: nn.Module, tokenizer: Tokenizer, data: str, *, objective: LMObjective,
                split: str | None = None, text_field: str = "text", context: int | None = None,
                stride: int | None = None, max_tokens: int = 0, batch_size: int = 8, seed: int = 1234,
                model_dir: str | Path = "--model") -> dict[str, Any]:
    """Score ``model`` as a language model on ``data`` (see the module's docstring); returns the metrics.

    ``context``: tokens per window or row (default the model's ``max_seq_len``, else 512); ``stride``
    (causal LMs): tokens between window starts (default ``context // 2``); ``max_tokens``: score at
    most this many tokens of the stream (0: all); ``seed``: the held-out slice of a built-in corpus
    and the masks or spans.
    """
    from ..objectives import ObjectiveTokens, chunk_length, span_lengths

    if max_tokens < 0:
        raise ConfigError(f"--max-tokens: expected an integer >= 0 (0: all), found {max_tokens}")
    vocab = model.config.vocab_size
    if tokenizer.vocab_size > vocab:
        raise ModelError(f"{model_dir}: the tokenizer has {tokenizer.vocab_size} tokens, the model's embedding "
                         f"{vocab}; they do not belong together")
    text = load_lm_text(data, tokenizer, split=split, text_field=text_field, seed=seed, model_dir=model_dir)
    if int(text.ids.max()) >= vocab:
        raise DataError(f"{data}: token id {int(text.ids.max())} is outside the model's vocabulary of {vocab}")
    ctx = _context(model, context)
    out: dict[str, Any] = {"task": "lm", "objective": objective, "data": data, "split": text.split,
                           "documents": text.documents, "context": ctx}
    if objective == "clm":
        step = ctx // 2 if stride is None else stride
        stream = np.concatenate([[text.sep_id], text.ids])  # a leading separator: the first token is scored too
        truncated = bool(max_tokens) and len(stream) - 1 > max_tokens
        if truncated:
            stream = stream[: max_tokens + 1]
        total, n, windows = score_clm(model, torch.from_numpy(stream), context=ctx, stride=step,
                                      batch_size=batch_size)
        nbytes = decoded_bytes(stream[1:], text.sep_id, tokenizer) if truncated else text.nbytes
        loss = total / n
        out.update({"stride": step, "windows": windows, "tokens": n, "bytes": nbytes, "truncated": truncated,
                    "total_nll": total, "loss": loss, "perplexity": perplexity(loss),
                    "bits_per_byte": total / (math.log(2.0) * nbytes), "bytes_per_token": nbytes / n})
        return out
    if stride is not None:
        raise ConfigError(f"--stride: applies to causal LMs; a {objective} model is scored on disjoint rows")
    tokens = ObjectiveTokens.from_tokenizer(tokenizer)
    ids = text.ids[:max_tokens] if max_tokens else text.ids
    if objective == "mlm":
        if tokens.mask_token_id is None:
            raise ModelError(f"{model_dir}: the tokenizer has no mask_token; masked-LM evaluation needs one")
        options: dict[str, Any] = {"mask_prob": MASK_PROB}
        row_length = chunk_length("mlm", ctx, tokens=tokens)
    else:
        if tokens.eos_token_id is None or not tokens.sentinel_ids:
            raise ModelError(f"{model_dir}: span corruption needs the tokenizer's eos_token and <extra_id_N> "
                             "sentinel tokens; found "
                             f"{'no eos_token' if tokens.eos_token_id is None else 'no sentinels'}")
        options = {"noise_density": NOISE_DENSITY, "mean_span_length": MEAN_SPAN_LENGTH}
        row_length = chunk_length("span", ctx, noise_density=NOISE_DENSITY, mean_span_length=MEAN_SPAN_LENGTH)
        spans = span_lengths(row_length, NOISE_DENSITY, MEAN_SPAN_LENGTH).num_spans
        if spans > len(tokens.sentinel_ids):
            raise ConfigError(f"--context: {ctx} tokens make {spans} noise spans per row, but the tokenizer has "
                              f"{len(tokens.sentinel_ids)} sentinels; lower --context")
    total, n, rows = score_corrupted(model, torch.from_numpy(ids), objective, tokens, row_length=row_length,
                                     batch_size=batch_size, seed=seed, **options)
    if n == 0:
        raise DataError(f"{data}: no token to predict (the text holds only special tokens)")
    loss = total / n
    out.update({"rows": rows, "tokens": len(ids), "truncated": bool(max_tokens) and len(text.ids) > max_tokens,
                "target_tokens": n, "loss": loss, "perplexity": perplexity(loss), "seed": seed, **options})
    return out


# ----------------------------------------------------------------------------------------------------
# Report


def write_lm_report(out: str | Path, metrics: dict[str, Any], model_dir: str | Path) -> None:
    """``metrics.json`` and ``report.md`` into the directory ``out`` (written atomically)."""
    m = metrics
    kind = {"clm": "Causal language modelling", "mlm": "Masked language modelling",
            "span": "Span corruption (T5)"}[m["objective"]]
    lines = [f"# Evaluation of `{model_dir}`", "",
             f"{kind} on `{m['data']}` ({m['split']}: {m['documents']} documents, {m['tokens']} tokens"
             + (", cut at --max-tokens" if m.get("truncated") else "") + ")", "",
             "| metric | value |", "|---|---|"]
    shown = ["loss", "perplexity", "bits_per_byte", "bytes_per_token"]
    lines += [f"| {k} | {m[k]:.4f} |" for k in shown if k in m]
    counts = ["tokens", "bytes", "target_tokens", "context", "stride", "windows", "rows"]
    lines += [f"| {k} | {m[k]} |" for k in counts if k in m]
    lines.append("")
    if m["objective"] == "clm":
        lines += [f"Every token is scored once, in windows of {m['context']} tokens sliding by {m['stride']} "
                  f"(so each sees at least {m['context'] - m['stride'] + 1} tokens of context once the first "
                  "window is past). The loss is the total negative log-likelihood over the scored tokens "
                  "(nats per token); perplexity = exp(loss); bits per byte = total NLL / (ln 2 × UTF-8 bytes "
                  "of the text, one per document separator), which does not depend on the tokenizer."]
    elif m["objective"] == "mlm":
        lines += [f"Masked-token perplexity: rows of {m['context']} tokens, {m['mask_prob']:.0%} of the tokens "
                  f"masked (BERT's 80/10/10, seed {m['seed']}), the loss averaged over the {m['target_tokens']} "
                  "masked tokens. Each prediction sees both sides of the text: this is not comparable with a "
                  "causal LM's perplexity."]
    else:
        lines += [f"Span-corruption loss: rows of {m['context']} input tokens, {m['noise_density']:.0%} noise in "
                  f"spans of mean length {m['mean_span_length']:g} (seed {m['seed']}), the loss averaged over "
                  f"the {m['target_tokens']} target tokens. Not comparable with a causal LM's perplexity."]
    lines.append("")
    with atomic_directory(Path(out)) as tmp:
        write_json(tmp / "metrics.json", metrics)
        (tmp / "report.md").write_text("\n".join(lines), encoding="utf-8")


__all__ = [
    "HELD_OUT_FRACTION",
    "LMText",
    "clm_windows",
    "decoded_bytes",
    "evaluate_lm",
    "is_shards_dir",
    "lm_objective",
    "load_lm_text",
    "score_clm",
    "score_corrupted",
    "separator_id",
    "write_lm_report",
]

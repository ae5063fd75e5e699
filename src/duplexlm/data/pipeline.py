"""``prepare``: sources → cleaned, de-duplicated, split, tokenized shards in one streaming pass.

    read (main) ─▶ chunks ─▶ workers: clean · hash · MinHash · tokenize · word starts
                                  │ (in order)
        main: drop empty / exact duplicates / near duplicates ─▶ train or val ─▶ shard files

The output directory is built in a temporary sibling and renamed into place at the end, so an
error or Ctrl-C leaves no half-written directory and an earlier one untouched.
"""

from __future__ import annotations

import datetime
import numbers
import os
import shutil
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..errors import ConfigError
from ..fileutil import atomic_directory, check_output_dir, sha256_file, write_json
from ..tokenizer import Tokenizer
from .clean import nfkc_for
from .corpus import DataError, DocFormat, Document, OnError, SourceStats, check_options, iter_documents
from .dedup import NearDuplicateIndex
from .encode import Chunk, EncodeConfig, EncodedChunk, encode_chunks
from .shards import FORMAT, ShardWriter

CHUNK_DOCS = 512  # documents per unit of work sent to a worker...
CHUNK_CHARS = 1 << 20  # ...or fewer, once they hold this many characters
SPLITS = ("train", "val")


def _chunks(docs: Iterable[Document], with_words: bool) -> Iterator[Chunk]:
    chunk: Chunk = []
    chars = 0
    for doc in docs:
        chunk.append((doc.text, doc.words if with_words else None))
        chars += len(doc.text)
        if len(chunk) >= CHUNK_DOCS or chars >= CHUNK_CHARS:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


def _separator(tokenizer: Tokenizer, where: Path) -> int:
    """The document separator: the tokenizer's eos token, else its sep token."""
    for key in ("eos_token", "sep_token"):
        text = tokenizer.special_tokens.get(key)
        if text is not None:
            return int(tokenizer.backend.token_to_id(text))
    raise DataError(f"{where}: the tokenizer has neither an eos_token nor a sep_token to separate documents "
                    f"(special tokens: {tokenizer.special_tokens or 'none'}); add one to tokenizer_config.json")


def _dtype(tokenizer: Tokenizer) -> np.dtype:
    largest = max(tokenizer.backend.get_vocab(with_added_tokens=True).values(), default=0)
    return np.dtype(np.uint16 if largest <= np.iinfo(np.uint16).max else np.uint32)


def _check_args(val_fraction: float, seed: int, near_dedup_threshold: float, workers: int | None,
                shard_tokens: int) -> None:
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction: expected a fraction in [0, 1), found {val_fraction}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ConfigError(f"seed: expected an integer, found {seed!r}")
    if not 0.0 < near_dedup_threshold <= 1.0:
        raise ConfigError(f"near_dedup_threshold: expected a Jaccard similarity in (0, 1], found {near_dedup_threshold}")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"workers: expected a positive integer, found {workers!r}")
    if not isinstance(shard_tokens, int) or shard_tokens < 1:
        raise ConfigError(f"shard_tokens: expected a positive integer, found {shard_tokens!r}")


class _Splitter:
    """Routes kept documents to train or val. The latest document of each split is held back one
    step, so that if no document landed in val by the end (a small corpus, a small fraction) the
    last training document can move there without re-reading anything; likewise for train."""

    def __init__(self, writers: dict[str, ShardWriter], val_fraction: float) -> None:
        self.writers = writers
        self.val_fraction = val_fraction
        self.held: dict[str, tuple[np.ndarray, np.ndarray | None, int, int] | None] = dict.fromkeys(SPLITS)

    def add(self, split: str, doc: tuple[np.ndarray, np.ndarray | None, int, int]) -> None:
        self._release(split)
        self.held[split] = doc

    def _release(self, split: str) -> None:
        doc = self.held[split]
        if doc is not None:
            ids, ws, nbytes, chars = doc
            self.writers[split].add(ids, ws, nbytes=nbytes, chars=chars)
            self.held[split] = None

    def count(self, split: str) -> int:
        return self.writers[split].documents + (self.held[split] is not None)

    def finish(self) -> None:
        if self.val_fraction > 0 and self.count("val") == 0 and self.count("train") >= 2:
            self.held["val"], self.held["train"] = self.held["train"], None
        elif self.count("train") == 0 and self.count("val") >= 1:
            self.held["train"], self.held["val"] = self.held["val"], None
        for split in SPLITS:
            self._release(split)


class _Deduplicator:
    """Drops documents that cleaning left empty, exact repeats (by digest) and, with ``near``, near
    duplicates of a kept document; counts each."""

    def __init__(self, near: bool, threshold: float) -> None:
        self.seen: set[bytes] = set()
        self.index = NearDuplicateIndex(threshold=threshold) if near else None
        self.counts: dict[str, Any] = {"empty_removed": 0, "exact_duplicates_removed": 0,
                                       "near_duplicates_removed": 0, "near_dedup": near}

    def kept(self, chunk: EncodedChunk) -> Iterator[int]:
        """The indices of the chunk's documents to keep, in order."""
        for i in range(len(chunk)):
            if chunk.chars[i] == 0:
                self.counts["empty_removed"] += 1
                continue
            digest = chunk.digest(i)
            if digest in self.seen:
                self.counts["exact_duplicates_removed"] += 1
                continue
            self.seen.add(digest)
            if self.index is not None and chunk.signatures is not None \
                    and not self.index.add_if_new(chunk.signatures[i]):
                self.counts["near_duplicates_removed"] += 1
                continue
            yield i

    def summary(self) -> str:
        c = self.counts
        return (f"{c['empty_removed']} empty after cleaning, {c['exact_duplicates_removed']} exact and "
                f"{c['near_duplicates_removed']} near duplicates")


def prepare(sources: Sequence[str], out_dir: str | Path, tokenizer_dir: str | Path, *,
            text_field: str = "text", doc_format: DocFormat = "line", val_fraction: float = 0.005,
            seed: int = 1234, near_dedup: bool = False, near_dedup_threshold: float = 0.8,
            on_error: OnError = "raise", workers: int | None = None, shard_tokens: int = 100_000_000,
            word_boundaries: bool = False, progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Clean, de-duplicate, split and tokenize ``sources`` into a shards directory; return its meta.

    ``sources``: files (``.txt``; ``.jsonl`` read at ``text_field``), directories, globs and built-in
    corpora (:data:`BUILTIN_CORPORA`). Each document is NFKC-normalised and stripped of control
    characters and extra whitespace; empty and exactly repeated documents are dropped, and with
    ``near_dedup`` those whose MinHash Jaccard similarity to a kept one is ``>= near_dedup_threshold``.
    A document goes to ``val`` when a hash of ``(seed, text)`` falls under ``val_fraction`` (at least
    one does when ``val_fraction > 0`` and two documents are kept). Ids, each document followed by the
    tokenizer's eos (else sep) token, go to ``train_000.bin``... and ``val_000.bin``
    (``shard_tokens`` per file); with ``word_boundaries`` a ``.ws`` file beside each marks the tokens
    that begin a word. ``tokenizer_dir`` holds ``tokenizer.json`` (+ ``tokenizer_config.json``), copied
    into ``out_dir``. Text files keep line breaks inside documents unless ``doc_format='line'``.
    ``out_dir`` must be new or empty, or with ``overwrite`` an earlier shards directory; it must not
    hold a source or the tokenizer (:func:`duplexlm.fileutil.check_output_dir`).

    ``meta.json`` counts per split the tokens, documents, and the UTF-8 bytes and characters of the
    cleaned text, one of each per separator (so bits per byte charges for predicting document ends);
    per source the documents read and the records skipped (``on_error='skip'``) by reason; and what
    cleaning removed. ``workers`` processes (default ``min(4, cpus)``) share the per-document work;
    the output is the same for any number of them.

    >>> meta = prepare(["reviews-zh"], "data/reviews", "tokenizers/zh", val_fraction=0.01)  # doctest: +SKIP
    >>> meta["splits"]["train"]["tokens"]  # doctest: +SKIP
    2301455
    """
    check_options(text_field=text_field, doc_format=doc_format, on_error=on_error)
    _check_args(val_fraction, seed, near_dedup_threshold, workers, shard_tokens)
    inputs = [tokenizer_dir, *(s for s in sources if Path(s).exists())]
    out = check_output_dir(out_dir, "shards", overwrite=overwrite, flag="out_dir", inputs=inputs)
    workers = workers or min(4, os.cpu_count() or 1)
    stats: list[SourceStats] = []
    # sources are resolved here, before anything is written, so a missing one fails fast
    documents = iter_documents(sources, text_field=text_field, doc_format=doc_format, on_error=on_error,
                               stats=stats)
    tokenizer_dir = Path(tokenizer_dir)
    tokenizer = Tokenizer.from_dir(tokenizer_dir)
    sep_id = _separator(tokenizer, tokenizer_dir)
    dtype = _dtype(tokenizer)

    with atomic_directory(out) as tmp:
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (tokenizer_dir / name).is_file():
                shutil.copyfile(tokenizer_dir / name, tmp / name)
        config = EncodeConfig(tokenizer_file=str(tmp / "tokenizer.json"), sep_id=sep_id, dtype=dtype.name,
                              seed=int(seed), keep_newlines=doc_format != "line", near_dedup=near_dedup,
                              word_boundaries=word_boundaries, nfkc=nfkc_for(tokenizer.kind))
        writers = {s: ShardWriter(tmp, s, dtype, shard_tokens, word_boundaries) for s in SPLITS}
        splitter = _Splitter(writers, val_fraction)
        dedup = _Deduplicator(near_dedup, near_dedup_threshold)
        val_below = int(val_fraction * 2**64)
        bar = tqdm(unit=" docs", desc="prepare", disable=not progress, file=sys.stderr, dynamic_ncols=True)
        stream = encode_chunks(_chunks(documents, word_boundaries), config, workers)
        try:
            for chunk in stream:
                ends = np.cumsum(chunk.lengths)
                for i in dedup.kept(chunk):
                    a, b = int(ends[i] - chunk.lengths[i]), int(ends[i])
                    ws = None if chunk.word_starts is None else chunk.word_starts[a:b]
                    split = "val" if int(chunk.split_keys[i]) < val_below else "train"
                    splitter.add(split, (chunk.ids[a:b], ws, int(chunk.nbytes[i]), int(chunk.chars[i])))
                bar.update(len(chunk))
                bar.set_postfix(tokens=writers["train"].tokens + writers["val"].tokens, refresh=False)
            if splitter.count("train") + splitter.count("val") == 0:
                raise DataError(f"{', '.join(map(str, sources))}: no documents left to write "
                                f"({sum(s.documents for s in stats)} read; {dedup.summary()})")
        except BaseException:
            for w in writers.values():
                w.discard()  # close the files so the temporary directory can go, also on Windows
            raise
        finally:
            stream.close()  # stops the worker processes, also on errors and Ctrl-C
            bar.close()
        splitter.finish()
        meta: dict[str, Any] = {
            "format": FORMAT,
            "tokenizer": {"vocab_size": tokenizer.vocab_size, "sha256": sha256_file(tmp / "tokenizer.json")},
            "dtype": dtype.name,
            "doc_sep_token_id": sep_id,
            "splits": {s: w.close() for s, w in writers.items()},
            "sources": [s.to_dict() for s in stats],
            "cleaning": dedup.counts,
            "seed": int(seed),
            "val_fraction": val_fraction,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        write_json(tmp / "meta.json", meta)  # last: a directory with meta.json is complete
    return meta

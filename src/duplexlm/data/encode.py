"""The per-document work of corpus preparation, done in chunks by worker processes: clean, hash
(exact de-duplication and split), MinHash (near de-duplication), tokenize, mark word starts.

The main process keeps only what must see every document in order: which texts it has seen, the
near-duplicate index and the shard files. Chunks come back in the order they went out, so the
output does not depend on the number of workers.

>>> import tempfile, pathlib
>>> from tokenizers import Tokenizer, models, pre_tokenizers
>>> tok = Tokenizer(models.WordLevel({"[SEP]": 0, "a": 1, "b": 2}, unk_token="[SEP]"))
>>> tok.pre_tokenizer = pre_tokenizers.Whitespace()
>>> f = str(pathlib.Path(tempfile.mkdtemp()) / "tokenizer.json"); tok.save(f)
>>> enc = ChunkEncoder(EncodeConfig(tokenizer_file=f, sep_id=0, dtype="uint16", seed=1, word_boundaries=True))
>>> out = enc([("a  b", None), ("\\u200b", None)])
>>> out.ids.tolist(), out.lengths.tolist(), out.word_starts.tolist()
([1, 2, 0], [3, 0], [1, 1, 1])
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import re
import signal
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
from tokenizers import Encoding
from tokenizers import Tokenizer as HFTokenizer

from .clean import DIGEST_SIZE, clean_text, split_key, text_digest
from .dedup import MinHasher

# One unit of work: (raw text, words or None)
Chunk = list[tuple[str, list[str] | None]]

_WORD_SEP = "\ue000"
_CJK = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")


@dataclass(frozen=True)
class EncodeConfig:
    """Everything a worker needs; plain values, so it pickles to any start method."""

    tokenizer_file: str
    sep_id: int
    dtype: str  # "uint16" or "uint32"
    seed: int
    keep_newlines: bool = False
    near_dedup: bool = False
    word_boundaries: bool = False
    # NFKC as `duplex tokenizer train` did for this kind: not for byte-level BPE, which learnt full-width
    # ，and １ as they come (and meets them so at inference)
    nfkc: bool = True


@dataclass
class EncodedChunk:
    """Per-document results of one chunk, as flat arrays (cheap to send between processes).

    A document that cleaning left empty has ``chars == 0`` and no tokens. ``ids`` holds every
    non-empty document's tokens followed by the separator; ``lengths`` counts them (separator included).
    """

    chars: np.ndarray  # (n,) int64: characters of the cleaned text
    nbytes: np.ndarray  # (n,) int64: UTF-8 bytes of the cleaned text
    digests: bytes  # n * DIGEST_SIZE: exact-duplicate fingerprints
    split_keys: np.ndarray  # (n,) uint64: see clean.split_key
    lengths: np.ndarray  # (n,) int64
    ids: np.ndarray  # (sum(lengths),) uint16 or uint32
    word_starts: np.ndarray | None  # (sum(lengths),) uint8, or None
    signatures: np.ndarray | None  # (n, num_perm) uint32, or None

    def __len__(self) -> int:
        return len(self.chars)

    def digest(self, i: int) -> bytes:
        return self.digests[i * DIGEST_SIZE: (i + 1) * DIGEST_SIZE]


# ----------------------------------------------------------------------------------------------------
# Word starts


def _codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def _starts_from_words(text: str, words: list[str], nfkc: bool = True) -> np.ndarray | None:
    """Start positions of ``words`` found in order in the cleaned ``text``; None if one is not found
    (the words then do not describe this text, and another segmentation is used)."""
    # one cleaning call for all the words, joined by a private-use character that cleaning keeps
    joined = _WORD_SEP.join(words)
    if joined.count(_WORD_SEP) != len(words) - 1:
        return None
    starts = []
    pos = 0
    for word in clean_text(joined, nfkc=nfkc).split(_WORD_SEP):
        word = word.strip()
        if not word:
            continue
        at = text.find(word, pos)
        if at < 0:
            return None
        starts.append(at)
        pos = at + len(word)
    return np.asarray(starts, dtype=np.int64)


def _starts_from_jieba(text: str) -> np.ndarray | None:
    try:
        import jieba
    except ImportError:
        return None
    jieba.setLogLevel(logging.WARNING)  # its dictionary loads with a DEBUG line per process otherwise
    starts = []
    pos = 0
    for piece in jieba.lcut(text):
        if not piece.isspace():
            starts.append(pos)
        pos += len(piece)
    return np.asarray(starts, dtype=np.int64)


def _is_cjk(cps: np.ndarray) -> np.ndarray:
    return (((cps >= 0x3400) & (cps <= 0x4DBF)) | ((cps >= 0x4E00) & (cps <= 0x9FFF))
            | ((cps >= 0xF900) & (cps <= 0xFAFF)) | ((cps >= 0x20000) & (cps <= 0x3134F)))


def _starts_from_spaces(space: np.ndarray) -> np.ndarray:
    before = np.concatenate([[True], space[:-1]])
    return np.flatnonzero(~space & before)


def word_start_flags(text: str, enc: Encoding, words: list[str] | None = None,
                     subword_prefix: str | None = None, nfkc: bool = True) -> np.ndarray:
    """``(len(enc.ids),)`` uint8: 1 where a token begins a word, 0 where it continues one.

    Words come from ``words`` when given, else from jieba for text with CJK characters, else from
    the tokenizer's continuation prefix (WordPiece ``##``), else from whitespace (each CJK character
    a word of its own when jieba is not installed). A token begins a
    word when the first non-space character at or after its start is a word's first character that
    no earlier token reached (byte-level BPE may split one character over several tokens). So a
    leading space belongs to the word after it, as in ``Ġword``, also when it is a token of its own.
    ``text`` is cleaned: its only spaces are ``' '`` and ``'\\n'``.
    """
    n_tok = len(enc.ids)
    if n_tok == 0:
        return np.zeros(0, dtype=np.uint8)
    starts = None
    if words is not None:
        starts = _starts_from_words(text, words, nfkc)
    if starts is None and _CJK.search(text):
        starts = _starts_from_jieba(text)
    if starts is None and subword_prefix:
        return np.fromiter((not t.startswith(subword_prefix) for t in enc.tokens), dtype=np.uint8, count=n_tok)
    cps = _codepoints(text)
    space = (cps == 32) | (cps == 10)
    is_start = np.zeros(len(text) + 1, dtype=bool)
    if starts is None:  # whitespace words; without jieba each CJK character is a word (as BERT-Chinese)
        starts = _starts_from_spaces(space)
        is_start[:-1] |= _is_cjk(cps)
    is_start[starts] = True
    offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(n_tok, 2)
    s, e = offsets[:, 0], offsets[:, 1]
    solid = np.append(np.flatnonzero(~space), len(text))  # positions of non-space characters
    first = solid[np.searchsorted(solid, s)]  # first non-space character at or after each token start
    covered = np.maximum.accumulate(np.concatenate([[0], e[:-1]]))  # how far earlier tokens reach
    claimed = np.concatenate([[-1], first[:-1]])  # the word start the previous token went for
    flags = is_start[first] & (first != claimed) & (s >= covered)
    flags[0] = True  # a document's first token always begins a word
    return flags.astype(np.uint8)


# ----------------------------------------------------------------------------------------------------
# Chunks


def _subword_prefix(backend: HFTokenizer) -> str | None:
    prefix = getattr(backend.model, "continuing_subword_prefix", None)
    return prefix or None


class ChunkEncoder:
    """Turns a chunk of raw documents into an :class:`EncodedChunk`."""

    def __init__(self, config: EncodeConfig) -> None:
        self.config = config
        self.backend = HFTokenizer.from_file(config.tokenizer_file)
        # a tokenizer.json may pad or truncate every encoding (all-MiniLM: 128): documents are whole
        self.backend.no_padding()
        self.backend.no_truncation()
        # special tokens written inside a document are text, not document boundaries
        self.backend.encode_special_tokens = True
        self.subword_prefix = _subword_prefix(self.backend)
        self.minhash = MinHasher() if config.near_dedup else None
        self.dtype = np.dtype(config.dtype)

    def __call__(self, chunk: Chunk) -> EncodedChunk:
        cfg = self.config
        texts = [clean_text(text, cfg.keep_newlines, nfkc=cfg.nfkc) for text, _ in chunk]
        encoded = [t.encode("utf-8") for t in texts]
        keep = [i for i, t in enumerate(texts) if t]
        encs = self.backend.encode_batch([texts[i] for i in keep], add_special_tokens=False) if keep else []
        lengths = np.zeros(len(texts), dtype=np.int64)
        lengths[keep] = [len(e.ids) + 1 for e in encs]
        ids = np.fromiter(chain.from_iterable(chain(e.ids, (cfg.sep_id,)) for e in encs),
                          dtype=self.dtype, count=int(lengths.sum()))
        word_starts = None
        if cfg.word_boundaries:
            parts = []
            for i, e in zip(keep, encs):
                parts += [word_start_flags(texts[i], e, chunk[i][1], self.subword_prefix, cfg.nfkc),
                          np.ones(1, dtype=np.uint8)]  # the separator begins a word of its own
            word_starts = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint8)
        signatures = None
        if self.minhash is not None:
            signatures = np.zeros((len(texts), self.minhash.num_perm), dtype=np.uint32)
            if keep:
                signatures[keep] = self.minhash.signatures([texts[i] for i in keep])
        return EncodedChunk(
            chars=np.asarray([len(t) for t in texts], dtype=np.int64),
            nbytes=np.asarray([len(b) for b in encoded], dtype=np.int64),
            digests=b"".join(text_digest(t) for t in texts),
            split_keys=np.asarray([split_key(t, cfg.seed) for t in texts], dtype=np.uint64),
            lengths=lengths, ids=ids, word_starts=word_starts, signatures=signatures,
        )


# ----------------------------------------------------------------------------------------------------
# Running chunks through worker processes

_WORKER: ChunkEncoder | None = None


def _init_worker(config: EncodeConfig) -> None:
    global _WORKER
    # Ctrl-C and SIGTERM (sent to the whole process group by a terminal, `timeout` or a job runner)
    # are the main process's to handle: it lets the chunks in flight finish and closes the pool. A
    # worker killed by them would lose its chunk, and the pool would wait for it forever.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the processes are the parallelism
    _WORKER = ChunkEncoder(config)


def _work(chunk: Chunk) -> EncodedChunk:
    if _WORKER is None:
        raise RuntimeError("worker used before _init_worker ran")
    return _WORKER(chunk)


@contextlib.contextmanager
def _pool(workers: int, config: EncodeConfig) -> Iterator[Any]:
    """A pool of forked workers where the platform forks (Linux): no re-import of ``__main__``, so a
    script without an ``if __name__ == "__main__"`` guard works, and workers start at once. The
    workers run only tokenizers, NumPy and jieba, none of which the parent's threads can leave locked.
    Elsewhere (macOS, Windows) the platform's default start method."""
    if "fork" not in multiprocessing.get_all_start_methods():
        pool = multiprocessing.get_context().Pool(workers, _init_worker, (config,))
        try:
            yield pool
        finally:
            _shut_down(pool)
        return
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    # the children are told before they start that their tokenizer runs single-threaded; otherwise
    # tokenizers prints a warning at each fork once the parent has used its thread pool
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*use of fork\\(\\) may lead to deadlocks",
                                    category=DeprecationWarning)
            pool = multiprocessing.get_context("fork").Pool(workers, _init_worker, (config,))
    finally:
        if previous is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous
    try:
        yield pool
    finally:
        _shut_down(pool)


WORKER_TIMEOUT = 600.0  # seconds one chunk may take before a worker counts as stuck


def _result(result: Any) -> EncodedChunk:
    try:
        return result.get(WORKER_TIMEOUT)
    except multiprocessing.TimeoutError as e:
        raise RuntimeError(f"a tokenizer worker gave no answer in {WORKER_TIMEOUT:.0f} s; "
                           "rerun with --workers 1") from e


def _shut_down(pool: Any) -> None:
    """Close and join rather than ``terminate()``: terminating a pool of forked workers can hang
    forever in ``Pool._terminate_pool`` (CPython's handler threads wait on workers it has killed).
    Callers wait for their in-flight tasks first, so every worker is idle here."""
    pool.close()
    pool.join()


def _kill(pool: Any) -> None:
    """SIGKILL every worker (they ignore SIGTERM, which ``Pool.terminate`` sends), then let the pool
    reap them."""
    for process in getattr(pool, "_pool", []):
        process.kill()
    pool.terminate()


def encode_chunks(chunks: Iterable[Chunk], config: EncodeConfig, workers: int = 1) -> Iterator[EncodedChunk]:
    """Encode ``chunks`` in order, in ``workers`` processes (in this one when ``workers == 1``).

    At most ``2 * workers`` chunks are in flight, so a corpus streams through in bounded memory
    (``Pool.imap`` would read its whole input ahead). Closing the iterator stops the workers.
    """
    if workers <= 1:
        encoder = ChunkEncoder(config)
        for chunk in chunks:
            yield encoder(chunk)
        return
    with _pool(workers, config) as pool:
        pending: deque[Any] = deque()
        try:
            for chunk in chunks:
                pending.append(pool.apply_async(_work, (chunk,)))
                if len(pending) >= 2 * workers:
                    yield _result(pending.popleft())
            while pending:
                yield _result(pending.popleft())
        finally:
            # stopped early (an error, Ctrl-C, the consumer closing us): let the few chunks still in
            # flight finish, so the pool can be closed and joined instead of terminated
            for result in pending:
                result.wait(WORKER_TIMEOUT)
            if not all(result.ready() for result in pending):
                _kill(pool)  # a stuck worker would never take the close sentinel

"""Token shards on disk: flat binary files of token ids, read back through memory maps.

A shards directory holds, per split, ``{split}_000.bin``, ``{split}_001.bin``, ... (raw ``uint16``
or ``uint32`` ids, every document followed by the separator id), optionally ``{split}_000.ws``
... (one ``uint8`` per token: 1 where a token begins a word), the tokenizer files, and
``meta.json``, which says how to read the rest. Split boundaries between files are arbitrary: a
document may continue in the next file, and :class:`TokenShards` reads across them.

>>> shards = TokenShards("data/shards", "train")  # doctest: +SKIP
>>> window = shards.get(0, 1025)  # int64 ids; documents end in shards.doc_sep_token_id  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .corpus import DataError

FORMAT = "duplexlm-shards/1"
_FLUSH_TOKENS = 1 << 20  # tokens buffered in memory before they are written


class ShardWriter:
    """Appends documents to one split's shard files, ``shard_tokens`` tokens per file at most.

    >>> import tempfile
    >>> w = ShardWriter(Path(tempfile.mkdtemp()), "train", np.dtype("uint16"), shard_tokens=3)
    >>> w.add(np.array([5, 6, 0], dtype=np.uint16), None, nbytes=3, chars=3)
    >>> w.add(np.array([7, 0], dtype=np.uint16), None, nbytes=2, chars=2)
    >>> w.close()["files"]
    ['train_000.bin', 'train_001.bin']
    """

    def __init__(self, directory: Path, split: str, dtype: np.dtype, shard_tokens: int,
                 word_starts: bool = False) -> None:
        self.directory = directory
        self.split = split
        self.dtype = dtype
        self.shard_tokens = shard_tokens
        self.with_word_starts = word_starts
        self.files: list[str] = []
        self.ws_files: list[str] = []
        self.tokens = self.documents = self.bytes = self.characters = 0
        self._pending: list[np.ndarray] = []
        self._pending_ws: list[np.ndarray] = []
        self._pending_tokens = 0
        self._in_file = shard_tokens  # so that the first write opens a file
        self._fh: Any = None
        self._ws_fh: Any = None

    def add(self, ids: np.ndarray, word_starts: np.ndarray | None, *, nbytes: int, chars: int) -> None:
        """One document's ids (separator included), its word-start flags if kept, and its size."""
        if self.with_word_starts:
            if word_starts is None or len(word_starts) != len(ids):
                raise ValueError(f"{self.split}: expected {len(ids)} word-start flags, "
                                 f"found {None if word_starts is None else len(word_starts)}")
            self._pending_ws.append(word_starts)
        self._pending.append(ids)
        self._pending_tokens += len(ids)
        self.tokens += len(ids)
        self.documents += 1
        self.bytes += nbytes + 1  # one byte for the separator, so bits per byte counts predicting it
        self.characters += chars + 1
        if self._pending_tokens >= _FLUSH_TOKENS:
            self._flush()

    def _open_next(self) -> None:
        self._close_files()
        name = f"{self.split}_{len(self.files):03d}"
        self.files.append(name + ".bin")
        self._fh = open(self.directory / (name + ".bin"), "wb")  # noqa: SIM115 - closed in _close_files
        if self.with_word_starts:
            self.ws_files.append(name + ".ws")
            self._ws_fh = open(self.directory / (name + ".ws"), "wb")  # noqa: SIM115
        self._in_file = 0

    def _close_files(self) -> None:
        for fh in (self._fh, self._ws_fh):
            if fh is not None:
                fh.close()
        self._fh = self._ws_fh = None

    def _flush(self) -> None:
        if not self._pending:
            return
        ids = np.concatenate(self._pending).astype(self.dtype, copy=False)
        ws = np.concatenate(self._pending_ws).astype(np.uint8, copy=False) if self.with_word_starts else None
        self._pending, self._pending_ws, self._pending_tokens = [], [], 0
        pos = 0
        while pos < len(ids):
            if self._in_file >= self.shard_tokens:
                self._open_next()
            n = min(len(ids) - pos, self.shard_tokens - self._in_file)
            ids[pos: pos + n].tofile(self._fh)
            if ws is not None:
                ws[pos: pos + n].tofile(self._ws_fh)
            self._in_file += n
            pos += n

    def discard(self) -> None:
        """Close the files without writing what is buffered (the output is being abandoned)."""
        self._pending, self._pending_ws, self._pending_tokens = [], [], 0
        self._close_files()

    def close(self) -> dict[str, Any]:
        """Write what is buffered, close the files, and return this split's entry for ``meta.json``."""
        self._flush()
        self._close_files()
        return {"files": self.files, "word_starts": self.ws_files if self.with_word_starts else None,
                "tokens": self.tokens, "documents": self.documents, "bytes": self.bytes,
                "characters": self.characters}


def read_meta(data_dir: str | Path) -> dict[str, Any]:
    """``meta.json`` of a shards directory, checked to be this format.

    >>> read_meta("/nonexistent")
    Traceback (most recent call last):
    ...
    duplexlm.errors.DataError: /nonexistent: not a directory; expected token shards written by prepare()
    """
    path = Path(data_dir)
    if not path.is_dir():
        raise DataError(f"{path}: not a directory; expected token shards written by prepare()")
    file = path / "meta.json"
    if not file.is_file():
        raise DataError(f"{path}: no meta.json; expected token shards written by prepare()")
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{file}: not valid JSON: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise DataError(f"{file}: expected format {FORMAT!r}, found {found!r}")
    return meta


class TokenShards:
    """One split of a shards directory as a single sequence of tokens, read through memory maps.

    ``len()`` is the number of tokens; :meth:`get` returns a window as ``int64`` wherever it falls
    across the files. Pickles without its maps (they reopen lazily), so it can go to DataLoader
    workers.

    >>> shards = TokenShards("data/shards", "val")  # doctest: +SKIP
    >>> len(shards), shards.bytes_per_token  # doctest: +SKIP
    (52711, 1.93)
    """

    def __init__(self, data_dir: str | Path, split: str = "train") -> None:
        self.data_dir = Path(data_dir)
        self.meta = read_meta(self.data_dir)
        self.split = split
        splits = self.meta.get("splits", {})
        if split not in splits:
            raise DataError(f"{self.data_dir / 'meta.json'}: no split {split!r} (splits: {', '.join(splits)})")
        info = splits[split]
        self.dtype = np.dtype(self.meta["dtype"])
        self.files = [self.data_dir / f for f in info["files"]]
        self.ws_files = None if info.get("word_starts") is None else [self.data_dir / f for f in info["word_starts"]]
        sizes = []
        for f in self.files:
            if not f.is_file():
                raise DataError(f"{f}: missing; {self.data_dir / 'meta.json'} lists it in split {split!r}")
            nbytes = f.stat().st_size
            if nbytes % self.dtype.itemsize:
                raise DataError(f"{f}: {nbytes} bytes is not a whole number of {self.dtype} tokens (truncated?)")
            sizes.append(nbytes // self.dtype.itemsize)
        self._sizes = np.asarray(sizes, dtype=np.int64)
        self._ends = np.cumsum(self._sizes)
        total = int(self._ends[-1]) if len(sizes) else 0
        if total != info["tokens"]:
            raise DataError(f"{self.data_dir}: split {split!r} files hold {total} tokens, "
                            f"meta.json says {info['tokens']}")
        if self.ws_files is not None:
            for f, n in zip(self.ws_files, sizes):
                if not f.is_file() or f.stat().st_size != n:
                    raise DataError(f"{f}: expected {n} word-start bytes, one per token of {f.with_suffix('.bin').name}")
        self._tokens = total
        self._maps: list[np.ndarray] | None = None
        self._ws_maps: list[np.ndarray] | None = None

    # -- facts -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._tokens

    def __repr__(self) -> str:
        return f"TokenShards({str(self.data_dir)!r}, {self.split!r}: {self._tokens} tokens in {len(self.files)} files)"

    @property
    def doc_sep_token_id(self) -> int:
        return int(self.meta["doc_sep_token_id"])

    @property
    def vocab_size(self) -> int:
        return int(self.meta["tokenizer"]["vocab_size"])

    @property
    def documents(self) -> int:
        return int(self.meta["splits"][self.split]["documents"])

    @property
    def bytes_per_token(self) -> float:
        """UTF-8 bytes of text per token (separators count one byte): bits per byte = loss / ln 2 / this."""
        return self.meta["splits"][self.split]["bytes"] / max(self._tokens, 1)

    # -- reading -----------------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_maps"] = state["_ws_maps"] = None
        return state

    @staticmethod
    def _open(files: list[Path], sizes: np.ndarray, dtype: np.dtype) -> list[np.ndarray]:
        return [np.memmap(f, dtype=dtype, mode="r") if n else np.zeros(0, dtype=dtype)
                for f, n in zip(files, sizes)]

    def _gather(self, maps: list[np.ndarray], start: int, length: int, dtype: type) -> np.ndarray:
        if length < 0 or start < 0 or start + length > self._tokens:
            raise IndexError(f"{self.split}: window [{start}, {start + length}) outside the {self._tokens} tokens")
        out = np.empty(length, dtype=dtype)
        i = int(np.searchsorted(self._ends, start, side="right"))
        pos, filled = start, 0
        while filled < length:
            offset = pos - int(self._ends[i] - self._sizes[i])
            n = min(length - filled, int(self._sizes[i]) - offset)
            out[filled: filled + n] = maps[i][offset: offset + n]
            filled += n
            pos += n
            i += 1
        return out

    def get(self, start: int, length: int) -> np.ndarray:
        """Tokens ``[start, start + length)`` as ``int64``, across file boundaries."""
        if self._maps is None:
            self._maps = self._open(self.files, self._sizes, self.dtype)
        return self._gather(self._maps, int(start), int(length), np.int64)

    def word_starts(self, start: int, length: int) -> np.ndarray | None:
        """Whether each token of ``[start, start + length)`` begins a word; None without ``.ws`` files."""
        if self.ws_files is None:
            return None
        if self._ws_maps is None:
            self._ws_maps = self._open(self.ws_files, self._sizes, np.dtype(np.uint8))
        return self._gather(self._ws_maps, int(start), int(length), np.bool_)

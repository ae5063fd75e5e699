"""What a training step reads: samplers over token shards (pretraining) and over labelled examples
(fine-tuning). Both are pure functions of (seed, global sample index), so a step's batch depends only
on the step, the rank and the seed: a resumed run reads exactly what the uninterrupted one read, and
any split of a global batch over processes reads the same samples.

Global sample ``g`` lives in epoch ``g // n`` at position ``perm_epoch[g % n]`` of a permutation seeded
by ``(seed, epoch)``.

>>> import torch
>>> s = ExampleSampler([[5, 6, 7], [8, 9]], [1, 0], seed=0, pad_id=0)
>>> batch = s.batch(0, 2)
>>> batch["input_ids"].shape, batch["attention_mask"].sum().item()
(torch.Size([2, 3]), 5)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import DataError


class _Shuffled:
    """Index ``g`` → a position in ``[0, n)``: epoch by epoch, each a seeded permutation."""

    def __init__(self, n: int, seed: int, shuffle: bool) -> None:
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self._perms: dict[int, Tensor] = {}

    def index(self, g: int) -> int:
        epoch, i = divmod(g, self.n)
        if not self.shuffle:
            return i
        if epoch not in self._perms:  # keep one epoch's permutation: steps walk forwards
            self._perms = {epoch: torch.randperm(self.n, generator=torch.Generator().manual_seed(
                self.seed * 1_000_003 + epoch))}
        return int(self._perms[epoch][i])


class ChunkSampler:
    """Non-overlapping chunks of ``chunk_len`` tokens of packed token shards."""

    def __init__(self, shards: Any, chunk_len: int, seed: int, shuffle: bool = True) -> None:
        self.shards, self.chunk_len = shards, chunk_len
        self.n = len(shards) // chunk_len
        if self.n == 0:
            raise DataError(
                f"{getattr(shards, 'split', 'data')} split has {len(shards)} tokens, fewer than one sequence of "
                f"{chunk_len}; lower data.seq_len or prepare more text"
            )
        self._order = _Shuffled(self.n, seed, shuffle)

    def batch(self, start: int, count: int) -> tuple[Tensor, Tensor | None]:
        """Samples start..start+count-1 → tokens (count, chunk_len) int64 and word starts or None."""
        rows, starts = [], []
        for g in range(start, start + count):
            offset = self._order.index(g) * self.chunk_len
            rows.append(torch.from_numpy(self.shards.get(offset, self.chunk_len).astype("int64")))
            ws = self.shards.word_starts(offset, self.chunk_len)
            if ws is not None:
                starts.append(torch.from_numpy(ws.astype("bool")))
        return torch.stack(rows), (torch.stack(starts) if starts else None)


class ExampleSampler:
    """Encoded examples (token ids and a label each), batched with padding to the longest row.

    ``labels`` per example: an int (a class), a sequence of floats (regression targets), or a
    sequence of ints as long as the ids (a tag per token, -100 where none is scored).
    """

    def __init__(self, ids: Sequence[Sequence[int]], labels: Sequence[Any], seed: int, pad_id: int,
                 shuffle: bool = True, name: str = "train") -> None:
        if len(ids) != len(labels):
            raise ValueError(f"ids and labels: expected as many, found {len(ids)} and {len(labels)}")
        if not ids:
            raise DataError(f"{name} split: no examples")
        self.ids, self.labels, self.pad_id, self.name = list(ids), list(labels), pad_id, name
        self.n = len(self.ids)
        self._order = _Shuffled(self.n, seed, shuffle)

    def indices(self, start: int, count: int) -> list[int]:
        return [self._order.index(g) for g in range(start, start + count)]

    def batch(self, start: int, count: int) -> dict[str, Tensor]:
        """Samples start..start+count-1 → ``input_ids``, ``attention_mask`` (B, T) and ``labels``."""
        return self.collate(self.indices(start, count))

    def collate(self, rows: Sequence[int]) -> dict[str, Tensor]:
        width = max(len(self.ids[i]) for i in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
            ids[r, : len(self.ids[i])] = torch.tensor(self.ids[i], dtype=torch.long)
            mask[r, : len(self.ids[i])] = 1
        first = self.labels[rows[0]]
        if isinstance(first, int):  # a class per example
            labels = torch.tensor([self.labels[i] for i in rows], dtype=torch.long)
        elif len(first) and isinstance(first[0], float):  # regression targets
            labels = torch.tensor([list(self.labels[i]) for i in rows], dtype=torch.float32)
        else:  # a tag per token, padded with the ignore index
            labels = torch.full((len(rows), width), -100, dtype=torch.long)
            for r, i in enumerate(rows):
                labels[r, : len(self.labels[i])] = torch.tensor(self.labels[i], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def encode_examples(examples: Sequence[Any], tokenizer: Any, task: str, max_length: int,
                    label_names: Sequence[str] | None, split: str = "train") -> tuple[list[list[int]], list[Any]]:
    """Labelled examples (:class:`duplexlm.data.tasks.Example`) → token ids (special tokens added,
    at most ``max_length``, truncated at the end) and labels as the sampler takes them: a class id,
    a tuple of floats, or a tag id per token (-100 on special tokens and on every sub-token of a word
    but its first, which carries the word's tag)."""
    from ..data.tasks import align_labels

    index = {name: i for i, name in enumerate(label_names or [])}
    ids: list[list[int]] = []
    labels: list[Any] = []
    if task == "tag":
        encodings = encode_texts(tokenizer, [list(e.text) for e in examples], max_length, pretokenized=True)
        for e, enc in zip(examples, encodings):
            ids.append(enc.ids)
            labels.append(align_labels(enc.word_ids, [index[t] for t in e.label]))
        return ids, labels
    encodings = encode_texts(tokenizer, [e.text for e in examples], max_length)
    for e, enc in zip(examples, encodings):
        ids.append(enc.ids)
        labels.append(index[e.label] if task == "classify" else tuple(float(v) for v in e.label))
    return ids, labels


def encode_texts(tokenizer: Any, texts: Sequence[Any], max_length: int, pretokenized: bool = False) -> list[Any]:
    """Encodings (``.ids``, ``.word_ids``) of ``texts`` — strings, or lists of words with
    ``pretokenized`` — with special tokens, truncated to ``max_length`` keeping them, unpadded: the
    one way training, evaluation and prediction turn text into ids."""
    return _truncating(tokenizer.backend, max_length).encode_batch(list(texts), is_pretokenized=pretokenized)


def _truncating(backend: Any, max_length: int) -> Any:
    """A copy of the tokenizer that truncates to ``max_length`` keeping its special tokens (the
    post-processor adds them after truncation) and never pads."""
    from tokenizers import Tokenizer as HFTokenizer

    copy = HFTokenizer.from_str(backend.to_str())
    copy.no_padding()
    copy.enable_truncation(max_length)
    return copy


__all__ = ["ChunkSampler", "ExampleSampler", "encode_examples", "encode_texts"]

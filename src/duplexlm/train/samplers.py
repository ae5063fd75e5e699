"""What a training step reads: samplers over token shards (pretraining) and over labelled examples
(fine-tuning). Both are pure functions of (seed, global sample index), so a step's batch depends only
on the step, the rank and the seed: a resumed run reads exactly what the uninterrupted one read, and
any split of a global batch over processes reads the same samples.

Global sample ``g`` lives in epoch ``g // n`` at position ``perm_epoch[g % n]`` of a permutation seeded
by ``(seed, epoch)``. Text augmentation (:class:`TextAugmenter`, the training split only) keeps that: the
ids of sample ``g`` are a function of (seed, ``g``), so every epoch sees its own variant of an example
and a resumed run the same variants as the uninterrupted one.

>>> import torch
>>> s = ExampleSampler([[5, 6, 7], [8, 9]], [1, 0], seed=0, pad_id=0)
>>> batch = s.batch(0, 2)
>>> batch["input_ids"].shape, batch["attention_mask"].sum().item()
(torch.Size([2, 3]), 5)
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..data.augment import AugmentConfig, Synonyms, augment_ids, char_distribution, sample_seed
from ..data.examples import IGNORE_INDEX, collate_rows, truncating_tokenizer
from ..errors import DataError
from ..models.seq2seq import shift_right


class Shuffled:
    """Index ``g`` → a position in ``[0, n)``: epoch by epoch, each a seeded permutation.

    With ``lengths`` and ``group`` > 1 each run of ``group`` consecutive positions of the permutation
    is sorted by length, longest first (Hugging Face's ``group_by_length``): consecutive samples —
    a batch — have similar lengths and little padding, while which examples meet in a group stays
    random. Still a function of (seed, ``g``) alone."""

    def __init__(self, n: int, seed: int, shuffle: bool, lengths: Sequence[int] | None = None,
                 group: int = 0) -> None:
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.lengths = torch.tensor(lengths, dtype=torch.long) if lengths is not None and group > 1 else None
        self.group = group
        self._perms: dict[int, Tensor] = {}

    def index(self, g: int) -> int:
        epoch, i = divmod(g, self.n)
        if not self.shuffle:
            return i
        if epoch not in self._perms:  # keep one epoch's permutation: steps walk forwards
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
            if self.lengths is not None:
                perm = torch.cat([part[torch.sort(self.lengths[part], descending=True, stable=True).indices]
                                  for part in perm.split(self.group)])
            self._perms = {epoch: perm}
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
        self._order = Shuffled(self.n, seed, shuffle)

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

    ``augment``: ``(example index i, global sample index g) → ids`` (a :class:`TextAugmenter`), the ids
    :meth:`batch` reads for sample ``g`` instead of the stored ones. Only :meth:`batch` calls it;
    :meth:`collate` (evaluation) always reads the stored ids. Not for tags, whose labels follow the ids.

    ``group_by_length``: groups of that many consecutive samples sorted by length (0: off), so
    batches waste little compute on padding (see ``_Shuffled``).

    >>> s = ExampleSampler([[5, 6, 7], [8, 9]], [1, 0], seed=0, pad_id=0, shuffle=False,
    ...                    augment=lambda i, g: [5 + g])
    >>> s.batch(2, 2)["input_ids"].tolist(), s.collate([0, 1])["input_ids"].tolist()
    ([[7], [8]], [[5, 6, 7], [8, 9, 0]])
    """

    def __init__(self, ids: Sequence[Sequence[int]], labels: Sequence[Any], seed: int, pad_id: int,
                 shuffle: bool = True, name: str = "train",
                 augment: Callable[[int, int], list[int]] | None = None, group_by_length: int = 0) -> None:
        if len(ids) != len(labels):
            raise ValueError(f"ids and labels: expected as many, found {len(ids)} and {len(labels)}")
        if not ids:
            raise DataError(f"{name} split: no examples")
        self.ids, self.labels, self.pad_id, self.name = list(ids), list(labels), pad_id, name
        self.n = len(self.ids)
        first = self.labels[0]
        if augment is not None and not isinstance(first, int) and len(first) and isinstance(first[0], int):
            raise ValueError(f"{name} split: augment changes the ids, and tags per token would no longer align")
        self.augment = augment
        self._order = Shuffled(self.n, seed, shuffle, [len(x) for x in self.ids], group_by_length)

    def indices(self, start: int, count: int) -> list[int]:
        return [self._order.index(g) for g in range(start, start + count)]

    def batch(self, start: int, count: int) -> dict[str, Tensor]:
        """Samples start..start+count-1 → ``input_ids``, ``attention_mask`` (B, T) and ``labels``."""
        rows = self.indices(start, count)
        if self.augment is None:
            return self.collate(rows)
        return self.collate(rows, [self.augment(i, g) for i, g in zip(rows, range(start, start + count))])

    def collate(self, rows: Sequence[int], ids: Sequence[Sequence[int]] | None = None) -> dict[str, Tensor]:
        """Examples ``rows`` as one padded batch; ``ids``: one row of ids each instead of the stored ones."""
        seqs = [self.ids[i] for i in rows] if ids is None else ids
        width = max(len(seq) for seq in seqs)
        ids_t = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, seq in enumerate(seqs):
            ids_t[r, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[r, : len(seq)] = 1
        first = self.labels[rows[0]]
        if isinstance(first, int):  # a class per example
            labels = torch.tensor([self.labels[i] for i in rows], dtype=torch.long)
        elif len(first) and isinstance(first[0], float):  # regression targets
            labels = torch.tensor([list(self.labels[i]) for i in rows], dtype=torch.float32)
        else:  # a tag per token, padded with the ignore index
            labels = torch.full((len(rows), width), -100, dtype=torch.long)
            for r, i in enumerate(rows):
                labels[r, : len(self.labels[i])] = torch.tensor(self.labels[i], dtype=torch.long)
        return {"input_ids": ids_t, "attention_mask": mask, "labels": labels}


class PreferenceSampler(ExampleSampler):
    """Preference pairs: each a chosen and a rejected row, ``(ids, shifted labels)`` encoded as ``sft``
    encodes a conversation. A batch of ``count`` pairs has ``2 * count`` rows: the chosen ones first,
    then the rejected ones in the same order, padded to the longest (labels with -100). The order of
    the pairs (shuffling, ``group_by_length``) reads the longer row of each.

    >>> s = PreferenceSampler([([5, 6, 7], [-100, 7, -100])], [([5, 8], [8, -100])], seed=0, pad_id=0)
    >>> b = s.batch(0, 1)
    >>> b["input_ids"].tolist(), b["labels"].tolist()
    ([[5, 6, 7], [5, 8, 0]], [[-100, 7, -100], [8, -100, -100]])
    """

    def __init__(self, chosen: Sequence[tuple[list[int], list[int]]], rejected: Sequence[tuple[list[int], list[int]]],
                 seed: int, pad_id: int, shuffle: bool = True, name: str = "train", group_by_length: int = 0) -> None:
        if len(chosen) != len(rejected):
            raise ValueError(f"chosen and rejected: expected as many, found {len(chosen)} and {len(rejected)}")
        if not chosen:
            raise DataError(f"{name} split: no preference pairs")
        self.chosen, self.rejected, self.pad_id, self.name = list(chosen), list(rejected), pad_id, name
        self.n = len(self.chosen)
        self.ids = [c[0] if len(c[0]) >= len(r[0]) else r[0] for c, r in zip(self.chosen, self.rejected)]
        self.labels = [None] * self.n
        self.augment = None
        self._order = Shuffled(self.n, seed, shuffle, [len(x) for x in self.ids], group_by_length)

    def collate(self, rows: Sequence[int], ids: Sequence[Sequence[int]] | None = None) -> dict[str, Tensor]:
        return collate_rows([self.chosen[i] for i in rows] + [self.rejected[i] for i in rows], self.pad_id)


class TextAugmenter:
    """The :class:`ExampleSampler` hook that augments training texts: ``(i, g) →`` the ids of example
    ``i``'s text augmented with the seed of global sample ``g`` (:func:`~duplexlm.data.augment.sample_seed`
    of the run's seed), encoded as :func:`encode_texts` encodes (special tokens, truncated to
    ``max_length``). The truncating tokenizer is built once, and insertions draw from the units of
    ``texts`` (:func:`~duplexlm.data.augment.char_distribution`). ``ids``: the texts' ids as already
    encoded, reused when a text comes back unchanged. Not for ``tag`` examples.

    >>> from tokenizers import Tokenizer as _T, models, pre_tokenizers
    >>> from duplexlm.tokenizer import Tokenizer
    >>> backend = _T(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2, "c": 3, "d": 4}, unk_token="[UNK]"))
    >>> backend.pre_tokenizer = pre_tokenizers.Whitespace()
    >>> cfg = AugmentConfig(p=1.0, delete=0.3, swap=0.0, insert=0.0, synonym=0.0)
    >>> aug = TextAugmenter(["a b c d"], Tokenizer(backend), 16, cfg, seed=0)
    >>> aug(0, 5) == aug(0, 5), len(aug(0, 5)) < 4
    (True, True)
    """

    def __init__(self, texts: Sequence[Any], tokenizer: Any, max_length: int, config: AugmentConfig, seed: int,
                 ids: Sequence[Sequence[int]] | None = None, synonyms: Synonyms | None = None) -> None:
        if ids is not None and len(ids) != len(texts):
            raise ValueError(f"texts and ids: expected as many, found {len(texts)} and {len(ids)}")
        self.texts, self.ids, self.config, self.seed, self.synonyms = list(texts), ids, config, seed, synonyms
        self._backend = truncating_tokenizer(tokenizer.backend, max_length)
        # the same object for every sample: augment caches the prepared alphabet by identity
        self.alphabet = char_distribution(self.texts, config.level) if config.insert else None

    def encode(self, text: Any) -> list[int]:
        # encode_batch, as encode_texts: a tuple is a sentence pair there as here
        return self._backend.encode_batch([text])[0].ids

    def __call__(self, i: int, g: int) -> list[int]:
        return augment_ids(self.texts[i], sample_seed(self.seed, g), self.config, self.encode,
                           alphabet=self.alphabet, synonyms=self.synonyms,
                           ids=None if self.ids is None else self.ids[i])


def pack(lengths: Sequence[int], max_length: int, seed: int) -> list[list[int]]:
    """Examples (by length) into packs of at most ``max_length`` tokens, best fit decreasing: longest
    first (ties in a seeded order), each into the open pack it fills best, so packs come out nearly
    full. Deterministic for a seed; every example lands in exactly one pack.

    >>> pack([3, 3, 2, 4], 6, seed=0)
    [[3, 2], [0, 1]]
    """
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    order.sort(key=lambda i: -lengths[i])  # stable: equal lengths keep the seeded order
    packs: list[list[int]] = []
    by_room: dict[int, list[int]] = {}  # room left → packs with exactly that room
    for i in order:
        n = lengths[i]
        if n > max_length:
            raise ValueError(f"example {i}: {n} tokens do not fit a pack of {max_length}")
        for room in range(n, max_length):  # the tightest open pack that fits
            if by_room.get(room):
                p = by_room[room].pop(0)
                break
        else:
            p = len(packs)
            packs.append([])
            room = max_length
        packs[p].append(i)
        by_room.setdefault(room - n, []).append(p)
    return packs


class PackedSampler:
    """Training batches of packed rows: each row several examples, their ids and labels concatenated,
    ``segment_ids`` (1, 2, ... per example, 0 on padding) and ``position_ids`` restarting at 0 with
    each example. The packs are fixed once (:func:`pack`); their order is reshuffled every epoch as
    :class:`ExampleSampler` shuffles examples, a pure function of (seed, index)."""

    def __init__(self, ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], max_length: int, seed: int,
                 pad_id: int) -> None:
        if not ids:
            raise DataError("train split: no examples")
        self.ids, self.labels, self.pad_id = list(ids), list(labels), pad_id
        self.packs = pack([len(x) for x in self.ids], max_length, seed)
        self.n = len(self.packs)
        self.n_examples = len(self.ids)
        self._order = Shuffled(self.n, seed, True)

    def batch(self, start: int, count: int) -> dict[str, Tensor]:
        rows = [self.packs[self._order.index(g)] for g in range(start, start + count)]
        width = max(sum(len(self.ids[i]) for i in p) for p in rows)
        B = len(rows)
        input_ids = torch.full((B, width), self.pad_id, dtype=torch.long)
        labels = torch.full((B, width), IGNORE_INDEX, dtype=torch.long)
        segments = torch.zeros((B, width), dtype=torch.long)
        positions = torch.zeros((B, width), dtype=torch.long)
        for r, p in enumerate(rows):
            at = 0
            for k, i in enumerate(p):
                n = len(self.ids[i])
                input_ids[r, at:at + n] = torch.tensor(self.ids[i], dtype=torch.long)
                labels[r, at:at + n] = torch.tensor(self.labels[i], dtype=torch.long)
                segments[r, at:at + n] = k + 1
                positions[r, at:at + n] = torch.arange(n)
                at += n
        return {"input_ids": input_ids, "labels": labels, "segment_ids": segments, "position_ids": positions}


class Seq2SeqSampler(ExampleSampler):
    """Source → target pairs: ``ids`` are the sources, ``labels`` the target ids. A batch holds the
    padded sources and their mask, the targets as labels (-100 on padding), and the decoder's inputs
    (the targets shifted right behind the start token) with their mask."""

    def __init__(self, *args: Any, decoder_start_token_id: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.decoder_start_token_id = decoder_start_token_id

    def collate(self, rows: Sequence[int], ids: Sequence[Sequence[int]] | None = None) -> dict[str, Tensor]:
        src = [self.ids[i] for i in rows] if ids is None else ids
        tgt = [self.labels[i] for i in rows]
        B, S, T = len(rows), max(len(s) for s in src), max(len(t) for t in tgt)
        input_ids = torch.full((B, S), self.pad_id, dtype=torch.long)
        mask = torch.zeros((B, S), dtype=torch.long)
        labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
        dec_mask = torch.zeros((B, T), dtype=torch.long)
        for r, (s, t) in enumerate(zip(src, tgt)):
            input_ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[r, : len(s)] = 1
            labels[r, : len(t)] = torch.tensor(t, dtype=torch.long)
            dec_mask[r, : len(t)] = 1
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels,
                "decoder_input_ids": shift_right(labels, self.decoder_start_token_id, self.pad_id),
                "decoder_attention_mask": dec_mask}


__all__ = ["ChunkSampler", "ExampleSampler", "PackedSampler", "Seq2SeqSampler", "Shuffled", "TextAugmenter", "pack"]

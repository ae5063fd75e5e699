"""The example sampler's orders: epochs as seeded permutations, and batches grouped by length."""

from __future__ import annotations

import random

import pytest

from duplexlm.errors import DataError
from duplexlm.train.samplers import ExampleSampler


def _examples(n: int = 200, seed: int = 0) -> tuple[list[list[int]], list[int]]:
    rng = random.Random(seed)
    ids = [[5] * rng.randint(1, 60) for _ in range(n)]
    return ids, [i % 2 for i in range(n)]


def test_every_epoch_reads_every_example_once_grouped_or_not():
    ids, labels = _examples()
    for group in (0, 64):
        s = ExampleSampler(ids, labels, seed=3, pad_id=0, group_by_length=group)
        for epoch in range(2):
            seen = s.indices(epoch * 200, 200)
            assert sorted(seen) == list(range(200)), group


def test_grouped_batches_pad_less_and_stay_a_function_of_the_seed():
    ids, labels = _examples()
    plain = ExampleSampler(ids, labels, seed=3, pad_id=0)
    grouped = ExampleSampler(ids, labels, seed=3, pad_id=0, group_by_length=64)
    again = ExampleSampler(ids, labels, seed=3, pad_id=0, group_by_length=64)

    def padding(s: ExampleSampler) -> int:
        total = 0
        for step in range(200 // 8):
            b = s.batch(step * 8, 8)
            total += int((b["attention_mask"] == 0).sum())
        return total

    assert padding(grouped) < padding(plain) / 3
    assert [grouped.indices(g, 1) for g in range(400)] == [again.indices(g, 1) for g in range(400)]
    # within each group of 64 the order is longest first; the groups hold the same examples as the
    # plain permutation's
    order = grouped.indices(0, 200)
    base = plain.indices(0, 200)
    for k in range(0, 200, 64):
        lengths = [len(ids[i]) for i in order[k:k + 64]]
        assert lengths == sorted(lengths, reverse=True)
        assert sorted(order[k:k + 64]) == sorted(base[k:k + 64])
    # a different seed groups differently
    other = ExampleSampler(ids, labels, seed=4, pad_id=0, group_by_length=64)
    assert other.indices(0, 200) != order


def test_an_empty_split_is_a_named_error():
    with pytest.raises(DataError, match="validation split: no examples"):
        ExampleSampler([], [], seed=0, pad_id=0, name="validation")

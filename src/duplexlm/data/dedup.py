"""Near-duplicate detection: MinHash signatures over character 5-gram shingles, LSH banding to find
candidates, and a check of the estimated Jaccard similarity before a document is called a duplicate.

Shingles are hashed with a polynomial over code points and a SplitMix64 finaliser to 32 bits ``h``;
permutation ``k`` is Dietzfelbinger's multiply-add-shift ``(a_k * h + b_k) mod 2**64 >> 32``, a
strongly universal family with random 64-bit ``a_k, b_k`` (all vectorised in NumPy, integer
arithmetic wrapping modulo 2**64). Signatures hold the 32-bit minimum per permutation.

>>> mh = MinHasher(num_perm=64)
>>> a = mh.signature("the quick brown fox jumps over the lazy dog " * 3)
>>> b = mh.signature("the quick brown fox jumps over the lazy cat " * 3)
>>> 0.5 < estimated_jaccard(a, b) < 1.0
True
>>> index = NearDuplicateIndex(num_perm=64, threshold=0.5)
>>> index.add_if_new(a), index.add_if_new(b)
(True, False)
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError

SHINGLE = 5  # characters per shingle
NUM_PERM = 128
MINHASH_SEED = 0x5EED_D0C5  # fixed: which documents are near duplicates must not depend on the split seed
_BLOCK = 2048  # shingles per block, bounding the (num_perm, block) work array to 2 MB

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_POLY = np.uint64(0x100000001B3)  # FNV-64 prime, as the multiplier of the shingle polynomial


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijection on uint64 that spreads every input bit over the output."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def _window_hashes(texts: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """32-bit hashes of every ``k``-gram of every text, concatenated, and how many each text has.
    A text shorter than ``k`` is padded with NUL (which cleaned text never holds) to one shingle."""
    padded = [t.ljust(k, "\0") for t in texts]
    lengths = np.fromiter((len(t) for t in padded), dtype=np.int64, count=len(padded))
    cps = np.frombuffer("".join(padded).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    n = len(cps) - k + 1
    h = np.zeros(n, dtype=np.uint64)
    for j in range(k):  # polynomial over the k code points of each window, all windows at once
        h = h * _POLY + cps[j: j + n]
    counts = lengths - k + 1
    # keep the windows that lie inside one text: text d's start plus 0 .. counts[d] - 1
    starts = np.cumsum(lengths) - lengths
    first = np.cumsum(counts) - counts
    idx = np.arange(int(counts.sum())) - np.repeat(first - starts, counts)
    return _mix(h[idx]) >> np.uint64(32), counts


def shingle_hashes(text: str, k: int = SHINGLE) -> np.ndarray:
    """Distinct 32-bit hashes (as uint64) of the character ``k``-grams of ``text``.

    >>> len(shingle_hashes("abcdefg")), len(shingle_hashes("abcabcabc", k=3)), len(shingle_hashes("ab"))
    (3, 3, 1)
    """
    return np.unique(_window_hashes([text], k)[0])


class MinHasher:
    """MinHash signatures: for each of ``num_perm`` hash functions, the least hash over the shingles."""

    def __init__(self, num_perm: int = NUM_PERM, seed: int = MINHASH_SEED) -> None:
        if num_perm < 1:
            raise ValueError(f"num_perm: expected a positive number of permutations, found {num_perm}")
        self.num_perm = num_perm
        rng = np.random.default_rng(seed)
        self.a = rng.integers(0, 2**64 - 1, size=(num_perm, 1), dtype=np.uint64, endpoint=True) | np.uint64(1)
        self.b = rng.integers(0, 2**64 - 1, size=(num_perm, 1), dtype=np.uint64, endpoint=True)

    def signature(self, text: str) -> np.ndarray:
        """``(num_perm,)`` uint32; equal entries between two signatures estimate their Jaccard similarity."""
        return self.signatures([text])[0]

    def signatures(self, texts: list[str]) -> np.ndarray:
        """``(len(texts), num_perm)`` uint32, computed for many short texts at once."""
        out = np.empty((len(texts), self.num_perm), dtype=np.uint32)
        i = 0
        while i < len(texts):
            j, size = i + 1, len(texts[i])
            while j < len(texts) and size + len(texts[j]) <= _BLOCK:  # a group of texts, ~_BLOCK shingles
                size += len(texts[j])
                j += 1
            h, counts = _window_hashes(texts[i:j], SHINGLE)
            if j - i == 1:  # one text, perhaps a long one: the least value block by block
                least = np.full(self.num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
                for b in range(0, len(h), _BLOCK):
                    block = self.a * h[None, b: b + _BLOCK] + self.b  # (num_perm, block)
                    np.minimum(least, block.min(axis=1), out=least)
                least = least[None, :]
            else:
                values = self.a * h[None, :] + self.b  # (num_perm, shingles of the group)
                least = np.minimum.reduceat(values, np.cumsum(counts) - counts, axis=1).T
            # >> 32 is monotone, so the top bits of the least value are the least of the top bits
            out[i:j] = least >> np.uint64(32)
            i = j
        return out


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """The fraction of equal signature entries."""
    return float(np.count_nonzero(a == b)) / len(a)


def lsh_bands(num_perm: int, threshold: float) -> tuple[int, int]:
    """``(bands, rows)`` with ``bands * rows <= num_perm`` minimising the sum of the false-positive and
    false-negative areas under the banding curve ``1 - (1 - s**rows)**bands`` around ``threshold``.

    >>> lsh_bands(128, 0.8)
    (9, 13)
    """
    best: tuple[float, int, int] | None = None
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            lo = np.linspace(0.0, threshold, 101)
            hi = np.linspace(threshold, 1.0, 101)
            fp = np.trapezoid(1 - (1 - lo**rows) ** bands, lo)
            fn = np.trapezoid((1 - hi**rows) ** bands, hi)
            if best is None or fp + fn < best[0]:
                best = (fp + fn, bands, rows)
    assert best is not None  # the loops run at least once since num_perm >= 1
    return best[1], best[2]


class NearDuplicateIndex:
    """The kept documents' signatures, bucketed by LSH band; :meth:`add_if_new` keeps a document
    unless a kept one shares a band with it and has estimated Jaccard similarity ``>= threshold``.
    Memory grows with the kept documents (their signatures and one bucket entry per band)."""

    def __init__(self, num_perm: int = NUM_PERM, threshold: float = 0.8) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ConfigError(f"near_dedup_threshold: expected a Jaccard similarity in (0, 1], found {threshold}")
        self.num_perm = num_perm
        self.threshold = threshold
        self.bands, self.rows = lsh_bands(num_perm, threshold)
        self._buckets: list[dict[bytes, list[int]]] = [{} for _ in range(self.bands)]
        self._sigs = np.empty((1024, num_perm), dtype=np.uint32)
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add_if_new(self, sig: np.ndarray) -> bool:
        """Index ``sig`` and return True, or return False if it near-duplicates a kept signature."""
        if sig.shape != (self.num_perm,):
            raise ValueError(f"expected a signature of shape ({self.num_perm},), found {sig.shape}")
        keys = [sig[b * self.rows: (b + 1) * self.rows].tobytes() for b in range(self.bands)]
        seen: set[int] = set()
        for bucket, key in zip(self._buckets, keys):
            for j in bucket.get(key, ()):
                if j not in seen:
                    seen.add(j)
                    if estimated_jaccard(self._sigs[j], sig) >= self.threshold:
                        return False
        if self._count == len(self._sigs):
            self._sigs = np.concatenate([self._sigs, np.empty_like(self._sigs)])
        self._sigs[self._count] = sig
        for bucket, key in zip(self._buckets, keys):
            bucket.setdefault(key, []).append(self._count)
        self._count += 1
        return True

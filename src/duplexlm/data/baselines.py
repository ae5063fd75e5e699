"""Baselines a trained model must beat to show it learned something: the majority class of a
classification split, a longest-match dictionary of a tagging split's training entities, and a
character map counted from a conversion's training pairs (Simplified → Traditional).

Scored on the same test slice as the model, each is the floor below which a model has learned no
more than counting: a tagger that predicts ``O`` everywhere has entity F1 0, the dictionary tags every
entity string it has seen (and, with its most frequent type, only that).

>>> majority_rate(["pos", "neg", "pos", "pos"])
0.75
>>> d = EntityDictionary.from_tagged([(list("江泽民在北京"), ["B-PER", "I-PER", "I-PER", "O", "B-LOC", "I-LOC"])])
>>> d.tag(list("北京欢迎江泽民"))
['B-LOC', 'I-LOC', 'O', 'O', 'B-PER', 'I-PER', 'I-PER']
>>> EntityDictionary.from_entities([("PER", "江泽民"), ("LOC", "北京"), ("LOC", "京")]).tag(list("京北京江泽民"))
['O', 'B-LOC', 'I-LOC', 'B-PER', 'I-PER', 'I-PER']
>>> CharacterMap.from_pairs([("发展", "發展"), ("头发", "頭髮"), ("发现", "發現")]).convert("发头")
'發頭'
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field

from ..errors import DataError
from ..scores.labels import extract_entities


def majority_rate(labels: Iterable[Hashable]) -> float:
    """The accuracy of always predicting the most frequent label of ``labels`` (the split scored):
    the rate a classifier that learned nothing beyond the class balance reaches."""
    counts = Counter(labels)
    if not counts:
        raise DataError("majority_rate: expected at least one label, found none")
    return max(counts.values()) / sum(counts.values())


@dataclass
class EntityDictionary:
    """Entity strings seen in training, each with its most frequent type; :meth:`tag` marks the
    longest known string at each position, left to right, never overlapping.

    ``entries`` maps a string (a tuple of tokens: characters for Chinese) to its type; ``longest`` is
    the length in tokens of the longest entry.
    """

    entries: dict[tuple[str, ...], str] = field(default_factory=dict)
    longest: int = 0

    @classmethod
    def from_tagged(cls, sentences: Iterable[tuple[Sequence[str], Sequence[str]]], *,
                    min_tokens: int = 2) -> EntityDictionary:
        """From ``(tokens, BIO tags)`` pairs (a training split): every entity of ``min_tokens`` tokens
        or more (single characters are too ambiguous to look up), typed by its most frequent type
        (ties: the type sorted first)."""
        def entities() -> Iterable[tuple[str, Sequence[str]]]:
            for s, (tokens, tags) in enumerate(sentences):
                if len(tokens) != len(tags):
                    raise DataError(f"sentence {s}: expected one tag per token, found {len(tokens)} tokens and "
                                    f"{len(tags)} tags")
                for typ, start, end in extract_entities(list(tags), where=f"sentence {s}"):
                    yield typ, tokens[start:end]

        return cls.from_entities(entities(), min_tokens=min_tokens)

    @classmethod
    def from_entities(cls, entities: Iterable[tuple[str, Sequence[str]]], *, min_tokens: int = 2) -> EntityDictionary:
        """From ``(type, tokens)`` entity mentions (a string's characters for Chinese), each counted once
        per mention: as :meth:`from_tagged`, for entities listed rather than tagged (the answers of an
        instruction task)."""
        if isinstance(min_tokens, bool) or not isinstance(min_tokens, int) or min_tokens < 1:
            raise DataError(f"min_tokens: expected an integer >= 1, found {min_tokens!r}")
        types: dict[tuple[str, ...], Counter[str]] = {}
        for typ, tokens in entities:
            if len(tokens) >= min_tokens:
                types.setdefault(tuple(tokens), Counter())[typ] += 1
        entries = {key: sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] for key, c in types.items()}
        return cls(entries=entries, longest=max(map(len, entries), default=0))

    def tag(self, tokens: Sequence[str]) -> list[str]:
        """BIO tags for ``tokens``: at each position the longest entry that starts there, else ``O``."""
        tags = ["O"] * len(tokens)
        i = 0
        while i < len(tokens):
            for n in range(min(self.longest, len(tokens) - i), 0, -1):
                typ = self.entries.get(tuple(tokens[i:i + n]))
                if typ is not None:
                    tags[i:i + n] = [f"B-{typ}"] + [f"I-{typ}"] * (n - 1)
                    i += n
                    break
            else:
                i += 1
        return tags


@dataclass
class CharacterMap:
    """Character-for-character conversion counted from training pairs of equal length: each source
    character becomes the target character it most often stood for (ties: the one sorted first);
    a character never seen is copied. It cannot choose by context (发 → 發 or 髮, 后 → 後 or 后).

    ``table`` maps a source character to its target character; ``skipped`` counts the pairs left out
    because source and target differ in length (no character alignment).
    """

    table: dict[str, str] = field(default_factory=dict)
    skipped: int = 0

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]]) -> CharacterMap:
        counts: dict[str, Counter[str]] = {}
        skipped = 0
        for source, target in pairs:
            if len(source) != len(target):
                skipped += 1
                continue
            for a, b in zip(source, target):
                counts.setdefault(a, Counter())[b] += 1
        table = {a: sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] for a, c in counts.items()}
        return cls(table=table, skipped=skipped)

    def convert(self, text: str) -> str:
        return "".join(self.table.get(c, c) for c in text)


__all__ = ["CharacterMap", "EntityDictionary", "majority_rate"]

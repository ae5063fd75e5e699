"""Corpus preparation: text and JSON-lines files, directories, globs and built-in corpora →
cleaned, de-duplicated, split, tokenized shards on disk, read back through memory maps.

>>> from duplexlm.data import prepare, TokenShards  # doctest: +SKIP
>>> meta = prepare(["peoples-daily"], "data/pd", "tokenizers/zh", word_boundaries=True)  # doctest: +SKIP
>>> train = TokenShards("data/pd", "train")  # doctest: +SKIP
>>> ids, starts = train.get(0, 512), train.word_starts(0, 512)  # doctest: +SKIP
"""

from __future__ import annotations

from .clean import clean_text
from .corpus import BUILTIN_CORPORA, DataError, Document, SourceStats, iter_documents, resolve_sources
from .dedup import MinHasher, NearDuplicateIndex
from .pipeline import prepare
from .shards import FORMAT, TokenShards, read_meta

__all__ = [
    "BUILTIN_CORPORA",
    "FORMAT",
    "DataError",
    "Document",
    "MinHasher",
    "NearDuplicateIndex",
    "SourceStats",
    "TokenShards",
    "clean_text",
    "iter_documents",
    "prepare",
    "read_meta",
    "resolve_sources",
]

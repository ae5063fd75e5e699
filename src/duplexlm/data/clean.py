"""Text cleaning and exact de-duplication: Unicode NFKC, no control or format characters, one space
for each run of whitespace, and stable hashes of the cleaned text.

>>> clean_text("  Ｈｅｌｌｏ\\u200b,\\t\\tworld!\\x07 ")
'Hello, world!'
>>> clean_text("para one\\r\\n\\n\\n\\npara  two", keep_newlines=True)
'para one\\n\\npara two'
"""

from __future__ import annotations

import functools
import hashlib
import re
import sys
import unicodedata

DIGEST_SIZE = 16  # bytes kept per document for exact de-duplication
_SPACE = re.compile(r"\s+")
_HSPACE = re.compile(r"[^\S\n]+")  # whitespace other than a newline
_BLANK_LINES = re.compile(r"\n{3,}")


@functools.cache
def _control_pattern() -> re.Pattern[str]:
    """Control (Cc) and format (Cf) characters that are not whitespace: NUL, BEL, zero-width space,
    soft hyphen, byte-order mark, bidi marks... Whitespace controls (tab, newline) are handled apart."""
    ranges: list[list[int]] = []
    for c in range(sys.maxunicode + 1):
        ch = chr(c)
        if unicodedata.category(ch) in ("Cc", "Cf") and not ch.isspace():
            if ranges and ranges[-1][1] == c - 1:
                ranges[-1][1] = c
            else:
                ranges.append([c, c])
    # a class of ~25 ranges matches ten times faster than one of ~220 single characters
    body = "".join(re.escape(chr(a)) + ("-" + re.escape(chr(b)) if b > a else "") for a, b in ranges)
    return re.compile(f"[{body}]+")


def nfkc_for(kind: str) -> bool:
    """Whether text for a tokenizer of ``kind`` is NFKC-normalised: not for byte-level BPE, which learns
    full-width ，and １ as they come (and meets them so at inference); yes for the others.

    >>> nfkc_for("bpe"), nfkc_for("wordpiece")
    (False, True)
    """
    return kind != "bpe"


def clean_text(text: str, keep_newlines: bool = False, nfkc: bool = True) -> str:
    """NFKC-normalise (unless not ``nfkc``), drop control/format characters, collapse whitespace, strip.

    With ``keep_newlines`` (documents that span lines) line breaks survive: each line is cleaned on
    its own, and runs of blank lines become one blank line (a paragraph break).

    >>> clean_text("a\\nb"), clean_text("a\\nb", keep_newlines=True)
    ('a b', 'a\\nb')
    """
    if nfkc:
        text = unicodedata.normalize("NFKC", text)
    text = _control_pattern().sub("", text)
    if not keep_newlines:
        return _SPACE.sub(" ", text).strip()
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(_HSPACE.sub(" ", line).strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()


def text_digest(text: str) -> bytes:
    """A 16-byte fingerprint of a (cleaned) text for exact de-duplication.

    >>> len(text_digest("hello")), text_digest("a") == text_digest("a")
    (16, True)
    """
    return hashlib.blake2b(text.encode("utf-8"), digest_size=DIGEST_SIZE).digest()


def split_key(text: str, seed: int) -> int:
    """A stable 64-bit number drawn from ``(seed, text)``; a document goes to validation when
    ``split_key / 2**64 < val_fraction``. Independent of the order and of the other documents, so the
    split streams and the same text always lands in the same split for a seed.

    >>> split_key("hello", 1) == split_key("hello", 1) != split_key("hello", 2)
    True
    """
    key = f"duplexlm-split/{seed}".encode()[:64]
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=key).digest()
    return int.from_bytes(digest, "little")

"""Streaming text: token ids in, text pieces out — never half a character, stop strings honoured.

Byte-level BPE spells a Chinese character or an emoji over two to four tokens, so the text of the
tokens so far can end in the middle of a character (decoded as U+FFFD, �). :class:`IncrementalDetokenizer`
decodes a short window of recent tokens and emits only the text past what it already emitted, and
only once it no longer ends in �. :class:`TextStream` adds stop strings on top: text that could be the
beginning of a stop string is held back until the next tokens tell, so a stop string split over
several pieces is still found, and never shown. The pieces joined are the text of the whole
sequence (cut before the first stop string).

>>> from duplexlm.tokenizer import train_tokenizer
>>> tok = train_tokenizer(["你好，世界 🙂 hello"] * 20, "bpe", vocab_size=300, num_sentinels=0)
>>> ids = tok.encode("你好，世界 🙂 hello")
>>> stream = TextStream(tok)
>>> pieces = [stream.push(i)[0] for i in ids] + [stream.finish()]
>>> "".join(pieces) == tok.decode(ids), "\\ufffd" in "".join(pieces)
(True, False)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Text deltas of a growing token sequence (the prefix/read-offset scheme of text-generation-inference).

    ``prefix`` marks where the decoding window starts, ``read`` how far text was emitted: each push
    decodes ``ids[prefix:]`` and emits what lies past the text of ``ids[prefix:read]``, unless that
    ends in an incomplete character. Decoding a window (not the whole sequence) keeps a push O(1),
    and starting it a few tokens back keeps context-dependent decoders (spaces of SentencePiece,
    WordPiece's ``##``) right.
    """

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=self.skip_special_tokens)

    def _delta(self, final: bool) -> str:
        prefix_text = self._decode(self.ids[self.prefix:self.read])
        new_text = self._decode(self.ids[self.prefix:])
        if len(new_text) > len(prefix_text) and (final or not new_text.endswith(REPLACEMENT)):
            self.prefix, self.read = self.read, len(self.ids)
            return new_text[len(prefix_text):]
        return ""

    def push(self, token_id: int) -> str:
        """Add one token; the text it completes (often ``""`` mid-character)."""
        self.ids.append(token_id)
        return self._delta(final=False)

    def flush(self) -> str:
        """At the end: whatever is left, a truly incomplete byte sequence included (as �, as
        decoding the whole sequence gives it)."""
        return self._delta(final=True)


class TextStream:
    """One request's text as it grows: :meth:`push` each token, get ``(piece, stopped)``; :meth:`finish`
    flushes what was held back. :attr:`text` is everything emitted, which equals the text of all
    tokens cut before the first stop string.

    >>> class Chars:  # a toy tokenizer: one character per id
    ...     def decode(self, ids, skip_special_tokens=True):
    ...         return "".join(map(chr, ids))
    >>> s = TextStream(Chars(), stop=["END"])
    >>> [s.push(ord(c)) for c in "okEN"]
    [('o', False), ('k', False), ('', False), ('', False)]
    >>> s.push(ord("D")), s.text
    (('', True), 'ok')
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str] = (), skip_special_tokens: bool = True) -> None:
        self.detokenizer = IncrementalDetokenizer(tokenizer, skip_special_tokens)
        self.stop = [s for s in stop if s]
        self.text = ""  # emitted so far
        self.held = ""  # decoded, but perhaps the start of a stop string
        self.stopped = False

    def _hold_back(self, text: str) -> int:
        """Length of the longest end of ``text`` that is a proper beginning of some stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best

    def _take(self, piece: str, final: bool) -> str:
        if self.stopped:
            return ""
        buf = self.held + piece
        hits = [i for i in (buf.find(s) for s in self.stop) if i >= 0]
        if hits:  # cut before the earliest stop string; the rest is never shown
            out, self.held, self.stopped = buf[:min(hits)], "", True
        else:
            keep = 0 if final else self._hold_back(buf)
            out, self.held = buf[:len(buf) - keep], buf[len(buf) - keep:]
        self.text += out
        return out

    def push(self, token_id: int) -> tuple[str, bool]:
        """Add one token → (text to show now, whether a stop string was reached)."""
        if self.stopped:
            return "", True
        return self._take(self.detokenizer.push(token_id), final=False), self.stopped

    def finish(self) -> str:
        """The text still held back, once no token follows (nothing after a stop string)."""
        if self.stopped:
            return ""
        return self._take(self.detokenizer.flush(), final=True)


__all__ = ["IncrementalDetokenizer", "TextStream"]

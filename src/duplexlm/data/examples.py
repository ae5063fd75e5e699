"""Text into examples: the one way training, evaluation and prediction turn text into token ids.

- :func:`encode_texts`: strings (or lists of words) into encodings with special tokens, truncated.
- :func:`encode_examples`: labelled examples (:class:`~duplexlm.data.tasks.Example`) into ids and
  labels as the samplers take them (a class id, a tuple of floats, or a tag per sub-token,
  :func:`align_labels`).
- :func:`encode_chat` and :func:`encode_pair`: conversations (answers-only labels, shifted) and
  source → target pairs for generative fine-tuning.

Labels use :data:`IGNORE_INDEX` (-100, PyTorch's ``ignore_index``) where nothing is to be predicted.

>>> from duplexlm.tokenizer import train_tokenizer
>>> tok = train_tokenizer(["你好，世界", "hello"] * 20, "bpe", vocab_size=300, num_sentinels=0)
>>> msgs = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "世界"}]
>>> ids, labels, cut = encode_chat(tok, msgs, 64)
>>> tok.decode([y for y in labels if y != -100], skip_special_tokens=False)
'世界<|im_end|>'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import DataError

IGNORE_INDEX = -100  # F.cross_entropy's default ignore_index


# ----------------------------------------------------------------------------------------------------
# Understanding tasks: classify, regress, tag


def encode_examples(examples: Sequence[Any], tokenizer: Any, task: str, max_length: int,
                    label_names: Sequence[str] | None, split: str = "train") -> tuple[list[list[int]], list[Any]]:
    """Labelled examples (:class:`duplexlm.data.tasks.Example`) → token ids (special tokens added,
    at most ``max_length``, truncated at the end) and labels as the sampler takes them: a class id,
    a tuple of floats, or a tag id per token (-100 on special tokens and on every sub-token of a word
    but its first, which carries the word's tag)."""
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
    return truncating_tokenizer(tokenizer.backend, max_length).encode_batch(list(texts), is_pretokenized=pretokenized)


def truncating_tokenizer(backend: Any, max_length: int | None) -> Any:
    """A copy of the tokenizer that truncates to ``max_length`` keeping its special tokens (the
    post-processor adds them after truncation) and never pads; ``None``: one that never truncates."""
    from tokenizers import Tokenizer as HFTokenizer

    copy = HFTokenizer.from_str(backend.to_str())
    copy.no_padding()
    if max_length is None:
        copy.no_truncation()
    else:
        copy.enable_truncation(max_length)
    return copy


def count_cut(tokenizer: Any, texts: Sequence[Any], max_length: int, pretokenized: bool = False) -> tuple[int, int]:
    """``(how many of texts are longer than max_length tokens, how many tokens cutting them loses)``,
    special tokens counted as :func:`encode_texts` adds them."""
    whole = truncating_tokenizer(tokenizer.backend, None).encode_batch(list(texts), is_pretokenized=pretokenized)
    over = [len(e.ids) - max_length for e in whole if len(e.ids) > max_length]
    return len(over), sum(over)


def align_labels(word_ids: Sequence[int | None], word_labels: Sequence[int], ignore_index: int = -100) -> list[int]:
    """One label per sub-token: the first sub-token of each word gets the word's label; later
    sub-tokens of the same word and special tokens (word id ``None``) get ``ignore_index``.

    >>> align_labels([None, 0, 1, 1, 2, None], [3, 0, 5])
    [-100, 3, 0, -100, 5, -100]
    """
    out: list[int] = []
    previous: int | None = None
    for wid in word_ids:
        if wid is None or wid == previous:  # a special token, or a later piece of the same word
            out.append(ignore_index)
        else:
            if not 0 <= wid < len(word_labels):
                raise ValueError(f"word_ids: word id {wid} is out of range for {len(word_labels)} word labels")
            out.append(word_labels[wid])
        previous = wid
    return out


# ----------------------------------------------------------------------------------------------------
# Long inputs to tag: overlapping windows, each word answered by the window where it is most central


@dataclass(frozen=True)
class WordWindow:
    """Words ``[start, end)`` of an input, of which the window answers for ``[own_start, own_end)``."""

    start: int
    end: int
    own_start: int
    own_end: int


def word_windows(lengths: Sequence[int], budget: int, stride: int | None = None) -> list[WordWindow]:
    """Overlapping windows over words of ``lengths`` tokens each, at most ``budget`` tokens a window
    (a single word longer than that alone in its window, to be cut), cut at word boundaries only.

    ``stride``: the tokens consecutive windows share (as in ``transformers``' pipelines; default half
    the budget): each window starts at the first word at least ``budget - stride`` tokens after the
    start of the one before (never after its end, so no word falls between two windows), and the
    last one reaches the end. Each word is answered by the window where it has the most context on
    both sides: the largest ``min(tokens before it, tokens after it)`` in the window, ties to the
    window with more tokens, then the earlier one. The windows answer for consecutive runs of words,
    together every word once; a window that would answer for none is left out.

    >>> [(w.start, w.end, w.own_start, w.own_end) for w in word_windows([1] * 10, 4)]  # 2 tokens shared
    [(0, 4, 0, 3), (2, 6, 3, 5), (4, 8, 5, 7), (6, 10, 7, 10)]
    >>> word_windows([2, 3], 8)
    [WordWindow(start=0, end=2, own_start=0, own_end=2)]
    """
    from bisect import bisect_left, bisect_right

    if budget < 1:
        raise DataError(f"window: expected room for at least 1 token besides the special tokens, found {budget}")
    stride = budget // 2 if stride is None else stride
    if not 0 <= stride < budget:
        raise DataError(f"stride: expected 0 <= stride < {budget} (the tokens a window holds), found {stride}")
    n = len(lengths)
    off = [0]
    for k in lengths:
        off.append(off[-1] + k)
    spans: list[tuple[int, int]] = []
    s = 0
    while True:
        e = min(max(bisect_right(off, off[s] + budget, lo=s) - 1, s + 1), n)  # as many words as fit
        spans.append((s, e))
        if e >= n:
            break
        s = min(max(bisect_left(off, off[s] + budget - stride, lo=s + 1), s + 1), e)
    owner: list[int] = []
    first = 0  # the first window that still holds word w (starts and ends only grow)
    for w in range(n):
        while spans[first][1] <= w:
            first += 1
        best, key = first, (-1, -1)
        for k in range(first, len(spans)):
            a, b = spans[k]
            if a > w:
                break
            left, right = off[w] - off[a], off[b] - off[w + 1]
            if (min(left, right), left + right) > key:
                best, key = k, (min(left, right), left + right)
        owner.append(best)
    out = []
    for k, (a, b) in enumerate(spans):
        mine = [w for w in range(a, b) if owner[w] == k]
        if mine or not n:
            out.append(WordWindow(a, b, mine[0] if mine else 0, mine[-1] + 1 if mine else 0))
    return out


def stitch_windows(windows: Sequence[WordWindow], values: Sequence[Sequence[Any]]) -> list[Any]:
    """One value per word of the input from per-window values (``values[k][j]``: window ``k``'s value
    of its ``j``-th word), each word's from the window that answers for it.

    >>> stitch_windows(word_windows([1] * 5, 4), [["a"] * 4, ["b"] * 3])
    ['a', 'a', 'a', 'b', 'b']
    """
    out: list[Any] = []
    for win, vals in zip(windows, values, strict=True):
        if len(vals) != win.end - win.start:
            raise ValueError(f"values: expected {win.end - win.start} for the window of words "
                             f"{win.start}..{win.end}, found {len(vals)}")
        if win.own_start != len(out):
            raise ValueError(f"windows: expected the next to answer from word {len(out)}, found {win.own_start}")
        out.extend(vals[win.own_start - win.start: win.own_end - win.start])
    return out


def encode_windows(tokenizer: Any, word_lists: Sequence[Sequence[str]], max_length: int,
                   stride: int | None = None) -> list[list[tuple[WordWindow, Any]]]:
    """Each input (a list of words) as ``(window, encoding)`` pairs: one, the whole input, when it fits
    ``max_length`` tokens with its special tokens; else the :func:`word_windows` of what fits beside
    the special tokens, each encoded as :func:`encode_texts` encodes (its word ids count from the
    window's first word). Sub-tokens are a word's own, whatever its neighbours, so the windows hold
    exactly the tokens of the whole."""
    lists = [list(ws) for ws in word_lists]
    whole = truncating_tokenizer(tokenizer.backend, None).encode_batch(lists, is_pretokenized=True)
    budget = max_length - tokenizer.backend.num_special_tokens_to_add(False)
    out: list[list[tuple[WordWindow, Any]]] = []
    pending: list[tuple[int, int, WordWindow]] = []  # (input, its window k, the window) to encode
    for i, (ws, enc) in enumerate(zip(lists, whole)):
        if len(enc.ids) <= max_length:
            out.append([(WordWindow(0, len(ws), 0, len(ws)), enc)])
            continue
        lengths = [0] * len(ws)
        for w in enc.word_ids:
            if w is not None:
                lengths[w] += 1
        spans = word_windows(lengths, budget, stride)
        out.append([(win, None) for win in spans])
        pending += [(i, k, win) for k, win in enumerate(spans)]
    if pending:
        encodings = encode_texts(tokenizer, [lists[i][win.start:win.end] for i, _, win in pending], max_length,
                                 pretokenized=True)
        for (i, k, win), enc in zip(pending, encodings):
            out[i][k] = (win, enc)
    return out


def first_subtokens(word_ids: Sequence[int | None]) -> dict[int, int]:
    """Each word (by id) → the position of its first sub-token, which carries its tag, in order.

    >>> first_subtokens([None, 0, 0, 1, 3, None])
    {0: 1, 1: 3, 3: 4}
    """
    first: dict[int, int] = {}
    for pos, w in enumerate(word_ids):
        if w is not None and w not in first:
            first[w] = pos
    return first


@dataclass
class TagWindows:
    """Tag examples to score, every sentence whole: a long one as overlapping windows
    (:func:`encode_windows`). Per window: ``ids``; ``labels``, the tag of every word of the window on
    its first sub-token (the prediction, a CRF's Viterbi path included, runs over the whole window);
    ``loss_labels``, the same on the words it answers for only (each word's loss counted once);
    ``example``, which example; ``window``; ``scored``, the window's words with a token, in order (a
    word the tokenizer drops has none). ``gold``: every word's tag id, per example."""

    ids: list[list[int]] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)
    loss_labels: list[list[int]] = field(default_factory=list)
    example: list[int] = field(default_factory=list)
    window: list[WordWindow] = field(default_factory=list)
    scored: list[list[int]] = field(default_factory=list)
    gold: list[list[int]] = field(default_factory=list)

    @property
    def long(self) -> int:
        """How many examples take more than one window."""
        from collections import Counter

        return sum(1 for n in Counter(self.example).values() if n > 1)

    def stitch(self, preds: Sequence[Sequence[int]], fill: int) -> list[list[int]]:
        """Per-window predictions (a tag per scored position, as ``tag_predict`` gives them) → a tag per
        word of every example, each from the window that answers for it (``fill`` where a word has
        no token)."""
        per_example: list[list[tuple[WordWindow, list[int]]]] = [[] for _ in self.gold]
        for k, (i, win, scored) in enumerate(zip(self.example, self.window, self.scored)):
            values = [fill] * (win.end - win.start)
            for w, t in zip(scored, preds[k], strict=True):
                values[w] = t
            per_example[i].append((win, values))
        return [stitch_windows([w for w, _ in pairs], [v for _, v in pairs]) for pairs in per_example]


def encode_tag_windows(examples: Sequence[Any], tokenizer: Any, max_length: int, label_names: Sequence[str],
                       stride: int | None = None) -> TagWindows:
    """Tag examples (:class:`duplexlm.data.tasks.Example`) as :class:`TagWindows` of at most
    ``max_length`` tokens: the evaluation side of :func:`encode_examples`, which cuts instead."""
    index = {name: i for i, name in enumerate(label_names)}
    out = TagWindows()
    for i, (e, pairs) in enumerate(zip(examples, encode_windows(tokenizer, [list(e.text) for e in examples],
                                                                max_length, stride))):
        gold = [index[t] for t in e.label]
        out.gold.append(gold)
        for win, enc in pairs:
            word_ids = enc.word_ids
            tags = gold[win.start:win.end]
            mine = [t if win.own_start <= win.start + j < win.own_end else IGNORE_INDEX for j, t in enumerate(tags)]
            out.ids.append(enc.ids)
            out.labels.append(align_labels(word_ids, tags))
            out.loss_labels.append(align_labels(word_ids, mine))
            out.example.append(i)
            out.window.append(win)
            out.scored.append(list(first_subtokens(word_ids)))
    return out


# ----------------------------------------------------------------------------------------------------
# Generative tasks: conversations and source → target pairs


def answer_spans(tokenizer: Any, messages: Sequence[Mapping[str, str]], where: str = "") -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant answers: each from the end
    of the generation prompt before it to the end of its turn (the end-of-turn token included, the
    whitespace the template adds after it not)."""
    text = tokenizer.apply_chat_template(list(messages))
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(list(messages[:i]), add_generation_prompt=True) if i else ""
        through = tokenizer.apply_chat_template(list(messages[: i + 1]))
        if not (text.startswith(before) and text.startswith(through) and through.startswith(before)):
            raise DataError(f"{where or 'messages'}: the chat template does not render a conversation's beginning "
                            "as the beginning of the whole, so the answers cannot be located; expected a template "
                            "that renders turn by turn (as ChatML does)")
        end = len(through)
        while end > len(before) and through[end - 1] in "\n ":
            end -= 1
        spans.append((len(before), end))
    return text, spans


def encode_chat(tokenizer: Any, messages: Sequence[Mapping[str, str]], max_length: int,
                where: str = "", last_only: bool = False) -> tuple[list[int], list[int], bool]:
    """A conversation → ``(ids, shifted labels, was it cut)``, at most ``max_length`` tokens: the
    template's text tokenized as one (no special tokens added around it, as ``transformers``'
    ``apply_chat_template(tokenize=True)``), ``labels[t] = ids[t + 1]`` where token ``t + 1`` belongs to
    an answer (``last_only``: to the last answer, the completion a preference pair compares), else -100."""
    text, spans = answer_spans(tokenizer, messages, where)
    if last_only:
        spans = spans[-1:]
    enc = tokenizer.backend.encode(text, add_special_tokens=False)
    ids = list(enc.ids)
    in_answer = [any(a <= start < b for a, b in spans) for start, _ in enc.offsets]
    labels = [ids[t + 1] if in_answer[t + 1] else IGNORE_INDEX for t in range(len(ids) - 1)] + [IGNORE_INDEX]
    cut = len(ids) > max_length
    if cut:
        ids, labels = ids[:max_length], labels[:max_length]
        labels[-1] = IGNORE_INDEX  # its target was cut off
    return ids, labels, cut


def encode_pair(tokenizer: Any, source: str, target: str, max_length: int, eos_id: int) -> tuple[list[int], list[int], bool]:
    """A source → target pair as ``(source ids, target ids, was either cut)``, each ending with EOS and
    at most ``max_length`` tokens (cut before the EOS, which stays)."""
    src = tokenizer.encode(source, add_special_tokens=False)
    tgt = tokenizer.encode(target, add_special_tokens=False)
    cut = len(src) + 1 > max_length or len(tgt) + 1 > max_length
    return [*src[:max_length - 1], eos_id], [*tgt[:max_length - 1], eos_id], cut


__all__ = ["IGNORE_INDEX", "TagWindows", "WordWindow", "align_labels", "answer_spans", "count_cut", "encode_chat",
           "encode_examples", "encode_pair", "encode_tag_windows", "encode_texts", "encode_windows", "first_subtokens",
           "stitch_windows", "truncating_tokenizer", "word_windows"]


def collate_rows(rows: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int) -> dict[str, Any]:
    """``(ids, shifted labels)`` rows padded to the longest into ``input_ids``, ``attention_mask`` and
    ``labels`` (-100 where padded) tensors.

    >>> collate_rows([([5, 6], [6, -100]), ([7], [-100])], pad_id=0)["input_ids"].tolist()
    [[5, 6], [7, 0]]
    """
    import torch

    width = max(len(x) for x, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for r, (x, y) in enumerate(rows):
        ids[r, : len(x)] = torch.tensor(list(x), dtype=torch.long)
        mask[r, : len(x)] = 1
        labels[r, : len(y)] = torch.tensor(list(y), dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}

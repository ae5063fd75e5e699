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


def truncating_tokenizer(backend: Any, max_length: int) -> Any:
    """A copy of the tokenizer that truncates to ``max_length`` keeping its special tokens (the
    post-processor adds them after truncation) and never pads."""
    from tokenizers import Tokenizer as HFTokenizer

    copy = HFTokenizer.from_str(backend.to_str())
    copy.no_padding()
    copy.enable_truncation(max_length)
    return copy


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
                where: str = "") -> tuple[list[int], list[int], bool]:
    """A conversation → ``(ids, shifted labels, was it cut)``, at most ``max_length`` tokens: the
    template's text tokenized as one (no special tokens added around it, as ``transformers``'
    ``apply_chat_template(tokenize=True)``), ``labels[t] = ids[t + 1]`` where token ``t + 1`` belongs to
    an answer, else -100."""
    text, spans = answer_spans(tokenizer, messages, where)
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


__all__ = ["IGNORE_INDEX", "align_labels", "answer_spans", "encode_chat", "encode_examples", "encode_pair",
           "encode_texts", "truncating_tokenizer"]

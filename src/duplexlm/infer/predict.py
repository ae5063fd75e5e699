"""Predictions of a fine-tuned classifier, regressor or tagger on raw text, batched.

A model directory written by ``duplex finetune`` carries its head and its label names, so the task
follows from the model: ``head='classify'`` with label names classifies, without them regresses
(one output per target), ``head='tag'`` tags (one label per word — a character for Chinese, a
whitespace-separated word otherwise — read from the word's first sub-token).

>>> import torch
>>> from duplexlm.config import EncoderConfig
>>> from duplexlm.models import build_model
>>> from duplexlm.tokenizer import train_tokenizer
>>> tok = train_tokenizer(["很好的书", "很差的书"] * 20, "wordpiece", vocab_size=200)
>>> model = build_model(EncoderConfig(vocab_size=tok.vocab_size, max_seq_len=32, d_model=16, n_layer=1,
...                                   n_head=2, head="classify", num_labels=2, label_names=["负面", "正面"]))
>>> [p["label"] in ("负面", "正面") for p in classify(model, tok, ["很好", "很差"])]
[True, True]
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef]")


def task_of(model: nn.Module, task: str | None = None) -> str:
    """``classify``, ``regress`` or ``tag``, from the model's head (see the module's docstring); a
    multi-task model's from the head named ``task``."""
    c = model.config
    if getattr(c, "tasks", None):
        from ..models.heads import task_head_kind

        kind, spec = task_head_kind(c, task)
        return "tag" if kind == "tag" else "classify" if spec.get("label_names") else "regress"
    if task is not None:
        raise ConfigError(f"--task: {task!r} names a head of a multi-task model; this {c.family} has one head")
    head = getattr(c, "head", "none")
    if head == "tag":
        return "tag"
    if head == "classify":
        return "classify" if getattr(c, "label_names", None) else "regress"
    raise ConfigError(f"--model: a {c.family} with head={head!r} has no task head; expected a model written by "
                      "`duplex finetune` (head classify or tag)")


def words(text: str) -> list[str]:
    """The units a tagger labels: characters for Chinese (spaces dropped), else whitespace words.

    >>> words("江泽民 在北京"), words("Alice lives in Paris")
    (['江', '泽', '民', '在', '北', '京'], ['Alice', 'lives', 'in', 'Paris'])
    """
    if _CJK.search(text):
        return [c for c in text if not c.isspace()]
    return text.split()


def _batches(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _max_length(model: nn.Module, max_length: int | None) -> int:
    return max_length or getattr(model.config, "max_seq_len", 512)


def _pad(encodings: list[Any], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(e.ids) for e in encodings)
    ids = torch.full((len(encodings), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encodings), width), dtype=torch.long)
    for i, e in enumerate(encodings):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        mask[i, : len(e.ids)] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def logits_for(model: nn.Module, tokenizer: Any, texts: Sequence[Any], *, pretokenized: bool = False,
               batch_size: int = 32, max_length: int | None = None,
               task: str | None = None) -> list[tuple[Any, torch.Tensor]]:
    """``(encoding, logits)`` per text, run in batches padded to their longest row."""
    from ..data.examples import encode_texts

    # every text encoded in one call: the truncating tokenizer is built once, not once per batch
    everything = encode_texts(tokenizer, list(texts), _max_length(model, max_length), pretokenized=pretokenized)
    return _run(model, tokenizer, everything, batch_size, task)


@torch.no_grad()
def _run(model: nn.Module, tokenizer: Any, everything: list[Any], batch_size: int,
         task: str | None) -> list[tuple[Any, torch.Tensor]]:
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # batched by length (little padding), answered in the order given
    order = sorted(range(len(everything)), key=lambda i: len(everything[i].ids))
    out: list[Any] = [None] * len(everything)
    for rows in _batches(order, batch_size):
        encodings = [everything[i] for i in rows]
        ids, mask = _pad(encodings, pad, device)
        extra = {"task": task} if task is not None else {}  # a multi-task model's head
        logits = model(ids, attention_mask=mask, **extra).logits.float().cpu()
        for i, enc, row in zip(rows, encodings, logits):
            out[i] = (enc, row)
    return out


def _head(model: nn.Module, task: str | None, want: str) -> tuple[str, list[str] | None, Any]:
    """(the task, its label names, its CRF) of the head that ``task`` names (single-task: the one)."""
    kind = task_of(model, task)
    if (kind == "tag") != (want == "tag"):
        what = f"task {task!r} of this model" if task else "this model"
        raise ConfigError(f"--model: {what} is a {kind} head; use `duplex {'tag' if kind == 'tag' else 'classify'}`")
    if task is None:
        return kind, model.config.label_names, getattr(model, "crf", None)
    spec = model.config.tasks[task]
    return kind, spec.get("label_names"), model.task_heads[task].crf


def classify(model: nn.Module, tokenizer: Any, texts: Sequence[str], *, batch_size: int = 32,
             max_length: int | None = None, task: str | None = None) -> list[dict[str, Any]]:
    """Per text: ``label`` (the most probable), ``score`` (its probability) and ``probs`` (every
    label's); a regressor gives ``values`` (one per target) instead. ``task``: which head of a
    multi-task model."""
    if not texts:
        raise ConfigError("texts: expected at least one text")
    kind, names, _ = _head(model, task, "classify")
    regress = kind == "regress"
    results = []
    for _, logits in logits_for(model, tokenizer, texts, batch_size=batch_size, max_length=max_length, task=task):
        if regress:
            results.append({"values": logits.tolist()})
            continue
        probs = logits.softmax(-1)
        best = int(probs.argmax())
        results.append({"label": names[best], "score": float(probs[best]),
                        "probs": {n: float(p) for n, p in zip(names, probs)}})
    return results


def tag(model: nn.Module, tokenizer: Any, texts: Sequence[str | Sequence[str]], *, batch_size: int = 32,
        max_length: int | None = None, task: str | None = None, stride: int | None = None) -> list[dict[str, Any]]:
    """Per text (a string, split by :func:`words`, or a list of words already): ``words`` with their
    ``tags``, and the ``entities`` read from the BIO tags as ``{"type", "text", "start", "end"}``
    (word indices, end exclusive). ``task``: which head of a multi-task model.

    A text longer than ``max_length`` tokens (default: the model's context) is tagged whole, in
    overlapping windows (:func:`duplexlm.data.examples.encode_windows`; ``stride``: the tokens two
    windows share, default half a window): each window is predicted on its own (a CRF's Viterbi path
    over its words), and each word takes its tag from the window where it has the most context on
    both sides. A word the tokenizer turns into no token at all gets ``O``."""
    from ..data.examples import encode_windows, first_subtokens, stitch_windows
    from ..scores.labels import extract_entities

    if not texts:
        raise ConfigError("texts: expected at least one text")
    _, names, crf = _head(model, task, "tag")
    if not names:
        count = model.config.tasks[task]["num_labels"] if task else model.config.num_labels
        names = [str(i) for i in range(count)]
    split = [words(t) if isinstance(t, str) else list(t) for t in texts]
    windows = encode_windows(tokenizer, split, _max_length(model, max_length), stride)
    flat = _run(model, tokenizer, [enc for pairs in windows for _, enc in pairs], batch_size, task)
    results = []
    at = 0
    for ws, pairs in zip(split, windows):
        values = []  # per window: a tag per word of the window
        for win, _ in pairs:
            enc, logits = flat[at]
            at += 1
            first = first_subtokens(enc.word_ids)  # word → its first sub-token, which carries its tag
            if crf is not None and first:  # the best tag sequence over the window's words, not each word alone
                path = crf.decode(logits[list(first.values())][None])[0]
            else:
                pred = logits.argmax(-1).tolist()
                path = [pred[pos] for pos in first.values()]
            row = ["O"] * (win.end - win.start)
            for w, t in zip(first, path):
                row[w] = names[t]
            values.append(row)
        tags = stitch_windows([win for win, _ in pairs], values)
        joiner = "" if ws and _CJK.search("".join(ws)) else " "
        entities = [{"type": t, "text": joiner.join(ws[a:b]), "start": a, "end": b}
                    for t, a, b in extract_entities(tags)]
        results.append({"words": ws, "tags": tags, "entities": entities})
    return results


__all__ = ["classify", "logits_for", "tag", "task_of", "words"]

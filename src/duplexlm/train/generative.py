"""Generative fine-tuning objectives — ``sft`` for decoders, ``seq2seq`` for encoder-decoders — as
entries of the one objective registry, beside pretraining and the understanding tasks.

``sft`` (instruction tuning): a conversation is rendered with the tokenizer's chat template and
tokenized once; the loss is on the assistant's tokens only — each answer's content and the
end-of-turn token that closes it (so the model learns to stop), never the system or user turns, nor
the template's own text. Labels are stored already shifted (``labels[t]`` is the token that
``logits[t]`` must predict, -100 elsewhere), so the loss is a plain token cross-entropy and the count
of a batch is its labelled positions. With ``data.packing`` several short conversations share one row:
each token attends only to the earlier tokens of its own conversation and positions restart at each,
so packing changes no conversation's loss, only how many fit a step.

``seq2seq``: source → target pairs, teacher-forced (the decoder reads the target shifted right behind
its start token), optionally with label smoothing. Sources and targets end with the end-of-sequence
token, as T5's do.

An example longer than ``data.seq_len`` is cut (``data.overflow=truncate``, counted in the log) or is
an error naming its file and line (``overflow=error``); a conversation cut before any of its answers
is dropped and counted.

>>> from duplexlm.tokenizer import train_tokenizer
>>> tok = train_tokenizer(["你好，世界", "hello"] * 20, "bpe", vocab_size=300, num_sentinels=0)
>>> msgs = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "世界"}]
>>> ids, labels, cut = encode_chat(tok, msgs, 64)
>>> tok.decode([y for y in labels if y != -100], skip_special_tokens=False)
'世界<|im_end|>'
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import DataError
from .data import ExampleSampler, _Shuffled
from .objectives import IGNORE_INDEX, LossOptions, ObjectiveSpec, register

# ----------------------------------------------------------------------------------------------------
# Encoding


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


@torch.no_grad()
def grow_vocab(model: nn.Module, vocab_size: int) -> None:
    """Grow a model's token embedding (and untied LM head) to ``vocab_size`` rows, for tokens added
    to its tokenizer: the old rows stay, each new row starts at the mean of the old ones (a token the
    model has never seen starts as an average token, not as noise that could dominate the softmax)."""
    c = model.config
    old = c.vocab_size
    if vocab_size <= old:
        return
    embed = model.embed
    new_embed = nn.Embedding(vocab_size, embed.embedding_dim, device=embed.weight.device, dtype=embed.weight.dtype)
    new_embed.weight[:old] = embed.weight
    new_embed.weight[old:] = embed.weight.mean(0)
    model.embed = new_embed
    head = getattr(model, "lm_head", None)
    tied = getattr(c, "tie_word_embeddings", False)
    if head is not None and not tied:
        new_head = nn.Linear(head.in_features, vocab_size, bias=False, device=head.weight.device,
                             dtype=head.weight.dtype)
        new_head.weight[:old] = head.weight
        new_head.weight[old:] = head.weight.mean(0)
        model.lm_head = new_head
    elif head is not None:
        model.lm_head = nn.Linear(head.in_features, vocab_size, bias=False, device=head.weight.device,
                                  dtype=head.weight.dtype)
    model.config = c.replace(vocab_size=vocab_size)
    if hasattr(model, "tie_weights"):
        model.tie_weights()


# ----------------------------------------------------------------------------------------------------
# Samplers


def pack(lengths: Sequence[int], max_length: int, seed: int) -> list[list[int]]:
    """Examples (by length) into packs of at most ``max_length`` tokens, best fit decreasing: longest
    first (ties in a seeded order), each into the open pack it fills best, so packs come out nearly
    full. Deterministic for a seed; every example lands in exactly one pack.

    >>> pack([3, 3, 2, 4], 6, seed=0)
    [[3, 2], [0, 1]]
    """
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    order.sort(key=lambda i: -lengths[i])  # stable: equal lengths keep the seeded order
    packs: list[list[int]] = []
    by_room: dict[int, list[int]] = {}  # room left → packs with exactly that room
    for i in order:
        n = lengths[i]
        if n > max_length:
            raise ValueError(f"example {i}: {n} tokens do not fit a pack of {max_length}")
        for room in range(n, max_length):  # the tightest open pack that fits
            if by_room.get(room):
                p = by_room[room].pop(0)
                break
        else:
            p = len(packs)
            packs.append([])
            room = max_length
        packs[p].append(i)
        by_room.setdefault(room - n, []).append(p)
    return packs


class PackedSampler:
    """Training batches of packed rows: each row several examples, their ids and labels concatenated,
    ``segment_ids`` (1, 2, ... per example, 0 on padding) and ``position_ids`` restarting at 0 with
    each example. The packs are fixed once (:func:`pack`); their order is reshuffled every epoch as
    :class:`~duplexlm.train.data.ExampleSampler` shuffles examples, a pure function of (seed, index)."""

    def __init__(self, ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], max_length: int, seed: int,
                 pad_id: int) -> None:
        if not ids:
            raise DataError("train split: no examples")
        self.ids, self.labels, self.pad_id = list(ids), list(labels), pad_id
        self.packs = pack([len(x) for x in self.ids], max_length, seed)
        self.n = len(self.packs)
        self.n_examples = len(self.ids)
        self._order = _Shuffled(self.n, seed, True)

    def batch(self, start: int, count: int) -> dict[str, Tensor]:
        rows = [self.packs[self._order.index(g)] for g in range(start, start + count)]
        width = max(sum(len(self.ids[i]) for i in p) for p in rows)
        B = len(rows)
        input_ids = torch.full((B, width), self.pad_id, dtype=torch.long)
        labels = torch.full((B, width), IGNORE_INDEX, dtype=torch.long)
        segments = torch.zeros((B, width), dtype=torch.long)
        positions = torch.zeros((B, width), dtype=torch.long)
        for r, p in enumerate(rows):
            at = 0
            for k, i in enumerate(p):
                n = len(self.ids[i])
                input_ids[r, at:at + n] = torch.tensor(self.ids[i], dtype=torch.long)
                labels[r, at:at + n] = torch.tensor(self.labels[i], dtype=torch.long)
                segments[r, at:at + n] = k + 1
                positions[r, at:at + n] = torch.arange(n)
                at += n
        return {"input_ids": input_ids, "labels": labels, "segment_ids": segments, "position_ids": positions}


class Seq2SeqSampler(ExampleSampler):
    """Source → target pairs: ``ids`` are the sources, ``labels`` the target ids. A batch holds the
    padded sources and their mask, the targets as labels (-100 on padding), and the decoder's inputs
    (the targets shifted right behind the start token) with their mask."""

    def __init__(self, *args: Any, decoder_start_token_id: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.decoder_start_token_id = decoder_start_token_id

    def collate(self, rows: Sequence[int], ids: Sequence[Sequence[int]] | None = None) -> dict[str, Tensor]:
        from ..models.seq2seq import shift_right

        src = [self.ids[i] for i in rows] if ids is None else ids
        tgt = [self.labels[i] for i in rows]
        B, S, T = len(rows), max(len(s) for s in src), max(len(t) for t in tgt)
        input_ids = torch.full((B, S), self.pad_id, dtype=torch.long)
        mask = torch.zeros((B, S), dtype=torch.long)
        labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
        dec_mask = torch.zeros((B, T), dtype=torch.long)
        for r, (s, t) in enumerate(zip(src, tgt)):
            input_ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[r, : len(s)] = 1
            labels[r, : len(t)] = torch.tensor(t, dtype=torch.long)
            dec_mask[r, : len(t)] = 1
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels,
                "decoder_input_ids": shift_right(labels, self.decoder_start_token_id, self.pad_id),
                "decoder_attention_mask": dec_mask}


# ----------------------------------------------------------------------------------------------------
# Forward, loss, token accuracy


def packed_mask(segment_ids: Tensor) -> Tensor:
    """(B, T) segment ids → the boolean (B, 1, T, T) mask of packed rows: token ``i`` sees token
    ``j <= i`` of the same segment. A padding position (segment 0) sees only itself, so no row of the
    attention is empty (an empty row would be NaN, and NaN times a zero gradient is still NaN).

    >>> packed_mask(torch.tensor([[1, 1, 2, 0]]))[0, 0].int().tolist()
    [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    """
    T = segment_ids.shape[1]
    same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, :, None] > 0)
    causal = torch.ones(T, T, dtype=torch.bool, device=segment_ids.device).tril()
    eye = torch.eye(T, dtype=torch.bool, device=segment_ids.device)
    return ((same & causal) | eye)[:, None]


def sft_forward(model: nn.Module, batch: Mapping[str, Tensor]) -> Any:
    """The decoder on a batch, with the vocabulary logits at the labelled positions only: (N, V) for
    the N answer tokens, row-major (the same loss; the head's cost on the prompts saved)."""
    scored = batch["labels"] != IGNORE_INDEX
    if "segment_ids" in batch:
        return model(batch["input_ids"], attention_mask=packed_mask(batch["segment_ids"]),
                     position_ids=batch["position_ids"], logits_at=scored)
    return model(batch["input_ids"], attention_mask=batch.get("attention_mask"), logits_at=scored)


def seq2seq_forward(model: nn.Module, batch: Mapping[str, Tensor]) -> Any:
    return model(batch["input_ids"], attention_mask=batch.get("attention_mask"),
                 decoder_input_ids=batch["decoder_input_ids"],
                 decoder_attention_mask=batch.get("decoder_attention_mask"))


def example_index(batch: Mapping[str, Tensor]) -> Tensor:
    """The example each labelled position belongs to, row-major over the labelled positions: its row,
    or in a packed row (``segment_ids``) its row and conversation."""
    scored = batch["labels"] != IGNORE_INDEX
    rows = scored.nonzero()[:, 0]
    if "segment_ids" in batch:
        segments = batch["segment_ids"]
        rows = rows * (int(segments.max()) + 1) + segments[scored]
    return rows


def example_count(batch: Mapping[str, Tensor]) -> int:
    """How many examples of a batch have a labelled token: what ``reduction="example"`` averages over."""
    return int(example_index(batch).unique().numel())


def _token_loss(logits: Tensor | None, labels: Tensor, options: LossOptions,
                batch: Mapping[str, Tensor]) -> tuple[Tensor, int]:
    """Cross-entropy of ``logits`` (..., V) against ``labels`` (...), the batch's labelled positions
    or all of them: a mean over target tokens, or (``options.reduction == "example"``) over examples."""
    if logits is None or logits.shape[:-1] != labels.shape:
        found = None if logits is None else tuple(logits.shape)
        raise ValueError(f"logits: expected shape {tuple(labels.shape)} + (V,), found {found} (does the model have "
                         "an LM head?)")
    if options.reduction == "example":
        scored = labels != IGNORE_INDEX
        per_token = F.cross_entropy(logits.float()[scored], labels[scored], reduction="none",
                                    label_smoothing=options.label_smoothing)
        _, which, sizes = example_index(batch).unique(return_inverse=True, return_counts=True)
        sums = per_token.new_zeros(len(sizes)).index_add(0, which, per_token)
        return (sums / sizes).sum() / max(len(sizes), 1), len(sizes)
    total = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                            ignore_index=IGNORE_INDEX, reduction="sum", label_smoothing=options.label_smoothing)
    count = (labels != IGNORE_INDEX).sum()
    return total / count.clamp(min=1), int(count)


def sft_loss(model: nn.Module, batch: Mapping[str, Tensor], options: LossOptions) -> tuple[Tensor, int]:
    """Cross-entropy over the answers' tokens (labels already shifted; logits at those only)."""
    labels = batch["labels"]
    return _token_loss(sft_forward(model, batch).logits, labels[labels != IGNORE_INDEX], options, batch)


def seq2seq_loss(model: nn.Module, batch: Mapping[str, Tensor], options: LossOptions) -> tuple[Tensor, int]:
    """Cross-entropy over the target tokens, teacher-forced."""
    return _token_loss(seq2seq_forward(model, batch).logits, batch["labels"], options, batch)


def token_predict(logits: Tensor, batch: Mapping[str, Tensor], model: Any = None) -> tuple[list[int], list[int]]:
    """Per example: the number of its labelled tokens predicted right (argmax), and of its labelled
    tokens. ``logits``: (B, T, V), or (N, V) at the labelled positions only (``sft``)."""
    labels = batch["labels"]
    scored = labels != IGNORE_INDEX
    if logits.dim() == 2:  # flattened over the scored positions, row-major
        hit = (logits.argmax(-1) == labels[scored]).long()
        right = torch.zeros(labels.shape[0], dtype=torch.long, device=labels.device)
        right.index_add_(0, scored.nonzero()[:, 0], hit)
        return right.tolist(), scored.sum(1).tolist()
    right = (logits.argmax(-1) == labels) & scored
    return right.sum(1).tolist(), scored.sum(1).tolist()


def token_metrics(right: list[int], total: list[int], label_names: Any = None) -> dict[str, float]:
    return {"token_accuracy": sum(right) / max(sum(total), 1)}


SFT = register(ObjectiveSpec(
    name="sft", families=("decoder",), head="lm", data="examples", loss=sft_loss, default_metric="loss",
    predict=token_predict, metrics=token_metrics, forward=sft_forward))
SEQ2SEQ = register(ObjectiveSpec(
    name="seq2seq", families=("seq2seq",), head="lm", data="examples", loss=seq2seq_loss, default_metric="loss",
    predict=token_predict, metrics=token_metrics, forward=seq2seq_forward))


__all__ = ["SEQ2SEQ", "SFT", "PackedSampler", "Seq2SeqSampler", "answer_spans", "encode_chat", "encode_pair",
           "example_count", "example_index", "grow_vocab",
           "pack", "packed_mask", "seq2seq_loss", "sft_loss"]

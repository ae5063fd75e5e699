"""Where a run's batches come from: packed token shards (pretraining), labelled examples (classify,
regress, tag), conversations and pairs (sft, seq2seq), and several tasks at once (multi), each a
:class:`Source` holding its samplers, tokenizer and what the model must be built for."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import objectives as obj
from ..errors import ConfigError, DataError, DuplexError
from ..objectives import tasks
from ..tokenizer import Tokenizer
from .config import TrainConfig
from .samplers import ChunkSampler, ExampleSampler


def check_objective_data(cfg: TrainConfig, shards: Any, tokens: obj.ObjectiveTokens) -> None:
    """What the objective needs from the data and its tokenizer, checked before anything is written."""
    where = f"data.path={cfg.data.path}"
    if cfg.objective_args.whole_word:
        if cfg.objective not in ("mlm", "rtd"):
            raise ConfigError(f"objective_args.whole_word: applies to objectives 'mlm' and 'rtd' only, found "
                              f"{cfg.objective!r}")
        if shards.ws_files is None:
            raise ConfigError(f"objective_args.whole_word: {where} was prepared without word boundaries; prepare "
                              "it again with `duplex data prepare ... --word-boundaries`")
    if cfg.objective in ("mlm", "rtd") and tokens.mask_token_id is None:
        raise ConfigError(f"objective {cfg.objective}: the tokenizer in {where} has no mask token; train one with "
                          "`duplex tokenizer train --kind wordpiece` (or add [MASK] to its special tokens)")
    if cfg.objective == "span":
        if tokens.eos_token_id is None or not tokens.sentinel_ids:
            raise ConfigError(f"objective span: the tokenizer in {where} needs an eos token and <extra_id_N> "
                              "sentinel tokens; train one with `duplex tokenizer train`")
        sizes = obj.span_lengths(obj.chunk_length("span", cfg.data.seq_len, tokens=tokens,
                                                  **objective_kwargs(cfg)), **objective_kwargs(cfg))
        if sizes.num_spans > len(tokens.sentinel_ids):
            raise ConfigError(f"data.seq_len={cfg.data.seq_len}: span corruption makes {sizes.num_spans} spans per "
                              f"sequence, but the tokenizer has {len(tokens.sentinel_ids)} sentinel tokens; lower "
                              "data.seq_len or raise objective_args.mean_span_length")


@dataclass
class Source:
    """What the data side gives setup: the tokenizer, the samplers, and for tasks the labels."""

    tokenizer: Tokenizer
    tokens: Any
    vocab_size: int
    train: Any
    val: Any
    bytes_per_token: float | None = None
    label_names: list[str] | None = None
    num_labels: int = 0
    train_labels: list[Any] = field(default_factory=list)
    test: ExampleSampler | None = None
    model_tokenizer_dir: str | None = None
    notes: list[str] = field(default_factory=list)  # what reading the data did (cut examples, ...)
    examples: dict[str, list[Any]] = field(default_factory=dict)  # sft, seq2seq: each split's examples


def shards_source(cfg: TrainConfig) -> Source:
    from ..data import TokenShards

    train_shards, val_shards = TokenShards(cfg.data.path, "train"), TokenShards(cfg.data.path, "val")
    tokenizer = Tokenizer.from_dir(cfg.data.path)
    tokens = obj.ObjectiveTokens.from_tokenizer(tokenizer)
    check_objective_data(cfg, train_shards, tokens)
    span_args = objective_kwargs(cfg) if cfg.objective == "span" else {}
    chunk = obj.chunk_length(cfg.objective, cfg.data.seq_len, tokens=tokens, **span_args)
    return Source(tokenizer=tokenizer, tokens=tokens, vocab_size=train_shards.vocab_size,
                   train=ChunkSampler(train_shards, chunk, cfg.seed),
                   val=ChunkSampler(val_shards, chunk, cfg.seed, shuffle=False),
                   bytes_per_token=val_shards.bytes_per_token)


def examples_source(cfg: TrainConfig, objective: str | None = None, data: Any = None) -> Source:
    """Labelled examples: loaded, split, encoded with the model's tokenizer, into samplers; with
    ``augment.p > 0`` the training sampler (only) augments each sample's text. ``objective`` and
    ``data`` (the fields train, validation, test, text_field, label_field): one task of a multi-task
    run (default: the run's own)."""
    from ..data.examples import count_cut, encode_examples, encode_tag_windows
    from ..data.tasks import load_task_data
    from .samplers import TextAugmenter

    objective = objective or cfg.objective
    data = data if data is not None else cfg.data
    tokenizer = task_tokenizer(cfg)
    task = load_task_data(objective, data.train, data.validation or None, data.test or None,
                          text_field=data.text_field, label_field=data.label_field, seed=cfg.data.split_seed)
    splits = dict(task.splits)
    validation_split(splits, cfg.data.split_seed)
    names = task.label_names
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    L = cfg.data.seq_len
    notes: list[str] = []
    if cfg.data.add_unknown_chars:
        from ..tokenizer import add_unknown_chars

        added, unknown, total = add_unknown_chars(tokenizer, [e.text for e in splits["train"]],
                                                  cfg.data.add_unknown_chars)
        notes.append(f"data.add_unknown_chars: {unknown / max(total, 1):.1%} of the training split's characters "
                     f"were unknown to the tokenizer; added {len(added)} characters seen at least "
                     f"{cfg.data.add_unknown_chars} time{'s' if cfg.data.add_unknown_chars > 1 else ''} "
                     f"(vocabulary {tokenizer.vocab_size}; the embedding grows with them)")
    # tag: training cuts a sentence to data.seq_len; validation and test score every word of it, in windows
    windowed = {k: encode_tag_windows(v, tokenizer, L, names) for k, v in splits.items()
                if objective == "tag" and k != "train"}
    encoded = {k: encode_examples(v, tokenizer, objective, L, names, split=k)
               for k, v in splits.items() if k not in windowed}
    if objective == "tag":
        cut, lost = count_cut(tokenizer, [list(e.text) for e in splits["train"]], L, pretokenized=True)
        if cut:
            notes.append(f"train: {cut} of {len(splits['train'])} sentences cut to data.seq_len={L} tokens "
                         f"({lost} tokens lost)")
        for k, w in windowed.items():
            if w.long:
                notes.append(f"{k}: {w.long} of {len(w.gold)} sentences longer than data.seq_len={L} tokens, "
                             f"scored whole in {len(w.example)} overlapping windows")
    num_labels = len(names) if names else task.num_targets
    augment = cfg.augment.config()
    # a function of (seed, global sample index): a resumed run reads the variants the uninterrupted one read
    augmenter = (TextAugmenter([e.text for e in splits["train"]], tokenizer, cfg.data.seq_len, augment, cfg.seed,
                               ids=encoded["train"][0]) if augment.enabled else None)

    def held_out(split: str) -> ExampleSampler:
        if split in windowed:
            return TagWindowSampler(windowed[split], seed=cfg.seed, pad_id=pad, name=split)
        return ExampleSampler(*encoded[split], seed=cfg.seed, pad_id=pad, shuffle=False, name=split)

    return Source(
        tokenizer=tokenizer, tokens=None, vocab_size=tokenizer.vocab_size,
        train=ExampleSampler(*encoded["train"], seed=cfg.seed, pad_id=pad, name="train", augment=augmenter,
                             group_by_length=50 * cfg.batch_size * cfg.grad_accum * world_size()
                             if cfg.data.group_by_length else 0),
        val=held_out("validation"), test=held_out("test") if "test" in splits else None,
        label_names=names, num_labels=num_labels, train_labels=encoded["train"][1], notes=notes)


class TagWindowSampler(ExampleSampler):
    """A tag task's validation or test split for scoring, each row a window of a sentence
    (:class:`~duplexlm.data.examples.TagWindows`): ``labels`` tag every word of the window (the
    prediction runs over all of them), :meth:`loss_labels` only those it answers for, and
    ``windows.stitch`` puts the rows' predictions back together into whole sentences."""

    def __init__(self, windows: Any, seed: int, pad_id: int, name: str) -> None:
        super().__init__(windows.ids, windows.labels, seed=seed, pad_id=pad_id, shuffle=False, name=name)
        self.windows = windows

    def loss_labels(self, rows: Sequence[int], like: torch.Tensor) -> torch.Tensor:
        """The rows' ``loss_labels`` padded as ``like`` (the batch's labels) is, -100 past each row."""
        out = torch.full_like(like, obj.IGNORE_INDEX)
        for r, i in enumerate(rows):
            row = self.windows.loss_labels[i]
            out[r, : len(row)] = torch.tensor(row, dtype=out.dtype)
        return out


def task_tokenizer(cfg: TrainConfig) -> Tokenizer:
    """The tokenizer of a fine-tuning run: the starting model's, or ``tokenizer=`` from scratch."""
    if cfg.init_from:
        tok_dir = cfg.init_from
    elif cfg.tokenizer:
        tok_dir = cfg.tokenizer
    else:
        raise ConfigError("tokenizer: fine-tuning from scratch (model.preset) needs a tokenizer directory "
                          "(tokenizer=runs/tok); or start from a model directory with init_from=DIR")
    if not (Path(tok_dir) / "tokenizer.json").is_file():
        raise ConfigError(f"{'init_from' if cfg.init_from else 'tokenizer'}: {tok_dir} has no tokenizer.json")
    return Tokenizer.from_dir(tok_dir)


def validation_split(splits: dict[str, list[Any]], seed: int) -> None:
    """Early stopping and the best checkpoint need held-out data: without a validation split, a seeded
    tenth of the training split becomes one."""
    if "validation" in splits:
        return
    order = torch.randperm(len(splits["train"]), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, len(order) // 10)
    splits["validation"] = [splits["train"][i] for i in order[:n_val]]
    splits["train"] = [splits["train"][i] for i in sorted(order[n_val:])]


def generative_source(cfg: TrainConfig) -> Source:
    """``sft`` conversations or ``seq2seq`` pairs: loaded, split, encoded (answers-only labels, or
    source and target ids), cut to ``data.seq_len`` or refused (``data.overflow``), into samplers;
    ``data.packing`` packs the training conversations."""
    from ..data.examples import encode_chat, encode_pair
    from ..data.gen_tasks import load_seq2seq_data, load_sft_data
    from ..tokenizer import ensure_chat_tokens
    from .samplers import PackedSampler, Seq2SeqSampler

    d, L = cfg.data, cfg.data.seq_len
    tokenizer = task_tokenizer(cfg)
    notes: list[str] = []
    if cfg.objective == "sft":
        added = ensure_chat_tokens(tokenizer)
        if added:
            notes.append(f"added the chat tokens {', '.join(added)} to the tokenizer (the embedding grows with them)")
        data = load_sft_data(d.train, d.validation or None, d.test or None, seed=cfg.data.split_seed)
    else:
        if tokenizer.eos_token_id is None:
            raise ConfigError(f"tokenizer: seq2seq ends sources and targets with an end-of-sequence token; "
                              f"{cfg.init_from or cfg.tokenizer} has none")
        data = load_seq2seq_data(d.train, d.validation or None, d.test or None, source_field=d.source_field,
                                 target_field=d.target_field, prefix=d.prefix, seed=cfg.data.split_seed)
    splits = dict(data.splits)
    validation_split(splits, cfg.data.split_seed)
    encoded: dict[str, tuple[list[list[int]], list[list[int]]]] = {}
    kept_examples: dict[str, list[Any]] = {}

    def encode(ex: Any) -> tuple[Any, bool, str, bool]:
        if cfg.objective == "sft":
            x, y, was_cut = encode_chat(tokenizer, ex.messages, L, where=ex.source)
            return (x, y), was_cut, ex.source, any(t != obj.IGNORE_INDEX for t in y)
        x, y, was_cut = encode_pair(tokenizer, ex.source_text, ex.target, L, tokenizer.eos_token_id)
        return (x, y), was_cut, ex.where, True

    for split, examples in splits.items():
        rows, kept_examples[split] = encode_split(examples, encode, split, cfg, notes)
        encoded[split] = ([x for x, _ in rows], [y for _, y in rows])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    # as the understanding tasks: groups of 50 global batches sorted by length, so a batch pads little
    group = 50 * cfg.batch_size * cfg.grad_accum * world_size() if d.group_by_length else 0

    def sampler(split: str, train: bool) -> Any:
        ids, labels = encoded[split]
        if cfg.objective == "seq2seq":
            return Seq2SeqSampler(ids, labels, seed=cfg.seed, pad_id=pad, shuffle=train, name=split,
                                  decoder_start_token_id=pad, group_by_length=group if train else 0)
        if train and d.packing:
            return PackedSampler(ids, labels, L, cfg.seed, pad)
        return ExampleSampler(ids, labels, seed=cfg.seed, pad_id=pad, shuffle=train, name=split,
                              group_by_length=group if train else 0)

    train = sampler("train", True)
    if isinstance(train, PackedSampler):
        notes.append(f"packing: {train.n_examples} training conversations in {train.n} rows of at most {L} tokens")
    return Source(tokenizer=tokenizer, tokens=None, vocab_size=tokenizer.vocab_size, train=train,
                   val=sampler("validation", False), test=sampler("test", False) if "test" in encoded else None,
                   notes=notes, examples=kept_examples)


def encode_split(examples: list[Any], encode: Any, split: str, cfg: TrainConfig, notes: list[str]
                 ) -> tuple[list[Any], list[Any]]:
    """Encode a generative split: ``encode(example) -> (encoded, was it cut, where, has it an answer
    token left)``. A cut example is an error naming ``where`` under ``data.overflow=error``, else counted
    in ``notes``; one cut before any answer is dropped. → (the encoded, the examples kept)."""
    L = cfg.data.seq_len
    out, kept, cut, dropped = [], [], 0, 0
    for ex in examples:
        encoded, was_cut, where, answered = encode(ex)
        if was_cut and cfg.data.overflow == "error":
            raise DataError(f"{where}: longer than data.seq_len={L} tokens; raise data.seq_len, shorten the "
                            "example, or set data.overflow=truncate to cut such examples")
        cut += was_cut
        if not answered:
            dropped += 1  # cut before any answer: nothing to learn from it
            continue
        out.append(encoded)
        kept.append(ex)
    if cut:
        notes.append(f"{split}: {cut} of {len(examples)} examples cut to data.seq_len={L} tokens"
                     + (f", {dropped} of them dropped (no answer token left)" if dropped else ""))
    if not out:
        raise DataError(f"{split} split: no example left (every one was cut before its answer); raise "
                        f"data.seq_len={L}")
    return out, kept


def preference_source(cfg: TrainConfig) -> Source:
    """``dpo`` pairs: loaded and split (:func:`~duplexlm.data.preference.load_preference_data`), the prompt
    rendered with each answer by the chat template and labelled on that answer only, cut or refused as
    ``sft`` examples are (a pair loses both rows when either is cut before its answer), into
    :class:`~duplexlm.train.samplers.PreferenceSampler` s; ``examples``: each pair's prompt with its
    chosen answer (what generation is scored against)."""
    from ..data.examples import encode_chat
    from ..data.preference import load_preference_data
    from ..tokenizer import ensure_chat_tokens
    from .samplers import PreferenceSampler

    d, L = cfg.data, cfg.data.seq_len
    tokenizer = task_tokenizer(cfg)
    notes: list[str] = []
    added = ensure_chat_tokens(tokenizer)
    if added:
        notes.append(f"added the chat tokens {', '.join(added)} to the tokenizer (the embedding grows with them)")
    splits = dict(load_preference_data(d.train, d.validation or None, d.test or None, seed=d.split_seed).splits)
    validation_split(splits, d.split_seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    group = 50 * cfg.batch_size * cfg.grad_accum * world_size() if d.group_by_length else 0

    def encode(ex: Any) -> tuple[Any, bool, str, bool]:
        c = encode_chat(tokenizer, ex.conversation(ex.chosen), L, where=ex.source, last_only=True)
        r = encode_chat(tokenizer, ex.conversation(ex.rejected), L, where=ex.source, last_only=True)
        answered = all(any(t != obj.IGNORE_INDEX for t in y) for _, y, _ in (c, r))
        return (c[:2], r[:2]), c[2] or r[2], ex.source, answered

    samplers, examples = {}, {}
    for split, part in splits.items():
        pairs, kept = encode_split(part, encode, split, cfg, notes)
        samplers[split] = PreferenceSampler([c for c, _ in pairs], [r for _, r in pairs], seed=cfg.seed, pad_id=pad,
                                            shuffle=split == "train", name=split,
                                            group_by_length=group if split == "train" else 0)
        examples[split] = [ex.as_chat() for ex in kept]
    return Source(tokenizer=tokenizer, tokens=None, vocab_size=tokenizer.vocab_size, train=samplers["train"],
                  val=samplers["validation"], test=samplers.get("test"), notes=notes, examples=examples)


def rollout_source(cfg: TrainConfig) -> Source:
    """``grpo`` prompts (:func:`~duplexlm.data.prompts.load_prompt_data`) into
    :class:`~duplexlm.train.rollouts.RolloutSampler` s with the run's reward; a prompt is cut from the
    left to leave ``generation.max_new_tokens`` of the ``data.seq_len`` tokens to its completion."""
    from ..data.prompts import load_prompt_data
    from ..scores.rewards import make_reward
    from ..tokenizer import ensure_chat_tokens
    from .rollouts import RolloutSampler

    d, a, g = cfg.data, cfg.objective_args, cfg.generation
    if g.max_new_tokens >= d.seq_len:
        raise ConfigError(f"generation.max_new_tokens={g.max_new_tokens}: a completion must leave room for its prompt "
                          f"in data.seq_len={d.seq_len} tokens")
    tokenizer = task_tokenizer(cfg)
    notes: list[str] = []
    added = ensure_chat_tokens(tokenizer)
    if added:
        notes.append(f"added the chat tokens {', '.join(added)} to the tokenizer (the embedding grows with them)")
    reward = make_reward(a.reward)
    splits = dict(load_prompt_data(d.train, d.validation or None, d.test or None, seed=d.split_seed).splits)
    validation_split(splits, d.split_seed)
    if a.reward in ("exact", "chrf", "task"):  # found now, not when the prompt is first sampled
        for part in splits.values():
            if missing := next((e for e in part if e.answer is None), None):
                raise DataError(f"{missing.source}: objective_args.reward={a.reward} scores each completion against "
                                "the prompt's 'answer', and this prompt has none")
    samplers = {split: RolloutSampler(part, tokenizer, seed=cfg.seed, group_size=a.group_size,
                                      max_new_tokens=g.max_new_tokens, temperature=a.temperature, reward=reward,
                                      max_prompt_len=d.seq_len - g.max_new_tokens, shuffle=split == "train",
                                      name=split, iterations=a.grpo_iterations, scale_rewards=a.scale_rewards)
                for split, part in splits.items()}
    return Source(tokenizer=tokenizer, tokens=None, vocab_size=tokenizer.vocab_size, train=samplers["train"],
                  val=samplers["validation"], test=samplers.get("test"), notes=notes)


def world_size() -> int:
    """Processes of this run (torchrun's WORLD_SIZE; 1 alone), known before the process group is up."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


def multi_source(cfg: TrainConfig) -> tuple[Source, Any]:
    """Every task of ``task=multi``: its own examples and objective, one shared tokenizer."""
    from .multitask import MultiTask, TaskData, TaskSchedule

    items = []
    for name, t in cfg.tasks.items():
        try:
            src = examples_source(cfg, t.task, t)
        except DuplexError as e:
            raise type(e)(f"tasks.{name}: {e}") from e
        options = obj.LossOptions(
            label_smoothing=cfg.label_smoothing,
            class_weights=tasks.class_weights(src.train_labels, src.num_labels) if t.class_weights else None)
        items.append((src, TaskData(name=name, spec=obj.get_objective(t.task), train=src.train, val=src.val,
                                    test=src.test, label_names=src.label_names, num_labels=src.num_labels,
                                    options=options, weight=t.weight)))
    first = items[0][0]
    multi = MultiTask(tasks=[d for _, d in items], schedule=TaskSchedule([d.weight for _, d in items]))
    notes = [f"tasks.{d.name}: {note}" for src, d in items for note in src.notes]
    return dataclasses.replace(first, label_names=None, num_labels=0, train_labels=[], test=None, notes=notes), multi

def objective_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    """The objective's own knobs from ``objective_args``, as :func:`duplexlm.objectives.make_batch` takes them."""
    a = cfg.objective_args
    if cfg.objective in ("mlm", "rtd"):
        return {"mask_prob": a.mask_prob}
    if cfg.objective == "span":
        return {"noise_density": a.noise_density, "mean_span_length": a.mean_span_length}
    return {}

"""The training loop: plain functions, ``setup → fit → evaluate``, one loop for every objective.

Evaluation, early stop on non-finite steps, and checkpoints are explicit calls in the loop. Which
sequences a step trains on is a pure function of (seed, step, rank), each sample's mask or spans come
from a generator seeded by (seed, global sample index), and dropout from one seeded by (seed, step,
rank), so a resumed run repeats the uninterrupted one exactly (bit-identical on CPU), and masks do
not depend on how a global batch is split across processes and micro-batches.

>>> from duplexlm.train.config import load_train_config
>>> cfg = load_train_config("examples/pretrain-gpt2-tiny.yaml", ["max_steps=10"])  # doctest: +SKIP
>>> pretrain(cfg)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import objectives as obj
from ..errors import CheckpointError, ConfigError, DuplexError
from ..fileutil import atomic_write, check_output_dir, write_json
from ..io import load_weights, own_state_dict, save_model
from ..models import count_parameters
from ..objectives import tasks
from ..precision import autocast, matmul_peak, resolve_autocast_dtype
from ..tokenizer import Tokenizer
from .build import model_from, model_section
from .checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from .config import TrainConfig, save_train_config
from .distributed import DistInfo, all_reduce_sum, barrier, cleanup, init_distributed, unwrap, wrap_model
from .logs import MetricsLog
from .methods import is_head
from .samplers import ChunkSampler, ExampleSampler
from .schedule import get_lr
from .sources import (
    TagWindowSampler,
    examples_source,
    generative_source,
    multi_source,
    objective_kwargs,
    preference_source,
    rollout_source,
    shards_source,
)


class TrainingDiverged(DuplexError, RuntimeError):
    """Too many non-finite steps in a row."""


# ----------------------------------------------------------------------------------------------------
# Setup


@dataclass
class Run:
    """Everything ``fit`` needs, built by ``setup``."""

    cfg: TrainConfig
    info: DistInfo
    model: nn.Module  # possibly wrapped (DDP / compile)
    raw_model: nn.Module
    optimizer: torch.optim.Optimizer
    tokenizer: Tokenizer
    tokens: Any  # objectives.ObjectiveTokens
    train: ChunkSampler | ExampleSampler
    val: ChunkSampler | ExampleSampler
    bytes_per_token: float | None  # shards: for bits per byte
    amp_dtype: torch.dtype | None
    out_dir: Path
    flops_per_token: float
    peak_flops: float
    state: dict[str, Any] = field(default_factory=dict)
    scaler: Any = None  # torch.amp.GradScaler for fp16, else None
    spec: obj.ObjectiveSpec | None = None  # the objective (registry entry)
    label_names: list[str] | None = None  # tasks: the name of each class or tag
    loss_options: obj.LossOptions = field(default_factory=obj.LossOptions)
    test: ExampleSampler | None = None  # tasks: the test split, scored once at the end
    max_steps: int = 0  # cfg.max_steps, or what cfg.max_epochs makes of it
    multi: Any = None  # task=multi: a multitask.MultiTask (each task's data, objective and schedule)
    notes: list[str] = field(default_factory=list)  # what reading the data did, printed at the start
    examples: dict[str, list[Any]] = field(default_factory=dict)  # sft, seq2seq: for generating, by split
    distiller: Any = None  # distill.teacher: a distill.Distiller (the teacher's outputs join each batch)
    reference: Any = None  # dpo: a reference.Reference (its log-probabilities join each batch)


def param_groups(model: nn.Module, weight_decay: float, head_lr_mult: float = 1.0) -> list[dict[str, Any]]:
    """Weight decay on matrices only: never on norms, biases or embeddings (a tied head counts as
    the embedding it shares). With ``head_lr_mult`` other than 1 the task head's parameters form
    groups of their own whose ``lr_mult`` scales the scheduled lr (:func:`train_step`)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    apart = head_lr_mult != 1.0
    groups = [{"params": [], "weight_decay": weight_decay}, {"params": [], "weight_decay": 0.0}]
    if apart:
        groups += [{"params": [], "weight_decay": weight_decay, "lr_mult": head_lr_mult},
                   {"params": [], "weight_decay": 0.0, "lr_mult": head_lr_mult}]
    for name, p in model.named_parameters():  # each tensor once, tied ones included
        if not p.requires_grad:
            continue
        groups[2 * (apart and is_head(name)) + (id(p) in embeddings or p.ndim < 2)]["params"].append(p)
    return groups


def make_optimizer(model: nn.Module, optim: Any, device: torch.device) -> torch.optim.Optimizer:
    """``optim.name``'s optimizer over :func:`param_groups`: AdamW, or Adafactor (T5's, each step
    relative to the weight's RMS: a T5 trained from scratch has unit-scale embeddings, which AdamW's
    absolute steps move slowly)."""
    groups = param_groups(model, optim.weight_decay, optim.head_lr_mult)
    if optim.name == "adafactor":
        return torch.optim.Adafactor(groups, lr=optim.lr)
    # the fused kernel (one pass per tensor, CPU and CUDA): 2-4x faster than the per-op foreach update
    return torch.optim.AdamW(groups, lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps,
                             fused=device.type in ("cpu", "cuda") or None)


# what a resumed run must share with the run that wrote the checkpoint: anything else would change
# the model or which data the remaining steps read
_RESUME_KEYS = ("objective", "model", "init_from", "data", "objective_args", "batch_size", "grad_accum", "seed",
                "tokenizer", "method", "method_args", "augment", "crf", "class_weights", "label_smoothing", "tasks")


def _check_resumable(saved: dict[str, Any] | None, cfg: TrainConfig, ckpt: Path) -> None:
    if saved is None:
        return
    now = cfg.to_dict()
    changed = [k for k in _RESUME_KEYS if saved.get(k) != now.get(k)]
    if changed:
        detail = "; ".join(f"{k}: {saved.get(k)!r} → {now.get(k)!r}" for k in changed)
        raise ConfigError(f"--resume: {ckpt} was written with a different config ({detail}); resume with the "
                          "same settings, or start a new out_dir")


def _check_out_dir(cfg: TrainConfig, resume: bool, overwrite: bool) -> Path:
    """The run directory: new, empty, or an earlier run of ours to ``resume`` or ``overwrite``."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite: pick one (continue the run in out_dir, or start it over)")
    named = [cfg.data.path, cfg.init_from, cfg.tokenizer, cfg.data.train, cfg.data.validation, cfg.data.test]
    named += [p for t in cfg.tasks.values() for p in (t.train, t.validation, t.test)]
    inputs = [p for p in named if p and Path(p).exists()]
    out = check_output_dir(cfg.out_dir, "run", overwrite=True, flag="out_dir", inputs=inputs)
    if out.is_dir() and any(out.iterdir()) and not (resume or overwrite):
        what = ("checkpoints of an earlier run" if list_checkpoints(out / "checkpoints")
                else "files of an earlier run")
        raise ConfigError(f"out_dir: {out} already holds {what}; continue it with --resume, start over with "
                          "--overwrite, or choose another out_dir")
    return out


# a task head replaces whatever head the starting model had; these names are heads (and the
# encoder's pooler, which masked-LM pretraining leaves out and classification adds)


def setup(cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> Run:
    """Check everything, then build the model, optimizer and samplers. Nothing is written here,
    except that ``overwrite`` clears an earlier run in ``out_dir`` once every check has passed."""
    from .methods import prepare_method

    spec = obj.get_objective(cfg.objective)
    if cfg.eval_metric is not None:
        from ..scores.labels import higher_is_better

        higher_is_better(cfg.eval_metric)  # an unknown name: a ConfigError naming the nearest known ones
    if spec.data == "shards" and not cfg.data.path:
        raise ConfigError("data.path: name a directory written by `duplex data prepare`")
    if spec.data == "examples" and spec.name != "multi" and not cfg.data.train:
        raise ConfigError("data.train: name a built-in task (reviews-zh, peoples-daily-ner) or a CSV/TSV/JSONL/"
                          "Parquet file")
    if spec.data == "shards" and cfg.method != "full":
        raise ConfigError(f"method={cfg.method!r}: pretraining trains the whole model (method=full)")
    out_dir = _check_out_dir(cfg, resume, overwrite)
    if not cfg.init_from:
        model_section(cfg)  # the model section's own rules, before any data is read
    if spec.name == "multi" and cfg.fsdp:
        raise ConfigError("fsdp: task=multi trains one head per step, and FSDP needs every parameter in every "
                          "step; use DDP (fsdp=false)")
    info = init_distributed(cfg.device, threads=cfg.threads)
    multi = None
    if spec.name == "multi":
        source, multi = multi_source(cfg)
    elif spec.name in ("sft", "seq2seq"):
        source = generative_source(cfg)
    elif spec.name == "dpo":
        source = preference_source(cfg)
    elif spec.name == "grpo":
        source = rollout_source(cfg)
    else:
        source = shards_source(cfg) if spec.data == "shards" else examples_source(cfg)
    tokenizer = source.tokenizer
    if cfg.init_from and spec.data == "shards":
        init_tok = Tokenizer.from_dir(cfg.init_from) if (Path(cfg.init_from) / "tokenizer.json").is_file() else None
        if init_tok is not None and init_tok.backend.get_vocab() != tokenizer.backend.get_vocab():
            # same ids must mean the same tokens, or the pretrained embeddings are noise
            raise ConfigError(f"init_from: {cfg.init_from} was trained with another tokenizer than the data in "
                              f"{cfg.data.path}; prepare the data with --tokenizer {cfg.init_from}")
    model = model_from(cfg, spec, source, multi)
    if model.config.vocab_size < source.vocab_size:
        raise ConfigError(f"init_from: the model's vocab_size={model.config.vocab_size} is smaller than the "
                          f"tokenizer's ({source.vocab_size})")
    distiller = None
    if cfg.distill.teacher:
        from .distill import load_distiller

        distiller = load_distiller(cfg, spec, model, tokenizer, source.label_names, info.device)
        spec = distiller.wrap(spec)
    prepare_method(model, cfg)  # freeze or LoRA: before the optimizer sees which parameters train
    model.to(info.device).train()
    reference = None
    if (spec.name == "dpo" and cfg.objective_args.dpo_loss != "simpo") or (spec.name == "grpo" and
                                                                          cfg.objective_args.kl_coef > 0):
        # the starting weights, before a resume
        from .reference import Reference

        reference = Reference(model, lora=cfg.method == "lora")
    state: dict[str, Any] = {"step": 0, "opt_steps": 0, "tokens": 0, "nonfinite": 0, "nonfinite_run": 0,
                             "best_val": None, "elapsed": 0.0, "best_metric": None, "best_step": None,
                             "bad_evals": 0, "stopped_early": False}
    opt_state = None
    if resume:
        ckpt, loaded = None, None
        for candidate in reversed(list_checkpoints(out_dir / "checkpoints")):  # newest first
            try:
                loaded = load_checkpoint(candidate)
                ckpt = candidate
                break
            except CheckpointError as e:  # corrupt: say so and fall back to the one before
                if info.is_main:
                    print(f"--resume: skipping {candidate}: {e}")
        if ckpt is None or loaded is None:
            if info.is_main:
                print(f"--resume: no complete checkpoint under {out_dir / 'checkpoints'}; starting fresh")
        else:
            model_state, opt_state, saved = loaded
            _check_resumable(saved.pop("config", None), cfg, ckpt)
            state.update(saved)
            load_weights(model, model_state, source=str(ckpt))  # strict: names and shapes must match
            if info.is_main:
                print(f"resumed from {ckpt} (step {state['step']})")
    # FSDP replaces the parameters with shards: wrap first, then build the optimizer over what trains
    # multi-task: a step trains one head, so DDP must expect parameters without gradients
    wrapped = wrap_model(model, info, fsdp=cfg.fsdp, find_unused=multi is not None)
    optimizer = make_optimizer(model, cfg.optim, info.device)
    if opt_state is not None:
        if cfg.fsdp and info.enabled:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(model, optimizer, opt_state, options=StateDictOptions(full_state_dict=True))
        else:
            optimizer.load_state_dict(opt_state)
    if cfg.compile:
        wrapped = torch.compile(wrapped)
    amp = resolve_autocast_dtype(cfg.precision, info.device)
    # fp16 has too little range for gradients: scale the loss up and unscale before clipping
    scaler = torch.amp.GradScaler(info.device.type) if amp == torch.float16 else None
    if not hasattr(model, "num_flops_per_token"):
        flops = 6 * count_parameters(model)
    elif cfg.objective in ("mlm", "rtd"):  # the vocabulary head runs at the masked positions only
        flops = model.num_flops_per_token(cfg.data.seq_len, head_fraction=cfg.objective_args.mask_prob)
    else:
        flops = model.num_flops_per_token(cfg.data.seq_len)
    options = obj.LossOptions(
        label_smoothing=cfg.label_smoothing, rtd_weight=cfg.objective_args.rtd_weight, reduction=cfg.loss_reduction,
        dpo_loss=cfg.objective_args.dpo_loss, beta=cfg.objective_args.beta, simpo_gamma=cfg.objective_args.simpo_gamma,
        sft_weight=cfg.objective_args.sft_weight, clip_eps=cfg.objective_args.clip_eps,
        kl_coef=cfg.objective_args.kl_coef, temperature=cfg.objective_args.temperature,
        grpo_loss_type=cfg.objective_args.loss_type, max_completion=cfg.generation.max_new_tokens,
        class_weights=(tasks.class_weights(source.train_labels, source.num_labels)
                       if cfg.class_weights and spec.name == "classify" else None))
    run = Run(
        cfg=cfg, info=info, model=wrapped, raw_model=model, optimizer=optimizer, tokenizer=tokenizer,
        tokens=source.tokens, train=source.train, val=source.val, bytes_per_token=source.bytes_per_token,
        amp_dtype=amp, out_dir=out_dir, flops_per_token=flops, peak_flops=matmul_peak(info.device, amp),
        state=state, scaler=scaler, spec=spec, label_names=source.label_names, loss_options=options,
        test=source.test, multi=multi, notes=source.notes, examples=source.examples, distiller=distiller,
        reference=reference,
    )
    run.max_steps = _max_steps(run)
    if spec.name == "grpo":  # the samplers generate with the policy itself (and the reference's KL term)
        for sampler in (run.train, run.val, run.test):
            if sampler is not None:
                sampler.attach(model, reference, amp_dtype=amp, keep=cfg.grad_accum)
    # build one real batch now (it draws from its own seeded generators, so the run is unchanged):
    # a problem in the data or the objective's settings surfaces before anything is written
    for sampler in [t.train for t in multi.tasks] if multi is not None else [run.train]:
        make_batch(run, sampler, 0, 1, (cfg.seed, 7_919))
    if overwrite and info.is_main:
        _clear(out_dir)  # every entry was checked to be an earlier run's
    barrier(info)
    return run


def _max_steps(run: Run) -> int:
    """``max_steps``, or with ``max_epochs`` as many steps as that many passes over the training split."""
    cfg = run.cfg
    if cfg.max_epochs is None:
        return cfg.max_steps
    per_step = cfg.batch_size * cfg.grad_accum * run.info.world_size
    n = run.multi.n_train if run.multi is not None else run.train.n  # multi-task: every task's examples
    if run.spec.name == "grpo":  # each batch of samples is read grpo_iterations steps in a row
        n *= cfg.objective_args.grpo_iterations
    return max(1, math.ceil(cfg.max_epochs * n / per_step))


def _clear(directory: Path) -> None:
    import shutil

    if directory.is_dir():
        for entry in directory.iterdir():
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


# ----------------------------------------------------------------------------------------------------
# One batch, one step


def _seed(*keys: int) -> int:
    seed = 0
    for k in keys:
        seed = (seed * 1_000_003 + k) % (2**63 - 1)
    return seed


def _generator(*keys: int) -> torch.Generator:
    return torch.Generator().manual_seed(_seed(*keys))


def make_batch(run: Run, sampler: ChunkSampler | ExampleSampler, start: int, count: int,
               stream: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Samples ``start .. start + count - 1`` of ``sampler`` as one objective batch on the run's device.

    Row ``j`` draws its mask or spans from its own generator, seeded by ``(*stream, start + j)``: a
    sample's corruption depends on the stream and its global index alone, not on which rank or
    micro-batch reads it, so any split of a global batch gives the same rows. Labelled examples
    need no random draw: they are padded to the longest row.
    """
    if not isinstance(sampler, ChunkSampler):  # labelled examples, or packed conversations
        return _to_device(sampler.batch(start, count), run.info.device)
    chunk, word_starts = sampler.batch(start, count)
    if not run.cfg.objective_args.whole_word:
        word_starts = None
    gens = [] if run.cfg.objective == "clm" else [_generator(*stream, g) for g in range(start, start + count)]
    batch = obj.make_batch(run.cfg.objective, chunk, tokens=run.tokens, generator=gens, word_starts=word_starts,
                           **objective_kwargs(run.cfg))
    return _to_device(batch, run.info.device)


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _target_count(batch: dict[str, torch.Tensor]) -> int:
    """What a batch's loss is a mean over: labelled tokens, or examples (one label, or a row of
    regression targets, each)."""
    labels = batch["labels"]
    if labels.dtype.is_floating_point or labels.dim() == 1:
        return int(labels.shape[0])
    return int((labels != -100).sum())


def train_step(run: Run, step: int) -> dict[str, float]:
    """Forward/backward over ``grad_accum`` micro-batches and (unless non-finite) one optimizer step.

    Losses are weighted by target tokens across micro-batches and ranks, so a step's gradient is the
    mean over every target token of the global batch, however it is split.
    """
    cfg, info = run.cfg, run.info
    B, world = cfg.batch_size, info.world_size
    lr = get_lr(run.state["opt_steps"], lr=cfg.optim.lr, min_lr=cfg.optim.min_lr, warmup=cfg.optim.warmup_steps,
                total=run.max_steps, schedule=cfg.optim.schedule, decay_fraction=cfg.optim.decay_fraction)
    for group in run.optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
    # dropout draws from the global RNG: seed it from (seed, step, rank) so a resumed run, and every
    # rank, draws exactly what the uninterrupted run drew
    torch.manual_seed(_seed(cfg.seed, step, info.rank, 17))
    sampler, loss_fn, model, options, own_step = run.train, run.spec.loss, run.model, run.loss_options, step
    if run.multi is not None:  # this step trains one task: its data, its loss, its head
        from .multitask import TaskView

        k, own_step = run.multi.schedule.at(step)
        task = run.multi.tasks[k]
        sampler, loss_fn, options = task.train, task.spec.loss, task.options
        model = TaskView(run.model, run.raw_model, task.name)
    batches = []
    if run.spec.name == "grpo":  # the same samples for grpo_iterations steps in a row
        own_step //= cfg.objective_args.grpo_iterations
        sampler.begin_step()  # the step's statistics gather over its micro-batches
    for m in range(cfg.grad_accum):
        start = (own_step * cfg.grad_accum + m) * B * world + info.rank * B
        # masks and spans are seeded per global sample, not per rank or micro-batch
        batches.append(make_batch(run, sampler, start, B, (cfg.seed,)))
        if run.distiller is not None:  # the teacher's outputs: a second target, deterministic
            with autocast(info.device, run.amp_dtype):
                batches[-1].update(run.distiller.targets(batches[-1]))
        if run.reference is not None and run.spec.name == "dpo":  # the reference's log-probabilities of the rows
            with autocast(info.device, run.amp_dtype):
                batches[-1].update(run.reference.targets(batches[-1]))
    count = (task.spec if run.multi is not None else run.spec).count or _target_count
    if options.reduction == "example":
        from ..objectives.generative import example_count

        count = example_count
    elif run.spec.name == "grpo" and options.grpo_loss_type == "dapo":  # a mean over the completions' tokens
        count = _target_count
    local_targets = sum(count(b) for b in batches)
    (global_targets,) = all_reduce_sum([float(local_targets)], info)
    loss_sum = 0.0
    for m, batch in enumerate(batches):
        last = m == len(batches) - 1
        # DDP: all-reduce gradients only after the last micro-batch
        sync = run.model.no_sync() if info.enabled and not last and hasattr(run.model, "no_sync") \
            else contextlib.nullcontext()
        with sync:
            with autocast(info.device, run.amp_dtype):
                loss, n = loss_fn(model, batch, options)
            # DDP averages gradients over ranks: multiply by world so the result is the global token mean
            weight = n / max(global_targets, 1.0) * world
            scaled = loss * weight
            (run.scaler.scale(scaled) if run.scaler is not None else scaled).backward()
        loss_sum += loss.item() * n
    total_loss_sum, = all_reduce_sum([loss_sum], info)
    loss_value = total_loss_sum / max(global_targets, 1.0)
    clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
    if run.scaler is not None:
        run.scaler.unscale_(run.optimizer)
    norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), clip)
    grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP: a DTensor
    finite = math.isfinite(loss_value) and math.isfinite(grad_norm)
    if run.scaler is not None:
        run.scaler.step(run.optimizer)  # skips the update itself when the scaled gradients overflowed
        run.scaler.update()
    if finite:
        if run.scaler is None:
            run.optimizer.step()
        run.state["opt_steps"] += 1
        run.state["nonfinite_run"] = 0
    elif run.scaler is not None and math.isfinite(loss_value):
        pass  # an fp16 gradient overflow: the scaler skipped the update and lowered its scale, as designed
    else:
        # skip: no optimizer step, no schedule step; count it
        run.state["nonfinite"] += 1
        run.state["nonfinite_run"] += 1
    run.optimizer.zero_grad(set_to_none=True)
    n_tokens = sum(b["input_ids"].numel() for b in batches) * world
    run.state["tokens"] += n_tokens
    out = {"loss": loss_value, "lr": lr, "grad_norm": grad_norm, "finite": finite, "tokens_step": n_tokens}
    if run.multi is not None:
        out["task"] = task.name
    if getattr(sampler, "last_stats", None):  # grpo: the samples' rewards, lengths and KL, over every rank
        names = sorted(sampler.last_stats)
        values = all_reduce_sum([sampler.last_stats[k] for k in names], info)
        out["extra"] = {k: v / world for k, v in zip(names, values)}
    return out


@torch.no_grad()
def evaluate(run: Run) -> dict[str, float]:
    """Validation scores: loss per target token, perplexity and (clm) bits per byte on a fixed set
    of batches; for tasks the loss and the task's metrics over the whole validation split."""
    if run.multi is not None:
        return _evaluate_tasks(run, "val")[0]
    if run.spec.name == "grpo":
        from .rollouts import evaluate_rollouts

        return evaluate_rollouts(run, run.val, "val")[0]
    if isinstance(run.val, ExampleSampler):
        scores = evaluate_examples(run, run.val, "val")[0]
        n = run.cfg.generation.val_examples
        if n and run.examples:
            generated, _ = _generation_scores(run, run.examples["validation"][:n])
            scores.update({f"val_{k}": v for k, v in generated.items()})
        return scores
    cfg, info = run.cfg, run.info
    run.model.eval()
    loss_sum, targets = 0.0, 0.0
    B = cfg.batch_size
    # the same validation sequences every time, each read once: at most what the split holds
    n_batches = min(cfg.eval_batches, max(1, run.val.n // (B * info.world_size)))
    rows = min(B, max(1, run.val.n // info.world_size))
    try:
        for i in range(n_batches):
            start = (i * info.world_size + info.rank) * rows
            batch = make_batch(run, run.val, start, rows, (cfg.seed, 999_983))
            with autocast(info.device, run.amp_dtype):
                loss, n = run.spec.loss(unwrap(run.model) if not cfg.fsdp else run.model, batch, run.loss_options)
            loss_sum += loss.item() * n
            targets += n
    finally:
        run.model.train()
    loss_sum, targets = all_reduce_sum([loss_sum, targets], info)
    val_loss = loss_sum / max(targets, 1.0)
    out = {"val_loss": val_loss}
    if cfg.objective != "rtd":  # RTD's loss mixes two losses: no perplexity to read off it
        out["val_ppl"] = math.exp(min(val_loss, 50.0))
    if cfg.objective == "clm":
        # bits per byte: every byte of the text is predicted once, so it compares across tokenizers
        out["val_bpb"] = val_loss / math.log(2) / run.bytes_per_token
    return out


def _evaluate_tasks(run: Run, split: str) -> tuple[dict[str, float], dict[str, Any]]:
    """Multi-task: every task's ``split`` (val or test) → (``{split}_{task}_{metric}`` scalars and
    ``{split}_loss``, the mean of the tasks' losses; ``{task: full metrics}``)."""
    flat: dict[str, float] = {}
    full: dict[str, Any] = {}
    losses = []
    for task in run.multi.tasks:
        sampler = task.val if split == "val" else task.test
        if sampler is None:
            continue
        scores, full[task.name] = evaluate_examples(run, sampler, f"{split}_{task.name}", task)
        losses.append(scores[f"{split}_{task.name}_loss"])
        flat.update(scores)
    return {f"{split}_loss": sum(losses) / max(len(losses), 1), **flat}, full


@torch.no_grad()
def evaluate_examples(run: Run, sampler: ExampleSampler, prefix: str,
                      task: Any = None) -> tuple[dict[str, float], dict[str, Any]]:
    """Every example of ``sampler``, in order (ranks take alternate batches): the mean loss and the
    objective's metrics → (``{prefix}_name``: scalar, ..., the full metrics with per-class detail).
    ``task``: one task of a multi-task run (its objective, label names, loss options and head).

    Tags (a :class:`~duplexlm.train.sources.TagWindowSampler`): each row is a window of a sentence;
    the loss counts each word once, in the window that answers for it, and the entities are scored
    over whole sentences, each word's tag from that window (its Viterbi path run over the window)."""
    from .distributed import all_gather_objects
    from .multitask import TaskView

    cfg, info = run.cfg, run.info
    spec = task.spec if task is not None else run.spec
    label_names = task.label_names if task is not None else run.label_names
    # scored per target token whatever the training loss averages over, so losses and perplexities compare
    options = dataclasses.replace(task.options if task is not None else run.loss_options, reduction="token")
    model = unwrap(run.model) if not cfg.fsdp else run.model
    reader = TaskView(model, run.raw_model, task.name) if task is not None else model
    model.eval()
    windowed = sampler if isinstance(sampler, TagWindowSampler) else None
    loss_sum, count, preds, refs = 0.0, 0, [], []
    B = cfg.batch_size
    n_batches = math.ceil(sampler.n / B)
    # batches of similar lengths pad little; the scores do not depend on the order
    order = sorted(range(sampler.n), key=lambda i: len(sampler.ids[i]))
    try:
        # FSDP: every rank takes part in every forward, so each reads every batch (and keeps its own)
        for i in range(n_batches):
            mine = cfg.fsdp or i % info.world_size == info.rank
            if not mine:
                continue
            rows = order[i * B:(i + 1) * B]
            batch = _to_device(sampler.collate(rows), info.device)
            with autocast(info.device, run.amp_dtype):
                if run.reference is not None and task is None:
                    batch.update(run.reference.targets(batch))
                out = (spec.forward(reader, batch) if spec.forward is not None
                       else reader(batch["input_ids"], attention_mask=batch["attention_mask"]))
            scored = batch if windowed is None else {**batch, "labels": windowed.loss_labels(rows, batch["labels"])}
            loss, n = spec.loss(obj.Replay(out, getattr(reader, "crf", None)), scored, options)
            if cfg.fsdp and i % info.world_size != info.rank:
                continue
            loss_sum += loss.item() * n
            count += n
            p, r = spec.predict(out.logits.float(), batch, reader)
            preds.extend(p if windowed is None else zip(rows, p))
            refs.extend(r)
    finally:
        run.model.train()
    loss_sum, total = all_reduce_sum([loss_sum, float(count)], info)
    preds, refs = all_gather_objects(preds, info), all_gather_objects(refs, info)
    if windowed is not None:  # whole sentences: every word tagged, every gold entity scored
        by_row = dict(preds)
        fill = label_names.index("O") if label_names and "O" in label_names else 0  # a word without a token
        preds = windowed.windows.stitch([by_row[k] for k in range(sampler.n)], fill)
        refs = windowed.windows.gold
    full = spec.metrics(preds, refs, label_names)
    flat = {f"{prefix}_loss": loss_sum / max(total, 1.0)}
    flat.update({f"{prefix}_{k}": float(v) for k, v in full.items() if isinstance(v, (int, float))})
    return flat, full


def _generation_scores(run: Run, examples: list[Any]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """sft, seq2seq: generate for ``examples`` with the model as it is now and score the text."""
    from ..eval.generate import score_examples

    g = run.cfg.generation
    # generate_for puts the model back in training mode when it is done
    return score_examples(run.raw_model, run.tokenizer, examples, max_new_tokens=g.max_new_tokens,
                          batch_size=g.batch_size, num_beams=g.num_beams, max_source_len=run.cfg.data.seq_len)


# ----------------------------------------------------------------------------------------------------
# Logging


# ----------------------------------------------------------------------------------------------------
# The loop


def save(run: Run) -> Path | None:
    """A checkpoint of the current step (rank 0 writes; all ranks take part in gathering FSDP state)."""
    model_state, opt_state = _full_states(run)
    path = None
    if run.info.is_main:
        path = save_checkpoint(run.out_dir / "checkpoints", run.state["step"], model_state, opt_state,
                               {**run.state, "config": run.cfg.to_dict()}, run.cfg.keep_last,
                               model_config=run.raw_model.config, tokenizer=run.tokenizer)  # a model too
    barrier(run.info)
    return path


def _full_model_state(run: Run) -> dict[str, torch.Tensor]:
    """The model's full state on the CPU (FSDP: every rank takes part in the gather)."""
    if run.cfg.fsdp and run.info.enabled:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(run.raw_model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in own_state_dict(run.raw_model).items()}


def _full_states(run: Run) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The model's and the optimizer's full states, for a checkpoint."""
    if run.cfg.fsdp and run.info.enabled:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return _full_model_state(run), get_optimizer_state_dict(run.raw_model, run.optimizer, options=opts)
    return _full_model_state(run), run.optimizer.state_dict()


def fit(run: Run) -> dict[str, Any]:
    cfg, info, state = run.cfg, run.info, run.state
    log = MetricsLog(run.out_dir, info.is_main, state["step"], cfg.tensorboard)
    if info.is_main:
        run.out_dir.mkdir(parents=True, exist_ok=True)
        save_train_config(cfg, run.out_dir / "config.yaml")
    stop = {"requested": False, "signum": 0}

    def _on_signal(signum: int, frame: object) -> None:
        if stop["requested"]:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        stop["requested"], stop["signum"] = True, signum
        if info.is_main:
            print(f"\n{signal.Signals(signum).name}: finishing this step, saving a checkpoint, then stopping "
                  "(again to abort)")

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)} if \
        _main_thread() else {}
    bar = None
    if info.is_main and cfg.progress:
        from tqdm import tqdm

        kind = "pretrain" if run.spec.data == "shards" else "finetune"
        bar = tqdm(total=run.max_steps, initial=state["step"], desc=f"{kind} {cfg.objective}", dynamic_ncols=True)
    last_eval: dict[str, float] = {}
    metric = _eval_metric(run)
    t_window, tok_window = time.perf_counter(), 0
    extras: dict[str, list[float]] = {}  # the objective's own figures (rewards, KL...) since the last log line
    try:
        if cfg.eval_on_start and state["step"] == 0:
            last_eval = _evaluate_and_log(run, metric, log, bar, 0)
        while state["step"] < run.max_steps and not state["stopped_early"]:
            t0 = time.perf_counter()
            out = train_step(run, state["step"])
            state["step"] += 1
            state["elapsed"] += time.perf_counter() - t0
            tok_window += out["tokens_step"]
            for k, v in out.get("extra", {}).items():
                extras.setdefault(k, []).append(v)
            if not out["finite"] and info.is_main:
                print(f"step {state['step']}: non-finite loss or gradient (loss {out['loss']}, grad norm "
                      f"{out['grad_norm']}); skipped ({state['nonfinite_run']} in a row, {state['nonfinite']} in all)")
            if state["nonfinite_run"] >= cfg.max_nonfinite:
                raise TrainingDiverged(
                    f"stopped at step {state['step']}: {state['nonfinite_run']} non-finite steps in a row "
                    f"(max_nonfinite={cfg.max_nonfinite}); lower optim.lr, raise optim.warmup_steps or use "
                    "precision=fp32, then --resume from the last checkpoint"
                )
            step = state["step"]
            if info.enabled:  # every rank must stop at the same step, or their collectives would not match
                stop["requested"] = all_reduce_sum([float(stop["requested"])], info)[0] > 0
            if step % cfg.log_every == 0 or step == run.max_steps:
                dt = time.perf_counter() - t_window
                tps = tok_window / dt if dt > 0 else 0.0
                record = {"step": step, "loss": out["loss"], "lr": out["lr"], "grad_norm": out["grad_norm"],
                          "tokens": state["tokens"], "tok_per_s": tps,
                          "mfu": tps * run.flops_per_token / (run.peak_flops * info.world_size),
                          "nonfinite": state["nonfinite"]}
                if "task" in out:  # multi-task: which task this step trained
                    record["task"] = out["task"]
                # averaged over the steps since the last line: one step's 8 groups are too few to read
                record.update({k: sum(v) / len(v) for k, v in extras.items()})
                extras.clear()
                log.write(record)
                t_window, tok_window = time.perf_counter(), 0
                if bar is not None:
                    bar.set_postfix(loss=f"{out['loss']:.3f}", lr=f"{out['lr']:.1e}", tok_s=f"{tps:,.0f}",
                                    mfu=f"{record['mfu']:.1%}", refresh=False)
            if step % cfg.eval_every == 0 or step == run.max_steps:
                last_eval = _evaluate_and_log(run, metric, log, bar, step)
            done = step == run.max_steps or state["stopped_early"]
            # grpo: a checkpoint between the steps of one batch of samples could not sample it again
            stop_now = stop["requested"] and (run.spec.name != "grpo" or step % cfg.objective_args.grpo_iterations == 0)
            if step % cfg.save_every == 0 or done or stop_now:
                path = save(run)
                if stop_now:
                    if info.is_main:
                        print(f"stopped at step {step}; checkpoint {path}; continue with --resume")
                    break
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        for s, h in previous.items():
            signal.signal(s, h)
        log.close()
    result = {"step": state["step"], "tokens": state["tokens"], "nonfinite": state["nonfinite"], **last_eval}
    if state["step"] >= run.max_steps or state["stopped_early"]:
        result.update(_finish(run))
    barrier(info)
    if stop["signum"]:
        result["interrupted"] = stop["signum"]
    return result


# the scores a progress line shows (metrics.jsonl and test_metrics.json keep them all)
SHOWN_METRICS = ("loss", "ppl", "bpb", "accuracy", "macro_f1", "precision", "recall", "f1", "mse", "mae", "pearson",
                 "spearman", "preference_accuracy", "ranking_accuracy", "reward_margin", "reward")


def _eval_metric(run: Run) -> str:
    """The validation score that picks the best checkpoint and drives early stopping."""
    from ..scores.labels import higher_is_better

    # "val_chrf" names the same score as "chrf" (the validation scores are logged with the prefix)
    name = (run.cfg.eval_metric or run.spec.default_metric).removeprefix("val_")
    higher_is_better(_metric_kind(run, name))  # an unknown name: a ConfigError with the nearest known ones
    return name


def _metric_kind(run: Run, name: str) -> str:
    """The metric a (multi-task: ``TASK_metric``) name scores, which says whether higher is better."""
    if run.multi is not None:
        for task in run.multi.tasks:
            if name.startswith(task.name + "_"):
                return name[len(task.name) + 1:]
    return name


def _evaluate_and_log(run: Run, metric: str, log: MetricsLog, bar: Any, step: int) -> dict[str, float]:
    """Validate, keep the best weights, log and plot the scores and print their line."""
    scores = evaluate(run)
    if "val_loss" in scores:  # grpo scores its answers' rewards, not a loss
        run.state["best_val"] = min(scores["val_loss"], run.state["best_val"] or float("inf"))
    line = _track_best(run, metric, scores, step)
    log.write({"step": step, **scores})
    log.plot(run.out_dir / "loss.png")
    if bar is not None:
        bar.write(line)
    elif run.info.is_main:
        print(line, flush=True)
    return scores


def _track_best(run: Run, metric: str, scores: dict[str, float], step: int) -> str:
    """Keep the best weights so far (``best.safetensors``), count evaluations without improvement,
    and stop early after ``patience`` of them; returns the line to print."""
    from ..scores.labels import is_better

    state, cfg = run.state, run.cfg
    value = scores.get(f"val_{metric}")
    if value is None:
        raise ConfigError(f"eval_metric: {metric!r} is not among the validation scores "
                          f"({', '.join(k.removeprefix('val_') for k in scores)})")
    improved = state["best_metric"] is None or is_better(_metric_kind(run, metric), value, state["best_metric"])
    if improved:
        state["best_metric"], state["best_step"], state["bad_evals"] = value, step, 0
        if run.spec.data == "examples" or cfg.patience:
            _save_best(run)
    else:
        state["bad_evals"] += 1
        if cfg.patience and state["bad_evals"] >= cfg.patience:
            state["stopped_early"] = True
    shown = ", ".join(f"{k.removeprefix('val_')} {v:.4f}" for k, v in scores.items()
                      if k.removeprefix("val_") in SHOWN_METRICS or k == f"val_{metric}")
    tail = " (best)" if improved else f" (best {state['best_metric']:.4f} at step {state['best_step']})"
    if state["stopped_early"]:
        tail += f"; no better {metric} in {cfg.patience} evaluations: stopping early"
    return f"step {step}: val {shown}{tail}"


def _save_best(run: Run) -> None:
    from safetensors.torch import save_file

    from ..fileutil import atomic_write, independent

    weights = _full_model_state(run)  # every rank takes part (FSDP gathers)
    if run.info.is_main:
        atomic_write(run.out_dir / "best.safetensors",
                     lambda tmp: save_file(independent(weights), str(tmp), metadata={"step": str(run.state["step"])}))


def _finish(run: Run) -> dict[str, Any]:
    """The end of a run: restore the best weights (tasks, or with early stopping), let the method
    finish (LoRA: merge, and write the adapter alone), export the model directory, and score the
    test split when there is one."""
    from .methods import finalize_method

    cfg, info = run.cfg, run.info
    best = run.out_dir / "best.safetensors"
    out: dict[str, Any] = {}
    if (run.spec.data == "examples" or cfg.patience) and best.is_file():
        barrier(info)
        from safetensors.torch import load_file

        _load_full_state(run, load_file(str(best)))
        out["best_step"], out[f"best_{_eval_metric(run)}"] = run.state["best_step"], run.state["best_metric"]
    tested = (run.test is not None and (run.spec.name != "grpo" or cfg.generation.test)) or (
        run.multi is not None and any(t.test is not None for t in run.multi.tasks))  # grpo: the test split generated
    if tested:
        if run.multi is not None:  # one entry per task
            scores, full = _evaluate_tasks(run, "test")
        elif run.spec.name == "grpo":
            from .rollouts import evaluate_rollouts

            scores, records = evaluate_rollouts(run, run.test, "test")
            full = {k.removeprefix("test_"): v for k, v in scores.items()}
            if info.is_main:
                lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
                atomic_write(run.out_dir / "test_generations.jsonl", lambda tmp: tmp.write_text(lines, encoding="utf-8"))
        else:
            scores, full = evaluate_examples(run, run.test, "test")
            if run.examples.get("test") and cfg.generation.test:
                generated, records = _generation_scores(run, run.examples["test"])
                scores.update({f"test_{k}": v for k, v in generated.items()})
                full = {**full, **generated}
                if info.is_main:
                    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
                    atomic_write(run.out_dir / "test_generations.jsonl",
                                 lambda tmp: tmp.write_text(lines, encoding="utf-8"))
        out.update(scores)
        if info.is_main:
            write_json(run.out_dir / "test_metrics.json", full)
    model_state = _full_model_state(run) if cfg.fsdp and info.enabled else None  # every rank gathers
    if info.is_main:
        model = finalize_method(run.raw_model, cfg, run.out_dir)
        save_model(model, run.out_dir / "model", tokenizer=run.tokenizer,
                   state_dict=None if model is not run.raw_model else model_state, overwrite=True)
    return out


def _load_full_state(run: Run, state_dict: dict[str, torch.Tensor]) -> None:
    if run.cfg.fsdp and run.info.enabled:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(run.raw_model, state_dict, options=StateDictOptions(full_state_dict=True))
    else:
        load_weights(run.raw_model, {k: v.to(run.info.device) for k, v in state_dict.items()}, source="best.safetensors")


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Set up and run a training run — pretraining or fine-tuning, whichever ``cfg.objective`` is —
    to ``max_steps`` (or ``max_epochs``, or early stopping); returns the final metrics (with
    ``"interrupted"``: the signal number, when Ctrl-C or SIGTERM stopped it early).

    ``out_dir`` must be new or empty; ``resume`` continues the run it holds, ``overwrite`` starts
    it over. A directory holding anything a run does not write is refused either way."""
    run = setup(cfg, resume=resume, overwrite=overwrite)
    finished = False
    try:
        if run.info.is_main:
            n = count_parameters(run.raw_model)
            trainable = sum(p.numel() for p in run.raw_model.parameters() if p.requires_grad)
            what = (f"{run.train.n} training sequences of {run.train.chunk_len} tokens"
                    if isinstance(run.train, ChunkSampler) else
                    "tasks " + ", ".join(f"{t.name} ({t.spec.name}: {t.train.n} training / {t.val.n} validation"
                                         + (f" / {t.test.n} test" if t.test is not None else "") + ")"
                                         for t in run.multi.tasks)
                    if run.multi is not None else
                    f"{run.train.n} training / {run.val.n} validation examples"
                    + (f" / {run.test.n} test" if run.test is not None else ""))
            for note in run.notes:
                print(f"data: {note}")
            print(f"{run.raw_model.config.family} {n / 1e6:.2f}M parameters ({trainable / 1e6:.2f}M trained, "
                  f"method {cfg.method}) on {run.info.device} × {run.info.world_size}, precision "
                  f"{str(run.amp_dtype or 'fp32').replace('torch.', '')}, {what}, {run.max_steps} steps; "
                  f"run dir {run.out_dir}")
            if run.distiller is not None:
                d = cfg.distill
                print(f"distill: teacher {d.teacher} ({count_parameters(run.distiller.teacher) / 1e6:.2f}M "
                      f"parameters), temperature {d.temperature}, alpha {d.alpha}, hidden_weight {d.hidden_weight}")
        result = fit(run)
        finished = True
        return result
    finally:
        cleanup(run.info, finished)


pretrain = train  # the commands differ in their help, not in the loop
finetune = train


__all__ = ["TrainingDiverged", "evaluate", "evaluate_examples", "finetune", "fit", "pretrain", "setup", "train",
           "train_step"]

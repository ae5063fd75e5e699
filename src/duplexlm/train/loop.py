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

from ..config import CONFIG_CLASSES, config_from_dict
from ..errors import CheckpointError, ConfigError, DataError, DuplexError
from ..fileutil import atomic_write, check_output_dir
from ..io import load, load_weights, own_state_dict, save_model
from ..models import build_model, count_parameters
from ..precision import autocast, matmul_peak, resolve_autocast_dtype
from ..presets import get_preset
from ..tokenizer import Tokenizer
from . import objectives as obj
from .checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from .config import TrainConfig, save_train_config
from .distributed import DistInfo, all_reduce_sum, barrier, cleanup, init_distributed, unwrap, wrap_model
from .schedule import get_lr

FAMILY_FOR_OBJECTIVE = {"clm": "decoder", "mlm": "encoder", "span": "seq2seq"}


class TrainingDiverged(DuplexError, RuntimeError):
    """Too many non-finite steps in a row."""


# ----------------------------------------------------------------------------------------------------
# Data: which chunks a step reads


class ChunkSampler:
    """Non-overlapping chunks of ``chunk_len`` tokens, shuffled per epoch with a seeded permutation.

    Global sample g lives in epoch g // n at position perm_epoch[g % n]: a pure function of g.
    """

    def __init__(self, shards: Any, chunk_len: int, seed: int, shuffle: bool = True) -> None:
        self.shards, self.chunk_len, self.seed, self.shuffle = shards, chunk_len, seed, shuffle
        self.n = len(shards) // chunk_len
        if self.n == 0:
            raise DataError(
                f"{getattr(shards, 'split', 'data')} split has {len(shards)} tokens, fewer than one sequence of "
                f"{chunk_len}; lower data.seq_len or prepare more text"
            )
        self._perms: dict[int, torch.Tensor] = {}

    def _index(self, g: int) -> int:
        epoch, i = divmod(g, self.n)
        if not self.shuffle:
            return i
        if epoch not in self._perms:
            self._perms = {epoch: torch.randperm(self.n, generator=torch.Generator().manual_seed(
                self.seed * 1_000_003 + epoch))}
        return int(self._perms[epoch][i])

    def batch(self, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Samples start..start+count-1 → tokens (count, chunk_len) int64 and word starts or None."""
        rows, starts = [], []
        for g in range(start, start + count):
            offset = self._index(g) * self.chunk_len
            rows.append(torch.from_numpy(self.shards.get(offset, self.chunk_len).astype("int64")))
            ws = self.shards.word_starts(offset, self.chunk_len)
            if ws is not None:
                starts.append(torch.from_numpy(ws.astype("bool")))
        return torch.stack(rows), (torch.stack(starts) if starts else None)


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
    train: ChunkSampler
    val: ChunkSampler
    bytes_per_token: float
    amp_dtype: torch.dtype | None
    out_dir: Path
    flops_per_token: float
    peak_flops: float
    state: dict[str, Any] = field(default_factory=dict)
    scaler: Any = None  # torch.amp.GradScaler for fp16, else None


def _model_section(cfg: TrainConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model section resolved against its preset → (config fields, the fields given explicitly).
    Checks what needs no data — the family, the context length — so it can run first."""
    spec = dict(cfg.model)
    preset = spec.pop("preset", None)
    base = _rederivable(get_preset(preset).to_dict()) if preset else {}
    base.update(spec)
    if "family" not in base:
        raise ConfigError("model: name a preset (model.preset=gpt2-tiny) or a family (model.family=decoder)")
    want = FAMILY_FOR_OBJECTIVE[cfg.objective]
    if base["family"] != want:
        raise ConfigError(f"model: objective {cfg.objective!r} trains a model of family {want!r}, but "
                          f"the model section gives {base['family']!r} (pick a matching model.preset)")
    if base["family"] in ("decoder", "encoder"):
        default = next(f.default for f in dataclasses.fields(CONFIG_CLASSES[base["family"]]) if f.name == "max_seq_len")
        _check_context(cfg.data.seq_len, base.get("max_seq_len", default), "model.max_seq_len")
    return base, spec


def model_config_for(cfg: TrainConfig, vocab_size: int, tokenizer: Tokenizer) -> Any:
    """The model config: a preset plus overrides, sized to the data's vocabulary and sequence length."""
    base, spec = _model_section(cfg)
    if "vocab_size" not in spec:
        base["vocab_size"] = vocab_size
    elif spec["vocab_size"] < vocab_size:
        raise ConfigError(f"model.vocab_size={spec['vocab_size']} is smaller than the data's vocabulary ({vocab_size})")
    if base["family"] == "encoder":
        base["head"] = "mlm"
        if "pooler" not in spec:
            base["pooler"] = False  # masked LM never uses it (and DDP rejects parameters without gradients)
    if base["family"] == "decoder":
        base.setdefault("head", "lm")
        for key, tok_id in (("pad_token_id", tokenizer.pad_token_id), ("eos_token_id", tokenizer.eos_token_id),
                            ("bos_token_id", tokenizer.bos_token_id)):
            if key not in spec:
                base[key] = tok_id
    if base["family"] == "seq2seq":
        for key, tok_id in (("pad_token_id", tokenizer.pad_token_id), ("eos_token_id", tokenizer.eos_token_id),
                            ("decoder_start_token_id", tokenizer.pad_token_id)):
            if key not in spec and tok_id is not None:
                base[key] = tok_id
    return config_from_dict(base, source="model")


def _check_context(seq_len: int, max_seq_len: int, where: str) -> None:
    # learned position embeddings stop at max_seq_len: a longer sequence has no position to read
    if seq_len > max_seq_len:
        raise ConfigError(f"data.seq_len={seq_len} is longer than the model's context ({where}={max_seq_len}); "
                          f"lower data.seq_len or raise {where}")


def _rederivable(cfg: dict[str, Any]) -> dict[str, Any]:
    """Drop a preset's derived sizes (head size, kv heads, MLP width) where they follow the defaults,
    so overriding ``d_model`` or ``n_head`` derives them anew instead of keeping the preset's."""
    cfg = dict(cfg)
    d, h = cfg.get("d_model"), cfg.get("n_head")
    if d and h and cfg.get("head_dim") == d // h and cfg.get("family") in ("decoder",):
        cfg.pop("head_dim")
    if h and cfg.get("n_kv_head") == h:
        cfg.pop("n_kv_head")
    if d and cfg.get("d_ff") == 4 * d:
        cfg.pop("d_ff")
    return cfg


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only: never on norms, biases or embeddings (a tied head counts as
    the embedding it shares)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for p in model.parameters():  # each tensor once, tied ones included
        if not p.requires_grad:
            continue
        (no_decay if id(p) in embeddings or p.ndim < 2 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# what a resumed run must share with the run that wrote the checkpoint: anything else would change
# the model or which data the remaining steps read
_RESUME_KEYS = ("objective", "model", "init_from", "data", "objective_args", "batch_size", "grad_accum", "seed")


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
    inputs = [p for p in (cfg.data.path, cfg.init_from) if p]
    out = check_output_dir(cfg.out_dir, "run", overwrite=True, flag="out_dir", inputs=inputs)
    if out.is_dir() and any(out.iterdir()) and not (resume or overwrite):
        what = ("checkpoints of an earlier run" if list_checkpoints(out / "checkpoints")
                else "files of an earlier run")
        raise ConfigError(f"out_dir: {out} already holds {what}; continue it with --resume, start over with "
                          "--overwrite, or choose another out_dir")
    return out


def _check_objective_data(cfg: TrainConfig, shards: Any, tokens: obj.ObjectiveTokens) -> None:
    """What the objective needs from the data and its tokenizer, checked before anything is written."""
    where = f"data.path={cfg.data.path}"
    if cfg.objective_args.whole_word:
        if cfg.objective != "mlm":
            raise ConfigError(f"objective_args.whole_word: applies to objective 'mlm' only, found {cfg.objective!r}")
        if shards.ws_files is None:
            raise ConfigError(f"objective_args.whole_word: {where} was prepared without word boundaries; prepare "
                              "it again with `duplex data prepare ... --word-boundaries`")
    if cfg.objective == "mlm" and tokens.mask_token_id is None:
        raise ConfigError(f"objective mlm: the tokenizer in {where} has no mask token; train one with "
                          "`duplex tokenizer train --kind wordpiece` (or add [MASK] to its special tokens)")
    if cfg.objective == "span":
        if tokens.eos_token_id is None or not tokens.sentinel_ids:
            raise ConfigError(f"objective span: the tokenizer in {where} needs an eos token and <extra_id_N> "
                              "sentinel tokens; train one with `duplex tokenizer train`")
        sizes = obj.span_lengths(obj.chunk_length("span", cfg.data.seq_len, tokens=tokens,
                                                  **_objective_kwargs(cfg)), **_objective_kwargs(cfg))
        if sizes.num_spans > len(tokens.sentinel_ids):
            raise ConfigError(f"data.seq_len={cfg.data.seq_len}: span corruption makes {sizes.num_spans} spans per "
                              f"sequence, but the tokenizer has {len(tokens.sentinel_ids)} sentinel tokens; lower "
                              "data.seq_len or raise objective_args.mean_span_length")


def setup(cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> Run:
    """Check everything, then build the model, optimizer and samplers. Nothing is written here,
    except that ``overwrite`` clears an earlier run in ``out_dir`` once every check has passed."""
    from ..data import TokenShards

    if not cfg.data.path:
        raise ConfigError("data.path: name a directory written by `duplex data prepare`")
    out_dir = _check_out_dir(cfg, resume, overwrite)
    if not cfg.init_from:
        _model_section(cfg)  # the model section's own rules, before any data is read
    info = init_distributed(cfg.device)
    train_shards, val_shards = TokenShards(cfg.data.path, "train"), TokenShards(cfg.data.path, "val")
    tokenizer = Tokenizer.from_dir(cfg.data.path)
    tokens = obj.ObjectiveTokens.from_tokenizer(tokenizer)
    _check_objective_data(cfg, train_shards, tokens)

    if cfg.init_from:
        model, init_tok = load(cfg.init_from)
        if model.config.family != FAMILY_FOR_OBJECTIVE[cfg.objective]:
            raise ConfigError(f"init_from: {cfg.init_from} holds a {model.config.family}, "
                              f"objective {cfg.objective!r} needs a {FAMILY_FOR_OBJECTIVE[cfg.objective]}")
        if init_tok is not None and init_tok.backend.get_vocab() != tokenizer.backend.get_vocab():
            # same ids must mean the same tokens, or the pretrained embeddings are noise
            raise ConfigError(f"init_from: {cfg.init_from} was trained with another tokenizer than the data in "
                              f"{cfg.data.path}; prepare the data with --tokenizer {cfg.init_from}")
        if model.config.vocab_size < train_shards.vocab_size:
            raise ConfigError(f"init_from: the model's vocab_size={model.config.vocab_size} is smaller than the "
                              f"data's ({train_shards.vocab_size})")
        if hasattr(model.config, "max_seq_len"):
            _check_context(cfg.data.seq_len, model.config.max_seq_len, f"{cfg.init_from}'s max_seq_len")
    else:
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        model = build_model(model_config_for(cfg, train_shards.vocab_size, tokenizer))
    model.to(info.device).train()
    state: dict[str, Any] = {"step": 0, "opt_steps": 0, "tokens": 0, "nonfinite": 0, "nonfinite_run": 0,
                             "best_val": None, "elapsed": 0.0}
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
            model_state, opt_state, state = loaded
            _check_resumable(state.pop("config", None), cfg, ckpt)
            load_weights(model, model_state, source=str(ckpt))  # strict: names and shapes must match
            if info.is_main:
                print(f"resumed from {ckpt} (step {state['step']})")
    # FSDP replaces the parameters with shards: wrap first, then build the optimizer over what trains
    wrapped = wrap_model(model, info, fsdp=cfg.fsdp)
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
        eps=cfg.optim.eps, fused=info.device.type == "cuda" or None,
    )
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
    span_args = _objective_kwargs(cfg) if cfg.objective == "span" else {}
    chunk = obj.chunk_length(cfg.objective, cfg.data.seq_len, tokens=tokens, **span_args)
    flops = (model.num_flops_per_token(cfg.data.seq_len) if hasattr(model, "num_flops_per_token")
             else 6 * count_parameters(model))
    run = Run(
        cfg=cfg, info=info, model=wrapped, raw_model=model, optimizer=optimizer, tokenizer=tokenizer,
        tokens=tokens,
        train=ChunkSampler(train_shards, chunk, cfg.seed),
        val=ChunkSampler(val_shards, chunk, cfg.seed, shuffle=False),
        bytes_per_token=val_shards.bytes_per_token, amp_dtype=amp, out_dir=out_dir,
        flops_per_token=flops, peak_flops=matmul_peak(info.device, amp), state=state, scaler=scaler,
    )
    # build one real batch now (it draws from its own seeded generators, so the run is unchanged):
    # a problem in the data or the objective's settings surfaces before anything is written
    make_batch(run, run.train, 0, 1, (cfg.seed, 7_919))
    if overwrite and info.is_main:
        _clear(out_dir)  # every entry was checked to be an earlier run's
    barrier(info)
    return run


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


def _objective_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    a = cfg.objective_args
    if cfg.objective == "mlm":
        return {"mask_prob": a.mask_prob}
    if cfg.objective == "span":
        return {"noise_density": a.noise_density, "mean_span_length": a.mean_span_length}
    return {}


def make_batch(run: Run, sampler: ChunkSampler, start: int, count: int,
               stream: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Samples ``start .. start + count - 1`` of ``sampler`` as one objective batch on the run's device.

    Row ``j`` draws its mask or spans from its own generator, seeded by ``(*stream, start + j)``: a
    sample's corruption depends on the stream and its global index alone, not on which rank or
    micro-batch reads it, so any split of a global batch gives the same rows.
    """
    chunk, word_starts = sampler.batch(start, count)
    if not run.cfg.objective_args.whole_word:
        word_starts = None
    gens = [] if run.cfg.objective == "clm" else [_generator(*stream, g) for g in range(start, start + count)]
    batch = obj.make_batch(run.cfg.objective, chunk, tokens=run.tokens, generator=gens, word_starts=word_starts,
                           **_objective_kwargs(run.cfg))
    return {k: v.to(run.info.device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _target_count(batch: dict[str, torch.Tensor]) -> int:
    return int((batch["labels"] != -100).sum())


def train_step(run: Run, step: int) -> dict[str, float]:
    """Forward/backward over ``grad_accum`` micro-batches and (unless non-finite) one optimizer step.

    Losses are weighted by target tokens across micro-batches and ranks, so a step's gradient is the
    mean over every target token of the global batch, however it is split.
    """
    cfg, info = run.cfg, run.info
    B, world = cfg.batch_size, info.world_size
    lr = get_lr(run.state["opt_steps"], lr=cfg.optim.lr, min_lr=cfg.optim.min_lr, warmup=cfg.optim.warmup_steps,
                total=cfg.max_steps, schedule=cfg.optim.schedule, decay_fraction=cfg.optim.decay_fraction)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    # dropout draws from the global RNG: seed it from (seed, step, rank) so a resumed run, and every
    # rank, draws exactly what the uninterrupted run drew
    torch.manual_seed(_seed(cfg.seed, step, info.rank, 17))
    batches = []
    for m in range(cfg.grad_accum):
        start = (step * cfg.grad_accum + m) * B * world + info.rank * B
        # masks and spans are seeded per global sample, not per rank or micro-batch
        batches.append(make_batch(run, run.train, start, B, (cfg.seed,)))
    local_targets = sum(_target_count(b) for b in batches)
    (global_targets,) = all_reduce_sum([float(local_targets)], info)
    loss_sum = 0.0
    for m, batch in enumerate(batches):
        last = m == len(batches) - 1
        # DDP: all-reduce gradients only after the last micro-batch
        sync = run.model.no_sync() if info.enabled and not last and hasattr(run.model, "no_sync") \
            else contextlib.nullcontext()
        with sync:
            with autocast(info.device, run.amp_dtype):
                loss, n = obj.compute_loss(run.model, batch, cfg.objective)
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
    return {"loss": loss_value, "lr": lr, "grad_norm": grad_norm, "finite": finite, "tokens_step": n_tokens}


@torch.no_grad()
def evaluate(run: Run) -> dict[str, float]:
    """Validation loss (per target token), perplexity and bits per byte on a fixed set of batches."""
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
                loss, n = obj.compute_loss(unwrap(run.model) if not cfg.fsdp else run.model, batch, cfg.objective)
            loss_sum += loss.item() * n
            targets += n
    finally:
        run.model.train()
    loss_sum, targets = all_reduce_sum([loss_sum, targets], info)
    val_loss = loss_sum / max(targets, 1.0)
    out = {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50.0))}
    if cfg.objective == "clm":
        # bits per byte: every byte of the text is predicted once, so it compares across tokenizers
        out["val_bpb"] = val_loss / math.log(2) / run.bytes_per_token
    return out


# ----------------------------------------------------------------------------------------------------
# Logging


class MetricsLog:
    """``metrics.jsonl`` (one JSON object per line), optional TensorBoard, and the loss-curve PNG."""

    def __init__(self, out_dir: Path, enabled: bool, resume_step: int, tensorboard: bool) -> None:
        self.path = out_dir / "metrics.jsonl"
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            # a killed run may have logged steps past its last checkpoint: drop them, they will be redone
            keep = []
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a kill
                    continue
                if record.get("step", 0) <= resume_step:
                    keep.append(line)
            atomic_write(self.path, "".join(line + "\n" for line in keep))
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ConfigError("tensorboard: true needs the tensorboard package (pip install tensorboard)") from e
            self.tb = SummaryWriter(str(out_dir / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, record["step"])

    def plot(self, png: Path) -> None:
        if not self.enabled or not self.path.exists():
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        train = [(r["step"], r["loss"]) for r in rows if "loss" in r and math.isfinite(r["loss"])]
        val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
        fig, ax = plt.subplots(figsize=(7, 4))
        if train:
            ax.plot(*zip(*train), label="train loss", lw=1)
        if val:
            ax.plot(*zip(*val), "o-", label="validation loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats / token)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        atomic_write(png, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
        plt.close(fig)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# ----------------------------------------------------------------------------------------------------
# The loop


def save(run: Run) -> Path | None:
    """A checkpoint of the current step (rank 0 writes; all ranks take part in gathering FSDP state)."""
    model_state, opt_state = _full_states(run)
    path = None
    if run.info.is_main:
        path = save_checkpoint(run.out_dir / "checkpoints", run.state["step"], model_state, opt_state,
                               {**run.state, "config": run.cfg.to_dict()}, run.cfg.keep_last)
    barrier(run.info)
    return path


def _full_states(run: Run) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if run.cfg.fsdp and run.info.enabled:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return (get_model_state_dict(run.raw_model, options=opts),
                get_optimizer_state_dict(run.raw_model, run.optimizer, options=opts))
    own = {k: v.detach().cpu() for k, v in own_state_dict(run.raw_model).items()}
    return own, run.optimizer.state_dict()


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

        bar = tqdm(total=cfg.max_steps, initial=state["step"], desc=f"pretrain {cfg.objective}", dynamic_ncols=True)
    last_eval: dict[str, float] = {}
    t_window, tok_window = time.perf_counter(), 0
    try:
        while state["step"] < cfg.max_steps:
            t0 = time.perf_counter()
            out = train_step(run, state["step"])
            state["step"] += 1
            state["elapsed"] += time.perf_counter() - t0
            tok_window += out["tokens_step"]
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
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                dt = time.perf_counter() - t_window
                tps = tok_window / dt if dt > 0 else 0.0
                record = {"step": step, "loss": out["loss"], "lr": out["lr"], "grad_norm": out["grad_norm"],
                          "tokens": state["tokens"], "tok_per_s": tps,
                          "mfu": tps * run.flops_per_token / (run.peak_flops * info.world_size),
                          "nonfinite": state["nonfinite"]}
                log.write(record)
                t_window, tok_window = time.perf_counter(), 0
                if bar is not None:
                    bar.set_postfix(loss=f"{out['loss']:.3f}", lr=f"{out['lr']:.1e}", tok_s=f"{tps:,.0f}",
                                    mfu=f"{record['mfu']:.1%}", refresh=False)
            if step % cfg.eval_every == 0 or step == cfg.max_steps:
                last_eval = evaluate(run)
                state["best_val"] = min(last_eval["val_loss"], state["best_val"] or float("inf"))
                log.write({"step": step, **last_eval})
                log.plot(run.out_dir / "loss.png")
                line = (f"step {step}: val loss {last_eval['val_loss']:.4f}, ppl {last_eval['val_ppl']:.2f}"
                        + (f", bits/byte {last_eval['val_bpb']:.4f}" if "val_bpb" in last_eval else ""))
                if bar is not None:
                    bar.write(line)
                elif info.is_main:
                    print(line, flush=True)
            if step % cfg.save_every == 0 or step == cfg.max_steps or stop["requested"]:
                path = save(run)
                if stop["requested"]:
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
    if state["step"] >= cfg.max_steps:
        model_state = _full_states(run)[0] if cfg.fsdp and info.enabled else None  # every rank gathers
        if info.is_main:
            save_model(run.raw_model, run.out_dir / "model", tokenizer=run.tokenizer, state_dict=model_state,
                       overwrite=True)
    barrier(info)
    result = {"step": state["step"], "tokens": state["tokens"], "nonfinite": state["nonfinite"], **last_eval}
    if stop["signum"]:
        result["interrupted"] = stop["signum"]
    return result


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def pretrain(cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Set up and run a training run to ``cfg.max_steps``; returns the final metrics (with
    ``"interrupted"``: the signal number, when Ctrl-C or SIGTERM stopped it early).

    ``out_dir`` must be new or empty; ``resume`` continues the run it holds, ``overwrite`` starts
    it over. A directory holding anything a run does not write is refused either way."""
    run = setup(cfg, resume=resume, overwrite=overwrite)
    try:
        if run.info.is_main:
            n = count_parameters(run.raw_model)
            print(f"{run.raw_model.config.family} {n / 1e6:.2f}M parameters on {run.info.device} × "
                  f"{run.info.world_size}, precision {str(run.amp_dtype or 'fp32').replace('torch.', '')}, "
                  f"{run.train.n} training sequences of {run.train.chunk_len} tokens; run dir {run.out_dir}")
        return fit(run)
    finally:
        cleanup(run.info)


__all__ = ["ChunkSampler", "TrainingDiverged", "evaluate", "fit", "pretrain", "setup", "train_step"]

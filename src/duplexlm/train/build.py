"""Building the model a run trains: its config from a preset or the run's ``model`` section, or a
model directory (``init_from``) re-headed for the task, its vocabulary grown for tokens added to its
tokenizer."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from .. import objectives as obj
from ..config import CONFIG_CLASSES, config_from_dict
from ..errors import ConfigError, ModelError
from ..io import load_weights
from ..models import build_model
from ..presets import get_preset
from ..tokenizer import Tokenizer
from .config import TrainConfig
from .sources import Source


def model_section(cfg: TrainConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model section resolved against its preset → (config fields, the fields given explicitly).
    Checks what needs no data — the family, the context length — so it can run first."""
    spec = dict(cfg.model)
    preset = spec.pop("preset", None)
    base = rederivable(get_preset(preset).to_dict()) if preset else {}
    base.update(spec)
    if "family" not in base:
        raise ConfigError("model: name a preset (model.preset=gpt2-tiny) or a family (model.family=decoder)")
    want = obj.get_objective(cfg.objective).families
    if base["family"] not in want:
        raise ConfigError(f"model: objective {cfg.objective!r} trains a model of family {' or '.join(map(repr, want))}, "
                          f"but the model section gives {base['family']!r} (pick a matching model.preset)")
    if base["family"] in ("decoder", "encoder"):
        default = next(f.default for f in dataclasses.fields(CONFIG_CLASSES[base["family"]]) if f.name == "max_seq_len")
        check_context(cfg.data.seq_len, base.get("max_seq_len", default), "model.max_seq_len")
    return base, spec


def model_config_for(cfg: TrainConfig, vocab_size: int, tokenizer: Tokenizer,
                     head: dict[str, Any] | None = None) -> Any:
    """The model config: a preset plus overrides, sized to the data's vocabulary and sequence length;
    ``head`` (tasks): the head's fields (``head``, ``num_labels``, ``label_names``)."""
    base, spec = model_section(cfg)
    if "vocab_size" not in spec:
        base["vocab_size"] = vocab_size
    elif spec["vocab_size"] < vocab_size:
        raise ConfigError(f"model.vocab_size={spec['vocab_size']} is smaller than the data's vocabulary ({vocab_size})")
    if head is not None:
        base.update(head)
        if base["family"] == "encoder":
            # [CLS] through the pooler, as BERT classifies; mean pooling needs none (and DDP rejects
            # parameters that get no gradient)
            base["pooler"] = _reads_pooled(head) and base.get("pooling", "cls") == "cls"
    elif base["family"] == "encoder":
        base["head"] = "rtd" if cfg.objective == "rtd" else "mlm"
        if "pooler" not in spec:
            base["pooler"] = False  # masked LM never uses it (and DDP rejects parameters without gradients)
    if base["family"] == "decoder":
        base.setdefault("head", "lm")
        for key, tok_id in (("pad_token_id", tokenizer.pad_token_id), ("eos_token_id", tokenizer.eos_token_id),
                            ("bos_token_id", tokenizer.bos_token_id)):
            if key not in spec:
                base[key] = tok_id
    if base["family"] == "rnn" and "pad_token_id" not in spec and tokenizer.pad_token_id is not None:
        base["pad_token_id"] = tokenizer.pad_token_id
    if base["family"] == "seq2seq":
        for key, tok_id in (("pad_token_id", tokenizer.pad_token_id), ("eos_token_id", tokenizer.eos_token_id),
                            ("decoder_start_token_id", tokenizer.pad_token_id)):
            if key not in spec and tok_id is not None:
                base[key] = tok_id
    return config_from_dict(base, source="model")


def check_context(seq_len: int, max_seq_len: int, where: str) -> None:
    # learned position embeddings stop at max_seq_len: a longer sequence has no position to read
    if seq_len > max_seq_len:
        raise ConfigError(f"data.seq_len={seq_len} is longer than the model's context ({where}={max_seq_len}); "
                          f"lower data.seq_len or raise {where}")


def rederivable(cfg: dict[str, Any]) -> dict[str, Any]:
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


# what a task head replaces: every head, the pooler (see model_from) and the CRF over the tag scores
# (a fresh one for a new tag head, see models/crf.py)
HEAD_PREFIXES = ("classifier.", "mlm_head.", "lm_head.", "head.", "pooler.", "task_heads.", "rtd_head.",
                  "generator.", "crf.")


def _override_loaded(config: Any, changes: dict[str, Any], source: str) -> Any:
    """``init_from``'s config with the model section's changes: fields that leave every weight's
    shape as it is (dropout, attention dropout, pooling, ...); a shape field is an error."""
    from ..errors import did_you_mean

    fields = type(config).__dataclass_fields__
    shape = set(getattr(config, "SHAPE_FIELDS", ())) | {"vocab_size", "family", "head", "num_labels"}
    for key, value in changes.items():
        if key not in fields:
            raise ConfigError(f"model.{key}: not a field of {type(config).__name__}{did_you_mean(key, list(fields))}")
        if key in shape and value != getattr(config, key):
            raise ConfigError(f"model.{key}={value!r}: init_from={source} has {key}={getattr(config, key)!r} and "
                              "its weights are that shape; only fields that keep the shapes can change")
    return config.replace(**changes)


def _reads_pooled(head: dict[str, Any]) -> bool:
    """Whether a head (or any head of a multi-task model) classifies the pooled vector."""
    return head["head"] == "classify" or any(t["head"] == "classify" for t in (head.get("tasks") or {}).values())


def _same_labels(config: Any, head: dict[str, Any]) -> bool:
    """Whether a loaded model already has the kind of task head asked for, with the same labels in the
    same order (then its trained head is kept, not replaced by a fresh one)."""
    if head.get("tasks") or getattr(config, "head", None) != head["head"]:
        return False
    if getattr(config, "num_labels", None) != head.get("num_labels"):
        return False
    names = getattr(config, "label_names", None)
    return not names or not head.get("label_names") or list(names) == list(head["label_names"])


def _same_head(config: Any, head: dict[str, Any]) -> bool:
    """:func:`_same_labels`, and for a tagger the same choice of CRF: the whole head is kept."""
    if head["head"] == "tag" and bool(getattr(config, "crf", False)) != bool(head.get("crf")):
        return False
    return _same_labels(config, head)


def model_from(cfg: TrainConfig, spec: obj.ObjectiveSpec, source: Source, multi: Any = None) -> nn.Module:
    """The model to train: ``init_from`` (re-headed for a task) or a fresh one from the model section."""
    head = None
    if multi is not None:
        head = {"head": "none", "tasks": multi.heads({n: t.crf for n, t in cfg.tasks.items()})}
    elif spec.data == "examples" and spec.head != "lm":  # sft, seq2seq keep the LM head
        head = {"head": spec.head, "num_labels": source.num_labels, "label_names": source.label_names}
        if spec.name == "tag":
            head["crf"] = cfg.crf
    if not cfg.init_from:
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        return build_model(model_config_for(cfg, source.vocab_size, source.tokenizer, head=head))
    from ..io import load_config_and_weights

    config, sd = load_config_and_weights(cfg.init_from)
    if config.family not in spec.families:
        raise ConfigError(f"init_from: {cfg.init_from} holds a {config.family}, objective {cfg.objective!r} needs "
                          f"a {' or '.join(spec.families)}")
    if cfg.model:
        config = _override_loaded(config, cfg.model, cfg.init_from)
    if hasattr(config, "max_seq_len"):
        check_context(cfg.data.seq_len, config.max_seq_len, f"{cfg.init_from}'s max_seq_len")
    if head is None:
        model = build_model(config)
        load_weights(model, sd, source=str(cfg.init_from))
        if spec.head == "lm":  # chat tokens added for sft
            grow_vocab(model, source.vocab_size)
        return model
    changes = dict(head)
    if config.family == "encoder":
        changes["pooler"] = _reads_pooled(head) and getattr(config, "pooling", "cls") == "cls"
    if config.family == "decoder" and config.pad_token_id is None:
        changes["pad_token_id"] = source.tokenizer.pad_token_id
    torch.manual_seed(cfg.seed)  # the new head's initial weights, the same on every rank
    model = build_model(config.replace(**changes))
    if _same_head(config, head):  # a task model trained on (a recovery fine-tune, a student from its teacher)
        load_weights(model, sd, source=str(cfg.init_from))
    else:
        expected = model.state_dict()
        backbone = {k: v for k, v in sd.items() if not k.startswith(HEAD_PREFIXES)}
        keep = {k: v for k, v in sd.items() if k.startswith("pooler.") and k in expected}  # a pretrained pooler stays
        if _same_labels(config, head):  # a tagger on the same labels, a CRF added or dropped: its tag scores stay
            keep.update({k: v for k, v in sd.items()
                         if k.startswith(HEAD_PREFIXES) and not k.startswith("crf.") and k in expected})
        missing = [k for k in expected if k not in backbone and k not in keep and not k.startswith(HEAD_PREFIXES)]
        if missing:
            raise ModelError(f"init_from: {cfg.init_from} lacks tensors the {config.family} needs: {missing[:8]}")
        model.load_state_dict({**backbone, **keep}, strict=False)
    grow_vocab(model, source.vocab_size)  # characters data.add_unknown_chars added
    return model


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
    new_embed = nn.Embedding(vocab_size, embed.embedding_dim, padding_idx=embed.padding_idx,
                             device=embed.weight.device, dtype=embed.weight.dtype)
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

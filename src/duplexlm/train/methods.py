"""Fine-tuning methods — ``full``, ``freeze``, ``lora`` — as one pair of calls each: ``prepare``
before the optimizer is built (what trains), ``finalize`` after training (what is exported). The
loop is the same for all three; only these two calls differ.

- ``full``: every parameter trains; nothing to finish.
- ``freeze`` (transfer learning): ``method_args.freeze`` = ``embeddings`` (token/position embeddings
  stay as pretrained), ``layers:N`` (the embeddings and the first N blocks), or ``all-but-head``
  (only the new task head trains: a linear probe).
- ``lora``: low-rank adapters on the chosen projections (:mod:`duplexlm.models.lora`), everything
  else frozen but the task head; at the end the adapters are merged into the weights for the
  exported model, and written alone to ``out_dir/adapter`` (with a PEFT copy where the family has a
  Hugging Face counterpart).

>>> from duplexlm.config import EncoderConfig
>>> from duplexlm.models import build_model
>>> from duplexlm.train.config import load_train_config
>>> model = build_model(EncoderConfig(vocab_size=50, max_seq_len=16, d_model=16, n_layer=2, n_head=2,
...                                   head="classify", num_labels=2))
>>> cfg = load_train_config(None, ["task=classify", "method=freeze", "method_args.freeze=all-but-head"])
>>> prepare_method(model, cfg)
>>> sorted(n for n, p in model.named_parameters() if p.requires_grad)  # the head: [CLS] pooler + classifier
['classifier.bias', 'classifier.weight', 'pooler.bias', 'pooler.weight']
"""

from __future__ import annotations

import re
from pathlib import Path

from torch import nn

from ..errors import ConfigError
from .config import TrainConfig

# the task heads (trainable under freeze and lora) and the embeddings, by parameter name
_HEADS = ("classifier.", "head.", "attention_pool.", "pooler.", "crf.", "task_heads.")
_EMBEDDINGS = ("embed.", "pos_embed.", "type_embed.", "embed_norm.", "shared.")


def is_head(name: str) -> bool:
    """Whether a parameter (by name) belongs to a task head: the classifier, tagger, pooler or CRF."""
    return name.startswith(_HEADS)


def _blocks(model: nn.Module) -> list[str]:
    """Prefixes of the model's stacked layers in order (``blocks.0.``, ... or the RNN's layers)."""
    names = {m.group(0) for n, _ in model.named_parameters() if (m := re.match(r"(?:\w+\.)*?blocks\.\d+\.", n))}
    return sorted(names, key=lambda p: int(re.findall(r"\d+", p)[-1]))


def _freeze(model: nn.Module, spec: str) -> None:
    if spec == "all-but-head":
        frozen = lambda name: not is_head(name)  # noqa: E731
    elif spec == "embeddings":
        frozen = lambda name: name.startswith(_EMBEDDINGS)  # noqa: E731
    elif m := re.fullmatch(r"layers:(\d+)", spec):
        n = int(m.group(1))
        blocks = _blocks(model)
        if n > len(blocks):
            raise ConfigError(f"method_args.freeze: layers:{n}, but the model has {len(blocks)} blocks")
        first = tuple(blocks[:n])
        frozen = lambda name: name.startswith(_EMBEDDINGS) or name.startswith(first)  # noqa: E731
    else:
        raise ConfigError(f"method_args.freeze: expected 'embeddings', 'layers:N' or 'all-but-head', found {spec!r}")
    for name, p in model.named_parameters():
        if frozen(name):
            p.requires_grad_(False)


def prepare_method(model: nn.Module, cfg: TrainConfig) -> None:
    """Set what trains, in place, before the optimizer is built (and keep a magnitude-pruned model's
    zeros: their gradients are zeroed, see :func:`duplexlm.compress.pruning.keep_sparsity`)."""
    from ..compress.pruning import keep_sparsity, magnitude_modules

    if magnitude_modules(model):
        if cfg.method == "lora":
            raise ConfigError("method=lora: the model was magnitude-pruned and a merged LoRA update is dense: it "
                              "would undo the sparsity; use method=full or freeze")
        if cfg.fsdp:
            raise ConfigError("fsdp: the model was magnitude-pruned and FSDP's flattened parameters cannot keep "
                              "its zeros; train it with DDP (fsdp=false)")
    if cfg.method == "freeze":
        _freeze(model, cfg.method_args.freeze)
    elif cfg.method == "lora":
        from ..models.lora import LoRAConfig, apply_lora

        a = cfg.method_args
        apply_lora(model, LoRAConfig(r=a.lora_r, alpha=a.lora_alpha, dropout=a.lora_dropout,
                                     targets=tuple(a.lora_targets)))
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"method={cfg.method!r}: nothing left to train")
    keep_sparsity(model)  # a magnitude-pruned model: its zeroed weights stay zero while it trains


def finalize_method(model: nn.Module, cfg: TrainConfig, out_dir: Path) -> nn.Module:
    """The model to export after training: LoRA writes its adapter to ``out_dir/adapter`` and returns
    the merged model; the other methods return the model as it is."""
    if cfg.method != "lora":
        return model
    from ..models.lora import merge_lora, save_adapter

    save_adapter(model, out_dir / "adapter")
    return merge_lora(model)


__all__ = ["finalize_method", "prepare_method"]

"""LoRA (Hu et al., 2021) for any duplexlm model, written from scratch: chosen ``nn.Linear`` modules
are swapped in place for a :class:`LoRALinear` that keeps their ``weight`` and ``bias`` and adds a
trainable low-rank update ``x Aᵀ Bᵀ · alpha/r``, so checkpoints and converters see the same names.

Targets are module-name patterns. The fused attention projections get per-part targets: ``"q"``,
``"k"``, ``"v"`` put a separate low-rank pair on only those output rows of ``qkv`` (and of a cross-
attention's ``kv``; a cross-attention's own ``q`` Linear is its q part).

Read top to bottom: config → the LoRA linear → targeting → apply / merge → adapter files → PEFT export.

>>> import torch
>>> from duplexlm.config import DecoderConfig
>>> from duplexlm.models import build_model
>>> model = build_model(DecoderConfig(vocab_size=64, d_model=32, n_layer=2, n_head=4)).eval()
>>> ids = torch.randint(0, 64, (1, 6))
>>> before = model(ids).logits
>>> apply_lora(model, LoRAConfig(r=4))
['blocks.0.attn.qkv', 'blocks.1.attn.qkv']
>>> torch.equal(model(ids).logits, before)  # B starts at zero: the model is unchanged
True
>>> type(merge_lora(model).blocks[0].attn.qkv).__name__
'Linear'
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..errors import ConfigError, ModelDirectoryError, ModelError
from ..fileutil import atomic_directory, check_output_dir, independent, read_json_object, write_json
from .layers import Attention

PARTS = ("q", "k", "v")
WHOLE = "all"  # the key of a pair that adapts every output row
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
FORMAT = "duplexlm-lora"


@dataclass
class LoRAConfig:
    """Rank ``r``, scaling ``alpha / r``, dropout on the LoRA branch's input, and ``targets``: a pattern
    matches a module's dotted name or a suffix of it (``"attn.proj"``, ``"blocks.*.mlp.up"``); ``"q"``,
    ``"k"``, ``"v"`` are the parts of every fused attention projection, ``"attn.qkv:q"`` one of them.

    >>> LoRAConfig(r=0)
    Traceback (most recent call last):
    ...
    duplexlm.errors.ConfigError: LoRAConfig.r: expected a positive integer, found 0
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = field(default_factory=lambda: ("q", "v"))

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ConfigError(f"LoRAConfig.r: expected a positive integer, found {self.r!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float) or not self.alpha > 0:
            raise ConfigError(f"LoRAConfig.alpha: expected a positive number, found {self.alpha!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, int | float) or not 0 <= self.dropout < 1:
            raise ConfigError(f"LoRAConfig.dropout: expected a probability in [0, 1), found {self.dropout!r}")
        targets = (self.targets,) if isinstance(self.targets, str) else self.targets
        if not isinstance(targets, list | tuple) or not targets:
            raise ConfigError(f"LoRAConfig.targets: expected a non-empty list of module-name patterns, "
                              f"found {self.targets!r}")
        for t in targets:
            part = t.rpartition(":")[2] if isinstance(t, str) and ":" in t else None
            if not isinstance(t, str) or not t.strip(":") or (part is not None and part not in PARTS):
                raise ConfigError(f"LoRAConfig.targets: expected patterns like 'q', 'attn.proj' or "
                                  f"'attn.qkv:v' (parts {', '.join(PARTS)}), found {t!r}")
        self.targets = tuple(targets)


class LoRALinear(nn.Module):
    """``y = x Wᵀ + b + Σ_parts pad(dropout(x) Aₚᵀ Bₚᵀ · alpha/r)``: the base Linear's own ``weight`` and
    ``bias`` Parameters (frozen by :func:`apply_lora`), and one pair ``lora_A[p]`` (r, in),
    ``lora_B[p]`` (rows, r) per adapted slice of output rows (``"all"``, or ``"q"``/``"k"``/``"v"``).

    >>> layer = LoRALinear(nn.Linear(4, 6), r=2, alpha=4, dropout=0.0, parts={"q": (0, 2), "v": (4, 2)})
    >>> sorted(name for name, _ in layer.named_parameters())
    ['bias', 'lora_A.q', 'lora_A.v', 'lora_B.q', 'lora_B.v', 'weight']
    """

    def __init__(self, linear: nn.Linear, r: int, alpha: float, dropout: float,
                 parts: dict[str, tuple[int, int]]) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # The same Parameter objects, not copies: names, tying and optimizer state stay as they were.
        self.weight = linear.weight
        self.bias = linear.bias
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        self.parts = dict(parts)  # part → (first output row, number of rows)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        w = linear.weight
        self.lora_A, self.lora_B = nn.ParameterDict(), nn.ParameterDict()
        for part, (_, rows) in self.parts.items():
            A = torch.empty(r, self.in_features, dtype=w.dtype, device=w.device)
            nn.init.kaiming_uniform_(A, a=math.sqrt(5))  # as peft and nn.Linear: uniform, fan-in scaled
            self.lora_A[part] = nn.Parameter(A)
            # B = 0 makes the update zero at the start: the model is exactly the base model.
            self.lora_B[part] = nn.Parameter(torch.zeros(rows, r, dtype=w.dtype, device=w.device))
        self.enabled = True  # False: the base layer alone (see adapters_disabled)

    def forward(self, x: Tensor) -> Tensor:
        """x (..., in) → (..., out)."""
        y = F.linear(x, self.weight, self.bias)
        if not self.enabled:
            return y
        h = self.dropout(x)
        for part, (start, rows) in self.parts.items():
            delta = F.linear(F.linear(h, self.lora_A[part]), self.lora_B[part]) * self.scaling  # (..., rows)
            # zeros around the adapted rows; adding, not writing in place, keeps autograd simple
            y = y + F.pad(delta, (start, self.out_features - start - rows))
        return y

    def merged(self) -> nn.Linear:
        """Fold every ``B @ A · scaling`` into the weight (in fp32) and return a plain Linear that holds
        the same ``weight`` and ``bias`` Parameters."""
        with torch.no_grad():
            for part, (start, rows) in self.parts.items():
                delta = (self.lora_B[part].float() @ self.lora_A[part].float()) * self.scaling  # (rows, in)
                self.weight[start:start + rows] += delta.to(self.weight.dtype)
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        linear.weight, linear.bias = self.weight, self.bias
        return linear


# ----------------------------------------------------------------------------------------------------
# Targeting


def task_head_names(model: nn.Module) -> list[str]:
    """The model's task head (classifier, tagger): trained in full beside LoRA, as peft's
    ``modules_to_save``. LM heads are not task heads (they are usually tied to the embedding)."""
    if isinstance(getattr(model, "task_heads", None), nn.Module):  # multi-task: every named head
        return ["task_heads", *(["pooler"] if isinstance(getattr(model, "pooler", None), nn.Module) else [])]
    head = getattr(getattr(model, "config", None), "head", None)
    if head in (None, "none", "lm", "mlm"):
        return []
    return [name for name in ("classifier", "score") if isinstance(getattr(model, name, None), nn.Module)]


def fused_parts(model: nn.Module, name: str) -> dict[str, tuple[int, int]]:
    """Part → (first row, rows) of the attention projection ``name``: q, k, v of a self-attention's
    ``qkv``, k, v of a cross-attention's ``kv``, q of its ``q``; {} for any other module."""
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    if not isinstance(parent, Attention):
        return {}
    q, kv = parent.n_head * parent.head_dim, parent.n_kv_head * parent.head_dim
    layouts = {"qkv": {"q": (0, q), "k": (q, kv), "v": (q + kv, kv)}, "kv": {"k": (0, kv), "v": (kv, kv)},
               "q": {"q": (0, q)}}  # qkv: self-attention; q and kv: cross-attention
    return layouts.get(leaf, {})


def _matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, "*." + pattern)


def _resolve(model: nn.Module, config: LoRAConfig) -> dict[str, dict[str, tuple[int, int]]]:
    """Module name → the row slices to adapt, for every target; a target matching nothing is an error."""
    heads = task_head_names(model)
    linears = {n: m for n, m in model.named_modules()
               if isinstance(m, nn.Linear) and n.partition(".")[0] not in heads}
    tied = _tied_parameter_ids(model)
    plan: dict[str, dict[str, tuple[int, int]]] = {}
    for target in config.targets:
        pattern, _, part = target.rpartition(":") if ":" in target else (target, "", "")
        if target in PARTS:
            pattern, part = "", target
        hits = 0
        for name, linear in linears.items():
            if pattern and not _matches(name, pattern):
                continue
            if not part:
                slices = {WHOLE: (0, linear.out_features)}
            elif part in (available := fused_parts(model, name)):
                start, rows = available[part]
                slices = {WHOLE if rows == linear.out_features else part: (start, rows)}
            else:
                continue
            if id(linear.weight) in tied:
                raise ConfigError(f"LoRAConfig.targets: {target!r} matches {name}, whose weight is tied to "
                                  "another parameter; merging would change both. Leave it out")
            plan.setdefault(name, {}).update(slices)
            if WHOLE in plan[name] and len(plan[name]) > 1:
                raise ConfigError(f"LoRAConfig.targets: {name} is targeted both whole and by part "
                                  f"({', '.join(sorted(plan[name]))}); choose one")
            hits += 1
        if not hits:
            shown = sorted({re.sub(r"\.\d+\.", ".*.", n) for n in linears})
            raise ConfigError(
                f"LoRAConfig.targets: {target!r} matches no nn.Linear of {type(model).__name__}; expected "
                f"one of {shown[:12]}{' ...' if len(shown) > 12 else ''}"
                + (", or 'q', 'k', 'v' (parts of the attention projections)" if any(
                    fused_parts(model, n) for n in linears) else " (it has no attention projections)")
                + (f"; the task head {list(heads)} trains in full and is no target" if heads else ""))
    return plan


def _tied_parameter_ids(model: nn.Module) -> set[int]:
    seen: set[int] = set()
    tied: set[int] = set()
    for _, p in model.named_parameters(remove_duplicate=False):
        (tied if id(p) in seen else seen).add(id(p))
    return tied


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """Name → LoRALinear for every adapted module, in model order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` as its base model: every LoRA update switched off inside the block (the reference
    model of preference tuning, without a second copy of the weights), back on after it.

    >>> layer = LoRALinear(nn.Linear(4, 6), r=2, alpha=4, dropout=0.0, parts={"all": (0, 6)})
    >>> _ = nn.init.ones_(layer.lora_B["all"])
    >>> x = torch.ones(1, 4)
    >>> with adapters_disabled(layer):
    ...     base = layer(x)
    >>> torch.equal(base, F.linear(x, layer.weight, layer.bias)), torch.equal(layer(x), base)
    (True, False)
    """
    modules = [m for m in model.modules() if isinstance(m, LoRALinear)]
    before = [m.enabled for m in modules]
    try:
        for m in modules:
            m.enabled = False
        yield model
    finally:
        for m, was in zip(modules, before):
            m.enabled = was


# ----------------------------------------------------------------------------------------------------
# Apply and merge


def apply_lora(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Swap each targeted ``nn.Linear`` in place for a :class:`LoRALinear`, freeze every base
    parameter except the task head's, and return the replaced module names (see the module example).

    >>> from duplexlm.config import EncoderConfig
    >>> from duplexlm.models import build_model
    >>> m = build_model(EncoderConfig(vocab_size=64, d_model=32, n_layer=1, n_head=4, head="classify"))
    >>> apply_lora(m, LoRAConfig(r=2, targets=["attn.qkv:v", "mlp.up"]))
    ['blocks.0.attn.qkv', 'blocks.0.mlp.up']
    >>> sorted(n for n, p in m.named_parameters() if p.requires_grad)  # doctest: +NORMALIZE_WHITESPACE
    ['blocks.0.attn.qkv.lora_A.v', 'blocks.0.attn.qkv.lora_B.v', 'blocks.0.mlp.up.lora_A.all',
     'blocks.0.mlp.up.lora_B.all', 'classifier.bias', 'classifier.weight']
    """
    if lora_modules(model):
        raise ModelError(f"{type(model).__name__} already has LoRA modules; call merge_lora first")
    plan = _resolve(model, config)
    model.requires_grad_(False)
    for name, slices in plan.items():
        parent_name, _, leaf = name.rpartition(".")
        linear = model.get_submodule(name)
        parts = dict(sorted(slices.items(), key=lambda kv: kv[1]))  # in row order: q, k, v
        setattr(model.get_submodule(parent_name), leaf,
                LoRALinear(linear, config.r, config.alpha, config.dropout, parts))
    for head in task_head_names(model):
        model.get_submodule(head).requires_grad_(True)
    return list(plan)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into its base weight and put plain ``nn.Linear``s back; returns
    ``model``. Parameters stay frozen as :func:`apply_lora` left them (``model.requires_grad_()``
    to train in full)."""
    for name, module in lora_modules(model).items():
        parent_name, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent_name), leaf, module.merged())
    return model


# ----------------------------------------------------------------------------------------------------
# The adapter alone: LoRA pairs + task head, our names


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapter's tensors under our names: every ``lora_A``/``lora_B`` and the task head.

    >>> from duplexlm.config import DecoderConfig
    >>> from duplexlm.models import build_model
    >>> m = build_model(DecoderConfig(vocab_size=64, d_model=32, n_layer=1, n_head=4))
    >>> _ = apply_lora(m, LoRAConfig(r=2))
    >>> sorted(lora_state_dict(m))
    ['blocks.0.attn.qkv.lora_A.q', 'blocks.0.attn.qkv.lora_A.v', 'blocks.0.attn.qkv.lora_B.q', 'blocks.0.attn.qkv.lora_B.v']
    """
    if not lora_modules(model):
        raise ModelError(f"{type(model).__name__} has no LoRA modules; call apply_lora first")
    heads = task_head_names(model)
    return {k: v.detach() for k, v in model.state_dict().items()
            if ".lora_A." in k or ".lora_B." in k or k.partition(".")[0] in heads}


def load_lora_state_dict(model: nn.Module, state_dict: dict[str, Tensor], source: str = "state_dict") -> None:
    """Copy an adapter's tensors into a model that :func:`apply_lora` prepared the same way, checking
    every name and shape first."""
    expected = lora_state_dict(model)
    missing, unexpected = sorted(set(expected) - set(state_dict)), sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise ModelError(f"{source}: adapter tensors do not match the model's LoRA modules: missing "
                         f"{missing[:6]}, unexpected {unexpected[:6]}")
    for k, t in state_dict.items():
        if t.shape != expected[k].shape:
            raise ModelError(f"{source}: tensor {k!r} has shape {tuple(t.shape)}, the model expects "
                             f"{tuple(expected[k].shape)} (another rank r?)")
    with torch.no_grad():
        for k, t in state_dict.items():
            expected[k].copy_(t)


def adapter_config(model: nn.Module) -> dict[str, Any]:
    modules = lora_modules(model)
    first = next(iter(modules.values()))
    # exact targets (full names, parts spelled out): re-applying them rebuilds the same modules
    targets = [n if WHOLE in m.parts else f"{n}:{p}" for n, m in modules.items() for p in m.parts]
    p = first.dropout.p if isinstance(first.dropout, nn.Dropout) else 0.0
    return {"format": FORMAT, "family": getattr(getattr(model, "config", None), "family", None),
            "r": first.r, "alpha": first.alpha, "dropout": p, "targets": targets,
            "task_heads": task_head_names(model)}


def save_adapter(model: nn.Module, directory: str | Path, overwrite: bool = False) -> None:
    """Write the adapter alone (``adapter_config.json`` + ``adapter_model.safetensors``, our names)
    atomically; ``directory`` must be new or empty, or with ``overwrite`` an earlier output.

    >>> save_adapter(model, "runs/lora-adapter")  # doctest: +SKIP
    """
    config = adapter_config(model)
    check_output_dir(directory, "model", overwrite=overwrite, flag="directory")
    with atomic_directory(directory) as tmp:
        write_json(tmp / ADAPTER_CONFIG, config)
        save_file(independent(lora_state_dict(model)), str(tmp / ADAPTER_WEIGHTS),
                  metadata={"format": "pt", "producer": FORMAT})


def load_adapter(model: nn.Module, directory: str | Path) -> nn.Module:
    """Apply a saved adapter to ``model`` (the base model it was trained on) and load its tensors;
    returns ``model``.

    >>> model = load_adapter(base_model, "runs/lora-adapter")  # doctest: +SKIP
    """
    directory = Path(directory)
    files = [directory / ADAPTER_CONFIG, directory / ADAPTER_WEIGHTS]
    if not all(f.is_file() for f in files):
        raise ModelDirectoryError(f"{directory}: expected an adapter directory with {ADAPTER_CONFIG} and "
                                  f"{ADAPTER_WEIGHTS}")
    meta = read_json_object(files[0])
    if meta.get("format") != FORMAT:
        hint = " (a PEFT adapter: load it with peft onto the Hugging Face model)" if "peft_type" in meta else ""
        raise ModelError(f"{files[0]}: expected format {FORMAT!r}, found {meta.get('format')!r}{hint}")
    family = getattr(getattr(model, "config", None), "family", None)
    if meta.get("family") != family:
        raise ModelError(f"{files[0]}: the adapter is for family {meta.get('family')!r}, the model is {family!r}")
    try:
        config = LoRAConfig(r=meta.get("r"), alpha=meta.get("alpha"), dropout=meta.get("dropout"),
                            targets=meta.get("targets"))
        if not lora_modules(model):
            apply_lora(model, config)
    except ConfigError as e:  # a file's values, not the caller's: name the file
        raise ModelError(f"{files[0]}: {e}") from e
    first = next(iter(lora_modules(model).values()))
    if (first.r, first.scaling) != (config.r, config.alpha / config.r):
        raise ModelError(f"{files[0]}: r={config.r}, alpha={config.alpha}, but the model's LoRA modules have "
                         f"r={first.r}, alpha={first.alpha}")
    try:
        state_dict = load_file(str(files[1]))
    except Exception as e:  # safetensors raises its own error types from Rust
        raise ModelError(f"{files[1]}: not a readable safetensors file: {e}") from e
    load_lora_state_dict(model, state_dict, source=str(files[1]))
    return model


__all__ = ["LoRAConfig", "LoRALinear", "apply_lora", "fused_parts", "load_adapter",
           "load_lora_state_dict", "lora_modules", "lora_state_dict", "merge_lora", "save_adapter",
           "task_head_names"]

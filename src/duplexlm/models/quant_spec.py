"""The ``quantization`` entry of a quantised model's ``config.json``: which Linears (and embedding tables)
are stored as integers, how, and which are kept in full precision; and rebuilding a model of that shape
to load the quantised weights into (what :func:`duplexlm.load` does). The modules themselves are
:class:`~duplexlm.models.qlinear.QuantLinear` and :class:`~duplexlm.models.qlinear.QuantEmbedding`;
quantising a model is :mod:`duplexlm.compress.quantization`'s job."""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from ..errors import ConfigError, ModelError
from .layers import RelativePositionBias
from .lora import LoRALinear
from .qlinear import METHODS, QuantEmbedding, QuantLinear, check_group_size, check_method

FORMAT = "duplexlm-weight-only"


# ----------------------------------------------------------------------------------------------------
# Choosing the modules


def quant_modules(model: nn.Module) -> dict[str, QuantLinear]:
    """Name → QuantLinear for every quantised module, in model order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def plan_quantization(model: nn.Module) -> tuple[dict[str, nn.Linear], dict[str, str]]:
    """The Linears to quantise (name → module) and those kept in full precision (name → why).

    A model that is already quantised, or carries LoRA modules, is refused with a :class:`ModelError`:
    quantising twice would stack rounding on rounding, and a LoRA update must be merged first.
    """
    kept = tied_linears(model)
    targets: dict[str, nn.Linear] = {}
    for name, module in model.named_modules():
        if isinstance(module, QuantLinear):
            raise ModelError(f"{type(model).__name__} is already quantised ({module.method}, e.g. {name}); "
                             "quantise the full-precision model instead")
        if isinstance(module, LoRALinear):
            raise ModelError(f"{type(model).__name__} has LoRA modules ({name}); merge them into the weights "
                             "first (duplexlm.models.lora.merge_lora), then quantise")
        if isinstance(module, nn.Linear) and name not in kept:
            targets[name] = module
    return targets, kept


def quant_embeddings(model: nn.Module) -> dict[str, QuantEmbedding]:
    """Name → QuantEmbedding for every quantised embedding table, in model order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantEmbedding)}


def plan_embeddings(model: nn.Module) -> tuple[dict[str, nn.Embedding], dict[str, str]]:
    """The embedding tables ``embeddings=True`` quantises (name → module: every ``nn.Embedding`` whose
    table is not also another parameter, T5's small position-bias tables aside) and those it keeps
    (name → why: tied to an LM head, which reads the whole table as a matrix)."""
    tied = _tied(model, nn.Embedding)
    # T5's position-bias tables: a few hundred numbers added to every attention score; nothing to gain
    biases = {id(m.embedding) for m in model.modules() if isinstance(m, RelativePositionBias)}
    targets = {name: module for name, module in model.named_modules()
               if isinstance(module, nn.Embedding) and id(module) not in biases and name not in tied}
    return targets, {name: f"table tied to {other}" for name, other in tied.items()}


def _tied(model: nn.Module, kind: type[nn.Module]) -> dict[str, str]:
    """Name → the first other name of its weight, for every ``kind`` module whose weight is also
    another parameter (a tied head and its embedding)."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    tied = {}
    for name, module in model.named_modules():
        if isinstance(module, kind):
            others = [n for n in names.get(id(module.weight), []) if n != f"{name}.weight"]
            if others:
                tied[name] = others[0]
    return tied


def tied_linears(model: nn.Module) -> dict[str, str]:
    """Name → why, for every ``nn.Linear`` whose weight is also another parameter (a tied head)."""
    return {name: f"weight tied to {other}" for name, other in _tied(model, nn.Linear).items()}


# ----------------------------------------------------------------------------------------------------
# The config.json entry, and rebuilding a quantised model to load into


def quantization_spec(model: nn.Module) -> dict[str, Any] | None:
    """The ``quantization`` entry of ``config.json`` for ``model``, or None when nothing is quantised:
    format, method, bits, group size, the quantised modules and the Linears kept in full precision.

    >>> from duplexlm.config import EncoderConfig
    >>> from duplexlm.models import build_model
    >>> m = build_model(EncoderConfig(vocab_size=64, d_model=32, n_layer=1, n_head=4, head="mlm"))
    >>> from duplexlm.compress import quantize_model
    >>> _ = quantize_model(m, "int4", group_size=16)
    >>> spec = quantization_spec(m)
    >>> spec["method"], spec["bits"], spec["group_size"], spec["modules"][:2], spec["kept"]
    ('int4', 4, 16, ['blocks.0.attn.qkv', 'blocks.0.attn.proj'], {'mlm_head.decoder': 'weight tied to embed.weight'})
    """
    modules = quant_modules(model)
    if not modules:
        return None
    kinds = {(m.method, m.group_size) for m in modules.values()}
    if len(kinds) > 1:
        raise ModelError(f"{type(model).__name__} mixes quantisation settings {sorted(kinds, key=str)}; "
                         "one method and group size per model can be written")
    method, group_size = kinds.pop()
    spec = {"format": FORMAT, "method": method, "bits": METHODS[method], "group_size": group_size,
            "symmetric": True, "scales": "per output channel" if method == "int8" else "per group of input columns",
            "modules": list(modules), "kept": tied_linears(model)}
    tables = quant_embeddings(model)
    if tables:  # int8, a scale per row, whatever the Linears' method
        spec["embeddings"] = list(tables)
    return spec


def check_spec(spec: Any, source: str = "config.json") -> tuple[str, int | None, list[str]]:
    """Validate a ``quantization`` entry read from a file → (method, group size, module names);
    a :class:`ModelError` naming ``source`` and the field otherwise. The optional ``embeddings``
    list (int8 tables) is checked too."""
    where = f"{source}: quantization"
    if not isinstance(spec, dict):
        raise ModelError(f"{where}: expected an object, found {type(spec).__name__}")
    if spec.get("format") != FORMAT:
        raise ModelError(f"{where}.format: expected {FORMAT!r}, found {spec.get('format')!r}")
    try:
        method = check_method(spec.get("method"), flag=f"{where}.method")
        group_size = check_group_size(method, spec.get("group_size"), flag=f"{where}.group_size",
                                      method_flag="method")
    except ConfigError as e:  # a file's values, not the caller's
        raise ModelError(str(e)) from e
    if spec.get("bits") != METHODS[method]:
        raise ModelError(f"{where}.bits: expected {METHODS[method]} for {method}, found {spec.get('bits')!r}")
    modules = spec.get("modules")
    if not isinstance(modules, list) or not modules or not all(isinstance(m, str) for m in modules):
        raise ModelError(f"{where}.modules: expected a non-empty list of module names, found {modules!r}")
    tables = spec.get("embeddings", [])
    if not isinstance(tables, list) or not all(isinstance(m, str) and m for m in tables):
        raise ModelError(f"{where}.embeddings: expected a list of embedding module names, found {tables!r}")
    return method, group_size, modules


def apply_quantization_spec(model: nn.Module, spec: Any, source: str = "config.json") -> list[str]:
    """Swap the Linears that ``spec`` names for empty QuantLinears of the right shapes and dtypes, so
    that a quantised state dict loads into ``model`` (what :func:`duplexlm.load` does); returns the
    names. Every name must be an untied ``nn.Linear`` of ``model``."""
    method, group_size, names = check_spec(spec, source)
    targets, kept = plan_quantization(model)
    for name in names:
        if name not in targets:
            why = (f"its {kept[name]}" if name in kept else "it is not an nn.Linear of this model" if name
                   else "the name is empty")
            raise ModelError(f"{source}: quantization.modules names {name!r}, but {why}; expected names among "
                             f"{_shown(targets)}")
        linear = targets[name]
        parent_name, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent_name), leaf,
                QuantLinear(linear.in_features, linear.out_features, bias=linear.bias is not None, method=method,
                            group_size=group_size, device=linear.weight.device))
    tables, tied = plan_embeddings(model)
    for name in spec.get("embeddings", []):
        if name not in tables:
            why = f"its {tied[name]}" if name in tied else "it is not an nn.Embedding of this model"
            raise ModelError(f"{source}: quantization.embeddings names {name!r}, but {why}; expected names among "
                             f"{_shown(tables)}")
        table = tables[name]
        parent_name, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent_name), leaf,
                QuantEmbedding(table.num_embeddings, table.embedding_dim, table.padding_idx,
                               device=table.weight.device))
    return names + list(spec.get("embeddings", []))


def _shown(modules: dict[str, Any]) -> str:
    shown = sorted({re.sub(r"\.\d+\.", ".*.", n) for n in modules})
    return f"{shown[:10]}{' ...' if len(shown) > 10 else ''}"


# ----------------------------------------------------------------------------------------------------
# Comparing with the full-precision model


__all__ = ["FORMAT", "apply_quantization_spec", "check_spec", "plan_embeddings", "plan_quantization",
           "quant_embeddings", "quant_modules", "quantization_spec", "tied_linears"]

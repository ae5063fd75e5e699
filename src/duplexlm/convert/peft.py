"""PEFT export: a LoRA adapter under Hugging Face's module names, for ``peft.PeftModel.from_pretrained`` on
the directory that :func:`duplexlm.io.convert_to_hf` writes (``duplex convert --to-peft`` on the
command line)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import Tensor, nn

from ..errors import UnsupportedModelError
from ..fileutil import atomic_directory, check_output_dir, independent, write_json
from ..models.lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    PARTS,
    WHOLE,
    adapter_config,
    fused_parts,
    lora_modules,
    task_head_names,
)
from . import HF_MODEL_TYPES, adapter_for_config, bert, gpt2, llama, t5

_TASK_TYPES = {"ForCausalLM": "CAUSAL_LM", "LMHeadModel": "CAUSAL_LM", "ForSequenceClassification": "SEQ_CLS",
               "ForTokenClassification": "TOKEN_CLS", "ForConditionalGeneration": "SEQ_2_SEQ_LM"}


def hf_modules(config: Any, model_type: str) -> dict[str, dict[str, str]]:
    """Our Linear module name → {part or "all": Hugging Face module name}; separate q/k/v modules there
    appear as parts of our fused one. The tables are the converters' own."""
    c, out = config, {}
    if model_type == "gpt2":  # one Conv1D c_attn, like our qkv
        p = "" if c.head == "none" else "transformer."
        for i in range(c.n_layer):
            out.update({f"blocks.{i}.{o}": {WHOLE: f"{p}h.{i}.{t}"} for o, t in gpt2.LAYER.items()})
    elif model_type in ("llama", "qwen2"):
        p = "" if c.head == "none" else "model."
        for i in range(c.n_layer):
            layer = f"{p}layers.{i}."
            out[f"blocks.{i}.attn.qkv"] = {x: f"{layer}self_attn.{x}_proj" for x in PARTS}
            out[f"blocks.{i}.attn.proj"] = {WHOLE: f"{layer}self_attn.o_proj"}
            out.update({f"blocks.{i}.{o}": {WHOLE: layer + t} for o, t in llama.MLP.items()})
    elif model_type == "bert":
        p = "" if c.head == "none" else "bert."
        for i in range(c.n_layer):
            layer = f"{p}encoder.layer.{i}."
            out[f"blocks.{i}.attn.qkv"] = dict(zip(PARTS, (f"{layer}attention.self.{x}" for x in
                                                           ("query", "key", "value"))))
            out.update({f"blocks.{i}.{o}": {WHOLE: layer + t} for o, t in bert.LAYER.items()})
        if c.head in ("none", "classify"):  # the only BERT classes with a pooler
            out["pooler"] = {WHOLE: f"{p}pooler.dense"}
        out["mlm_head.dense"] = {WHOLE: "cls.predictions.transform.dense"}
    elif model_type == "t5":
        for stack, n_layer, decoder in t5.stacks(c):
            for i in range(n_layer):
                for ours, theirs in t5.layer_map(i, decoder, c.gated_mlp).items():
                    name = f"{stack}.blocks.{i}.{ours.removesuffix('.weight')}"
                    names = (theirs,) if isinstance(theirs, str) else theirs
                    hf = [f"{stack}.block.{i}.{t.removesuffix('.weight')}" for t in names]
                    # a fused module's last name spells its parts in row order: "qkv" → q, k, v; "kv" → k, v
                    out[name] = {WHOLE: hf[0]} if len(hf) == 1 else dict(zip(name.rpartition(".")[2], hf))
    out["lm_head"] = {WHOLE: "lm_head"}
    out["classifier"] = {WHOLE: "classifier" if model_type == "bert" else "score"}
    return out


def export_peft(model: nn.Module, directory: str | Path, base_hf_config: dict[str, Any],
                overwrite: bool = False) -> None:
    """Write the adapter in PEFT's format (``adapter_config.json`` + ``adapter_model.safetensors``)
    for the Hugging Face model that :func:`duplexlm.io.convert_to_hf` wrote, ``base_hf_config`` being
    its ``config.json``. Our fused q/k/v pair splits exactly onto separate q/k/v modules (same A, B's
    rows); the task head goes in as ``modules_to_save``.

    >>> hf_config = convert_to_hf("runs/base", "runs/base-hf")  # doctest: +SKIP
    >>> export_peft(model, "runs/peft", hf_config)  # doctest: +SKIP
    >>> peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("runs/base-hf"), "runs/peft")  # doctest: +SKIP
    """
    config, model_type = getattr(model, "config", None), base_hf_config.get("model_type")
    if config is None:
        raise UnsupportedModelError(f"{type(model).__name__} has no config; expected a duplexlm model")
    adapter = adapter_for_config(config)  # raises for families without HF
    if hasattr(adapter, "config_to_hf"):
        adapter.config_to_hf(config)  # raises where the config has no HF form (mean pooling, say)
    ours = adapter.__name__.rpartition(".")[2]
    if HF_MODEL_TYPES.get(model_type) != ours:
        raise UnsupportedModelError(f"base_hf_config: model_type {model_type!r} does not fit this "
                                    f"{config.family} model, which converts to {ours!r}")
    check_output_dir(directory, "model", overwrite=overwrite, flag="directory")
    hf_names, meta = hf_modules(config, model_type), adapter_config(model)
    tensors: dict[str, Tensor] = {}
    for name, module in lora_modules(model).items():
        if name not in hf_names:
            raise UnsupportedModelError(f"{name}: no {model_type} module of Hugging Face corresponds to it")
        hf = hf_names[name]
        for part in module.parts:
            A, B = module.lora_A[part].detach(), module.lora_B[part].detach()
            if part in hf:
                pieces = [(hf[part], B)]
            elif part == WHOLE:  # fused here, separate there: x Aᵀ Bᵀ split by rows is exact
                pieces = [(hf[p], B[s:s + n]) for p, (s, n) in fused_parts(model, name).items()]
            else:
                raise UnsupportedModelError(
                    f"{name}: a LoRA on only the {part} rows cannot be written for PEFT: {model_type} keeps "
                    f"q, k, v in one module ({hf[WHOLE]}) and PEFT puts one low-rank pair on a whole module. "
                    "Target the whole module (e.g. 'attn.qkv') or export merged weights (merge_lora, then "
                    "convert_to_hf)")
            for hf_name, b in pieces:
                tensors[f"base_model.model.{hf_name}.lora_A.weight"] = A
                tensors[f"base_model.model.{hf_name}.lora_B.weight"] = b
    heads = task_head_names(model)
    for key, t in model.state_dict().items():
        module, _, tensor = key.partition(".")
        if module in heads:  # peft reads modules_to_save as base_model.model.<module>.<tensor>
            tensors[f"base_model.model.{hf_names[module][WHOLE]}.{tensor}"] = t
    arch = (base_hf_config.get("architectures") or [""])[0]
    peft_config = {
        "peft_type": "LORA", "task_type": next((v for k, v in _TASK_TYPES.items() if arch.endswith(k)), None),
        "base_model_name_or_path": base_hf_config.get("_name_or_path") or None,
        "r": meta["r"], "lora_alpha": meta["alpha"], "lora_dropout": meta["dropout"],
        "target_modules": sorted({k.removeprefix("base_model.model.").rpartition(".lora_")[0]
                                  for k in tensors if ".lora_" in k}),
        "modules_to_save": [hf_names[h][WHOLE] for h in heads] or None, "bias": "none", "fan_in_fan_out": model_type == "gpt2",
        "use_rslora": False, "use_dora": False, "init_lora_weights": True, "inference_mode": True,
    }
    with atomic_directory(directory) as tmp:
        write_json(tmp / ADAPTER_CONFIG, peft_config)
        save_file(independent(tensors), str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})


__all__ = ["export_peft", "hf_modules"]

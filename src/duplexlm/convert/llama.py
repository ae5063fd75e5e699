"""Llama and Qwen2 ↔ duplexlm decoder.

Both store q, k, v separately (we fuse them) and use the half-split rotary layout our
``RotaryEmbedding`` follows, so no permutation is needed. Qwen2 is Llama with biases on q, k, v only.
"""

from __future__ import annotations

from torch import Tensor

from ..config import DecoderConfig
from ..errors import UnsupportedModelError
from ..fileutil import independent
from .common import (
    OUR_ACTIVATIONS,
    activation_from_hf,
    check_all_used,
    fuse,
    labels_from_hf,
    labels_to_hf,
    strip_prefix,
    take,
)

_NORMS = {"norm_1": "input_layernorm", "norm_2": "post_attention_layernorm"}
MLP = {"mlp.gate": "mlp.gate_proj", "mlp.up": "mlp.up_proj", "mlp.down": "mlp.down_proj"}
_HEADS = {"ForCausalLM": "lm", "Model": "none", "ForSequenceClassification": "classify"}


def _rope_theta(hf: dict) -> float:
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise UnsupportedModelError(f"config.json: rope type {kind!r} is not supported (only the default rotary embedding)")
    return float(params.get("rope_theta") or hf.get("rope_theta") or 10000.0)


def config_from_hf(hf: dict) -> DecoderConfig:
    model_type = hf["model_type"]
    if hf.get("use_sliding_window"):
        raise UnsupportedModelError("config.json: use_sliding_window=True is not supported")
    if hf.get("pretraining_tp", 1) not in (1, None):
        raise UnsupportedModelError("config.json: pretraining_tp != 1 is not supported")
    arch = (hf.get("architectures") or ["Model"])[0]
    head = next((h for suffix, h in _HEADS.items() if arch.endswith(suffix)), "none")
    if model_type == "qwen2":
        qkv_bias, out_bias, mlp_bias = True, False, False
    else:
        qkv_bias = out_bias = bool(hf.get("attention_bias", False))
        mlp_bias = bool(hf.get("mlp_bias", False))
    num_labels, label_names = labels_from_hf(hf)
    eos = hf.get("eos_token_id")
    return DecoderConfig(
        vocab_size=hf["vocab_size"], max_seq_len=hf.get("max_position_embeddings", 2048),
        d_model=hf["hidden_size"], n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"],
        n_kv_head=hf.get("num_key_value_heads") or hf["num_attention_heads"], head_dim=hf.get("head_dim"),
        d_ff=hf["intermediate_size"], positions="rope", rope_theta=_rope_theta(hf), norm="rmsnorm",
        norm_eps=hf.get("rms_norm_eps", 1e-6), activation=activation_from_hf(hf.get("hidden_act", "silu")),
        gated_mlp=True, qkv_bias=qkv_bias, out_bias=out_bias, mlp_bias=mlp_bias, norm_bias=False,
        tie_word_embeddings=hf.get("tie_word_embeddings", model_type == "qwen2"),
        dropout=0.0, attn_dropout=float(hf.get("attention_dropout") or 0.0),
        head=head, num_labels=num_labels, label_names=label_names,
        pad_token_id=hf.get("pad_token_id"), bos_token_id=hf.get("bos_token_id"),
        eos_token_id=eos[0] if isinstance(eos, list) else eos, init_std=hf.get("initializer_range", 0.02),
    )


def from_hf(hf_config: dict, state_dict: dict[str, Tensor]) -> tuple[DecoderConfig, dict[str, Tensor]]:
    c = config_from_hf(hf_config)
    sd = strip_prefix(state_dict, ["model."])
    out: dict[str, Tensor] = {"embed.weight": take(sd, "embed_tokens.weight")}
    for i in range(c.n_layer):
        p, q = f"layers.{i}.", f"blocks.{i}."
        for ours, theirs in _NORMS.items():
            out[f"{q}{ours}.weight"] = take(sd, f"{p}{theirs}.weight")
        kinds = ("weight", "bias") if c.qkv_bias else ("weight",)
        for kind in kinds:
            out[f"{q}attn.qkv.{kind}"] = fuse(*(take(sd, f"{p}self_attn.{n}_proj.{kind}") for n in "qkv"))
        out[f"{q}attn.proj.weight"] = take(sd, f"{p}self_attn.o_proj.weight")
        if c.out_bias:
            out[f"{q}attn.proj.bias"] = take(sd, f"{p}self_attn.o_proj.bias")
        for ours, theirs in MLP.items():
            out[f"{q}{ours}.weight"] = take(sd, f"{p}{theirs}.weight")
            if c.mlp_bias:
                out[f"{q}{ours}.bias"] = take(sd, f"{p}{theirs}.bias")
    out["norm.weight"] = take(sd, "norm.weight")
    if c.head == "lm" and not c.tie_word_embeddings:
        out["lm_head.weight"] = take(sd, "lm_head.weight")
    if c.head == "classify":
        out["classifier.weight"] = take(sd, "score.weight")
    if c.tie_word_embeddings:
        sd.pop("lm_head.weight", None)  # some exports write the tied head's copy
    check_all_used(sd, "Llama/Qwen2", ignore=("*rotary_emb.inv_freq",))
    return c, independent(out)


def to_hf(config: DecoderConfig, state_dict: dict[str, Tensor]) -> tuple[dict, dict[str, Tensor]]:
    c = config
    qwen2 = c.qkv_bias and not c.out_bias and not c.mlp_bias
    problems = [
        ("positions", c.positions == "rope"), ("norm", c.norm == "rmsnorm"), ("gated_mlp", c.gated_mlp),
        ("qkv_bias/out_bias", qwen2 or c.qkv_bias == c.out_bias),
    ]
    bad = [name for name, ok in problems if not ok]
    if bad:
        raise UnsupportedModelError(
            f"neither Llama nor Qwen2 can represent this decoder: field(s) {', '.join(bad)} differ"
        )
    family = "Qwen2" if qwen2 else "Llama"
    arch = family + {"lm": "ForCausalLM", "none": "Model", "classify": "ForSequenceClassification"}[c.head]
    hf = {
        "model_type": family.lower(), "architectures": [arch],
        "vocab_size": c.vocab_size, "max_position_embeddings": c.max_seq_len, "hidden_size": c.d_model,
        "num_hidden_layers": c.n_layer, "num_attention_heads": c.n_head, "num_key_value_heads": c.n_kv_head,
        "head_dim": c.head_dim, "intermediate_size": c.d_ff, "hidden_act": OUR_ACTIVATIONS[c.activation],
        "rms_norm_eps": c.norm_eps, "rope_theta": c.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
        "tie_word_embeddings": c.tie_word_embeddings, "attention_dropout": c.attn_dropout,
        "initializer_range": c.init_std, "bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_id,
        "pad_token_id": c.pad_token_id,
    }
    if qwen2:
        hf["use_sliding_window"] = False
    else:
        hf["attention_bias"] = c.qkv_bias
        hf["mlp_bias"] = c.mlp_bias
    if c.head == "classify":
        hf.update(labels_to_hf(c.num_labels, c.label_names))
    prefix = "" if c.head == "none" else "model."
    sd = dict(state_dict)
    out = {f"{prefix}embed_tokens.weight": take(sd, "embed.weight")}
    sizes = [c.n_head * c.head_dim, c.n_kv_head * c.head_dim, c.n_kv_head * c.head_dim]
    for i in range(c.n_layer):
        p, q = f"{prefix}layers.{i}.", f"blocks.{i}."
        for ours, theirs in _NORMS.items():
            out[f"{p}{theirs}.weight"] = take(sd, f"{q}{ours}.weight")
        kinds = ("weight", "bias") if c.qkv_bias else ("weight",)
        for kind in kinds:
            for name, t in zip("qkv", take(sd, f"{q}attn.qkv.{kind}").split(sizes, dim=0)):
                out[f"{p}self_attn.{name}_proj.{kind}"] = t
        out[f"{p}self_attn.o_proj.weight"] = take(sd, f"{q}attn.proj.weight")
        if c.out_bias:
            out[f"{p}self_attn.o_proj.bias"] = take(sd, f"{q}attn.proj.bias")
        for ours, theirs in MLP.items():
            out[f"{p}{theirs}.weight"] = take(sd, f"{q}{ours}.weight")
            if c.mlp_bias:
                out[f"{p}{theirs}.bias"] = take(sd, f"{q}{ours}.bias")
    out[f"{prefix}norm.weight"] = take(sd, "norm.weight")
    if c.head == "lm":
        w = sd.pop("lm_head.weight", None)
        if not c.tie_word_embeddings:
            out["lm_head.weight"] = w if w is not None else take(sd, "lm_head.weight")
    if c.head == "classify":
        out["score.weight"] = take(sd, "classifier.weight")
    return hf, independent(out)

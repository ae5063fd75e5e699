"""GPT-2 ↔ duplexlm decoder.

GPT-2 stores its projections as ``Conv1D`` with weights (in, out): transposed against ``nn.Linear``.
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
    labels_from_hf,
    labels_to_hf,
    strip_prefix,
    take,
)

LAYER = {  # ours → GPT-2, inside block i
    "norm_1": "ln_1", "norm_2": "ln_2",
    "attn.qkv": "attn.c_attn", "attn.proj": "attn.c_proj",
    "mlp.up": "mlp.c_fc", "mlp.down": "mlp.c_proj",
}
_CONV1D = ("attn.qkv", "attn.proj", "mlp.up", "mlp.down")

_HEADS = {"GPT2LMHeadModel": "lm", "GPT2Model": "none", "GPT2ForSequenceClassification": "classify",
          "GPT2DoubleHeadsModel": "lm"}


def config_from_hf(hf: dict) -> DecoderConfig:
    if hf.get("scale_attn_by_inverse_layer_idx"):
        raise UnsupportedModelError("config.json: scale_attn_by_inverse_layer_idx=True is not supported")
    if hf.get("scale_attn_weights") is False:
        raise UnsupportedModelError("config.json: scale_attn_weights=False is not supported")
    arch = (hf.get("architectures") or ["GPT2Model"])[0]
    num_labels, label_names = labels_from_hf(hf)
    return DecoderConfig(
        vocab_size=hf["vocab_size"], max_seq_len=hf.get("n_positions", 1024), d_model=hf["n_embd"],
        n_layer=hf["n_layer"], n_head=hf["n_head"], d_ff=hf.get("n_inner") or 4 * hf["n_embd"],
        positions="learned", norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        activation=activation_from_hf(hf.get("activation_function", "gelu_new"), "activation_function"),
        gated_mlp=False, qkv_bias=True, out_bias=True, mlp_bias=True, norm_bias=True,
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
        dropout=hf.get("resid_pdrop", 0.1), attn_dropout=hf.get("attn_pdrop", 0.1),
        head=_HEADS.get(arch, "none"), num_labels=num_labels, label_names=label_names,
        pad_token_id=hf.get("pad_token_id"), bos_token_id=hf.get("bos_token_id"),
        eos_token_id=hf.get("eos_token_id"), init_std=hf.get("initializer_range", 0.02),
    )


def from_hf(hf_config: dict, state_dict: dict[str, Tensor]) -> tuple[DecoderConfig, dict[str, Tensor]]:
    config = config_from_hf(hf_config)
    sd = strip_prefix(state_dict, ["transformer."])
    out: dict[str, Tensor] = {"embed.weight": take(sd, "wte.weight"), "pos_embed.weight": take(sd, "wpe.weight")}
    for i in range(config.n_layer):
        for ours, theirs in LAYER.items():
            for kind in ("weight", "bias"):
                t = take(sd, f"h.{i}.{theirs}.{kind}")
                out[f"blocks.{i}.{ours}.{kind}"] = t.t() if kind == "weight" and ours in _CONV1D else t
    out["norm.weight"], out["norm.bias"] = take(sd, "ln_f.weight"), take(sd, "ln_f.bias")
    if config.head == "lm" and not config.tie_word_embeddings:
        out["lm_head.weight"] = take(sd, "lm_head.weight")
    if config.head == "classify":
        out["classifier.weight"] = take(sd, "score.weight")
    if config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)  # some exports write the tied head's copy
    # attn.bias / attn.masked_bias: causal-mask buffers that older transformers saved
    check_all_used(sd, "GPT-2", ignore=("h.*.attn.bias", "h.*.attn.masked_bias"))
    return config, independent(out)


def to_hf(config: DecoderConfig, state_dict: dict[str, Tensor]) -> tuple[dict, dict[str, Tensor]]:
    c = config
    problems = [
        ("positions", c.positions == "learned"), ("norm", c.norm == "layernorm"), ("gated_mlp", not c.gated_mlp),
        ("n_kv_head", c.n_kv_head == c.n_head), ("head_dim", c.head_dim * c.n_head == c.d_model),
        ("qkv_bias/out_bias/mlp_bias/norm_bias", c.qkv_bias and c.out_bias and c.mlp_bias and c.norm_bias),
    ]
    bad = [name for name, ok in problems if not ok]
    if bad:
        raise UnsupportedModelError(f"GPT-2 cannot represent this decoder: field(s) {', '.join(bad)} differ from GPT-2's")
    arch = {"lm": "GPT2LMHeadModel", "none": "GPT2Model", "classify": "GPT2ForSequenceClassification"}[c.head]
    hf = {
        "model_type": "gpt2", "architectures": [arch],
        "vocab_size": c.vocab_size, "n_positions": c.max_seq_len, "n_embd": c.d_model, "n_layer": c.n_layer,
        "n_head": c.n_head, "n_inner": c.d_ff, "activation_function": OUR_ACTIVATIONS[c.activation],
        "layer_norm_epsilon": c.norm_eps, "resid_pdrop": c.dropout, "embd_pdrop": c.dropout,
        "attn_pdrop": c.attn_dropout, "initializer_range": c.init_std,
        "tie_word_embeddings": c.tie_word_embeddings, "scale_attn_weights": True,
        "bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_id, "pad_token_id": c.pad_token_id,
    }
    if c.head == "classify":
        hf.update(labels_to_hf(c.num_labels, c.label_names))
    prefix = "" if c.head == "none" else "transformer."
    sd = dict(state_dict)
    out = {f"{prefix}wte.weight": take(sd, "embed.weight"), f"{prefix}wpe.weight": take(sd, "pos_embed.weight")}
    for i in range(c.n_layer):
        for ours, theirs in LAYER.items():
            for kind in ("weight", "bias"):
                t = take(sd, f"blocks.{i}.{ours}.{kind}")
                out[f"{prefix}h.{i}.{theirs}.{kind}"] = t.t() if kind == "weight" and ours in _CONV1D else t
    out[f"{prefix}ln_f.weight"], out[f"{prefix}ln_f.bias"] = take(sd, "norm.weight"), take(sd, "norm.bias")
    if c.head == "lm":
        w = sd.pop("lm_head.weight", None)
        if not c.tie_word_embeddings:
            out["lm_head.weight"] = w if w is not None else take(sd, "lm_head.weight")
    if c.head == "classify":
        out["score.weight"] = take(sd, "classifier.weight")
    return hf, independent(out)

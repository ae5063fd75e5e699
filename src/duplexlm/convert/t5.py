"""T5 ↔ duplexlm seq2seq.

Hugging Face keeps separate ``q``, ``k``, ``v`` projections (we fuse them into ``qkv``, and the cross-
attention's ``k``, ``v`` into ``kv``), numbers the sub-layers of a block (``layer.0`` self-attention,
``layer.1`` cross-attention in the decoder, then the feed-forward), and stores each stack's relative
position table in its first block. ``encoder.embed_tokens`` and ``decoder.embed_tokens`` are copies of
``shared``, so we read ``shared`` and write it alone.

Whether the head is tied: T5 v1.0 ties it to ``shared`` and scales the decoder output by
d_model**-0.5; v1.1 has a separate ``lm_head`` without scaling. transformers 5 writes
``tie_word_embeddings: true`` for both and tells them apart by ``scale_decoder_outputs``, so that
field wins when present.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..config import Seq2SeqConfig
from ..errors import ModelError, UnsupportedModelError
from ..fileutil import independent
from .common import HF_ACTIVATIONS, OUR_ACTIVATIONS, fuse, take

_HEADS = {"T5ForConditionalGeneration": "lm", "T5Model": "none"}
_ARCHITECTURES = {"lm": "T5ForConditionalGeneration", "none": "T5Model"}
# Tensors transformers itself ignores when loading (the decoder's first cross-attention never had a bias).
_IGNORED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)


def _activation_from_hf(feed_forward_proj: str) -> tuple[str, bool]:
    """``feed_forward_proj`` → (our activation, gated). ``'gated-gelu'`` means tanh-GELU, as in HF."""
    if feed_forward_proj == "gated-gelu":
        return "gelu_tanh", True
    gated = feed_forward_proj.startswith("gated-")
    act = feed_forward_proj.removeprefix("gated-")
    if act not in HF_ACTIVATIONS:
        options = sorted(HF_ACTIVATIONS) + sorted(f"gated-{a}" for a in HF_ACTIVATIONS)
        raise UnsupportedModelError(f"config.json: feed_forward_proj={feed_forward_proj!r} is not supported; "
                         f"expected one of {options}")
    return HF_ACTIVATIONS[act], gated


def _activation_to_hf(activation: str, gated: bool) -> str:
    if gated and activation == "gelu_tanh":
        return "gated-gelu"
    if gated and activation == "gelu":
        # transformers reads "gated-gelu" as tanh-GELU, so exact GELU behind a gate has no name.
        raise UnsupportedModelError("Seq2SeqConfig.activation: T5 cannot represent a gated exact 'gelu'; use 'gelu_tanh'")
    return ("gated-" if gated else "") + OUR_ACTIVATIONS[activation]


def _int(hf: dict, key: str, default: int) -> int:
    value = hf.get(key, default)
    if isinstance(value, list):  # eos_token_id may list several; the first is the one T5 generates
        value = value[0] if value else default
    return default if value is None else int(value)


def config_from_hf(hf: dict) -> Seq2SeqConfig:
    """A Seq2SeqConfig from a T5 ``config.json`` dict; the head's tying is settled in :func:`from_hf`."""
    if hf.get("model_type", "t5") != "t5":
        raise UnsupportedModelError(f"config.json: model_type={hf.get('model_type')!r} is not supported here; expected 't5'")
    archs = hf.get("architectures") or ["T5ForConditionalGeneration"]
    if archs[0] not in _HEADS:
        raise UnsupportedModelError(f"config.json: architectures={archs!r} is not supported; expected one of {sorted(_HEADS)}")
    if hf.get("is_encoder_decoder") is False:
        raise UnsupportedModelError("config.json: is_encoder_decoder=False is not supported; expected an encoder-decoder")
    activation, gated = _activation_from_hf(hf.get("feed_forward_proj", "relu"))
    pad = _int(hf, "pad_token_id", 0)
    return Seq2SeqConfig(
        vocab_size=hf["vocab_size"], d_model=hf["d_model"], head_dim=hf["d_kv"], d_ff=hf["d_ff"],
        n_layer=hf["num_layers"], n_decoder_layer=hf.get("num_decoder_layers") or hf["num_layers"],
        n_head=hf["num_heads"], relative_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_max_distance=hf.get("relative_attention_max_distance", 128),
        activation=activation, gated_mlp=gated, norm_eps=hf.get("layer_norm_epsilon", 1e-6),
        dropout=hf.get("dropout_rate", 0.1), tie_word_embeddings=_scales_output(hf), head=_HEADS[archs[0]],
        pad_token_id=pad, eos_token_id=_int(hf, "eos_token_id", 1),
        decoder_start_token_id=_int(hf, "decoder_start_token_id", pad),
        init_std=hf.get("initializer_factor", 1.0),
    )


def _scales_output(hf: dict) -> bool:
    if "scale_decoder_outputs" in hf:
        return bool(hf["scale_decoder_outputs"])
    return hf.get("tie_word_embeddings", True) is not False


def layer_map(i: int, decoder: bool, gated: bool) -> dict[str, str | tuple[str, ...]]:
    """Ours → HF names inside block i (ours ``blocks.i.``, theirs ``block.i.``); a tuple is fused."""
    ff = 2 if decoder else 1
    names: dict[str, str | tuple[str, ...]] = {
        "norm_1.weight": "layer.0.layer_norm.weight",
        "attn.qkv.weight": tuple(f"layer.0.SelfAttention.{p}.weight" for p in "qkv"),
        "attn.proj.weight": "layer.0.SelfAttention.o.weight",
        "norm_2.weight": f"layer.{ff}.layer_norm.weight",
        "mlp.down.weight": f"layer.{ff}.DenseReluDense.wo.weight",
    }
    if gated:  # wi_0 goes through the activation, wi_1 is the linear branch
        names["mlp.gate.weight"] = f"layer.{ff}.DenseReluDense.wi_0.weight"
        names["mlp.up.weight"] = f"layer.{ff}.DenseReluDense.wi_1.weight"
    else:
        names["mlp.up.weight"] = f"layer.{ff}.DenseReluDense.wi.weight"
    if decoder:
        names["norm_cross.weight"] = "layer.1.layer_norm.weight"
        names["cross_attn.q.weight"] = "layer.1.EncDecAttention.q.weight"
        names["cross_attn.kv.weight"] = ("layer.1.EncDecAttention.k.weight", "layer.1.EncDecAttention.v.weight")
        names["cross_attn.proj.weight"] = "layer.1.EncDecAttention.o.weight"
    return names


def stacks(config: Seq2SeqConfig) -> list[tuple[str, int, bool]]:
    return [("encoder", config.n_layer, False), ("decoder", config.n_decoder_layer, True)]


def from_hf(hf_config: dict, state_dict: dict[str, Tensor]) -> tuple[Seq2SeqConfig, dict[str, Tensor]]:
    """A T5 config.json dict and state dict → our Seq2SeqConfig and state dict.

    >>> config, sd = from_hf(hf_model.config.to_dict(), hf_model.state_dict())  # doctest: +SKIP
    """
    config = config_from_hf(hf_config)
    sd = {k.removeprefix("transformer."): v for k, v in state_dict.items()}
    embed = sd.pop("shared.weight", None)
    for copy in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
        dup = sd.pop(copy, None)
        embed = dup if embed is None else embed
    if embed is None:
        raise ModelError("checkpoint: missing tensor 'shared.weight'")
    out: dict[str, Tensor] = {"embed.weight": embed}
    for stack, n_layer, decoder in stacks(config):
        out[f"{stack}.rel_bias.embedding.weight"] = take(
            sd, f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
        for i in range(n_layer):
            for ours, theirs in layer_map(i, decoder, config.gated_mlp).items():
                if isinstance(theirs, tuple):
                    t = fuse(*(take(sd, f"{stack}.block.{i}.{name}") for name in theirs))
                else:
                    t = take(sd, f"{stack}.block.{i}.{theirs}")
                out[f"{stack}.blocks.{i}.{ours}"] = t
        out[f"{stack}.norm.weight"] = take(sd, f"{stack}.final_layer_norm.weight")

    lm_head = sd.pop("lm_head.weight", None)
    if config.head == "lm":
        if config.tie_word_embeddings:
            if lm_head is not None and not torch.equal(lm_head, embed):
                raise ModelError(
                    "checkpoint: lm_head.weight differs from shared.weight, but config.json ties them "
                    "(tie_word_embeddings / scale_decoder_outputs true); a scaled untied head is not supported"
                )
        else:
            # T5 v1.1: a head of its own; if the file left it out, it was tied to the embedding.
            out["lm_head.weight"] = (lm_head if lm_head is not None else embed).clone()
    for key in _IGNORED:
        sd.pop(key, None)
    if sd:
        extra = sorted(sd)
        raise ModelError(f"checkpoint: unexpected tensors for T5 {extra[:8]}{' ...' if len(extra) > 8 else ''}")
    _check_shapes(config, out)
    return config, independent(out)


def _check_shapes(config: Seq2SeqConfig, sd: dict[str, Tensor]) -> None:
    c = config
    inner = c.n_head * c.head_dim
    expected = {"embed.weight": (c.vocab_size, c.d_model)}
    for stack, _, _ in stacks(c):
        expected[f"{stack}.rel_bias.embedding.weight"] = (c.relative_buckets, c.n_head)
        expected[f"{stack}.blocks.0.attn.qkv.weight"] = (3 * inner, c.d_model)
        expected[f"{stack}.blocks.0.mlp.up.weight"] = (c.d_ff, c.d_model)
    for key, shape in expected.items():
        if tuple(sd[key].shape) != shape:
            raise ModelError(f"checkpoint: tensor {key!r} has shape {tuple(sd[key].shape)}, "
                             f"but config.json implies {shape}")


def to_hf(config: Seq2SeqConfig, state_dict: dict[str, Tensor]) -> tuple[dict, dict[str, Tensor]]:
    """Our Seq2SeqConfig and state dict → a T5 config.json dict and state dict that
    ``T5ForConditionalGeneration`` (``T5Model`` for ``head='none'``) loads with ``from_pretrained``.

    Tensors come back contiguous and sharing no storage (safetensors refuses shared ones); the copies
    transformers re-ties itself (``embed_tokens``, a tied ``lm_head``) are left out.
    """
    c = config
    if c.absolute_positions != "none":
        raise UnsupportedModelError(f"Seq2SeqConfig.absolute_positions={c.absolute_positions!r}: T5 has relative "
                                    "positions only; train with absolute_positions='none' to convert")
    hf = {
        "model_type": "t5", "architectures": [_ARCHITECTURES[c.head]],
        "vocab_size": c.vocab_size, "d_model": c.d_model, "d_kv": c.head_dim, "d_ff": c.d_ff,
        "num_layers": c.n_layer, "num_decoder_layers": c.n_decoder_layer, "num_heads": c.n_head,
        "relative_attention_num_buckets": c.relative_buckets,
        "relative_attention_max_distance": c.relative_max_distance,
        "dropout_rate": c.dropout, "layer_norm_epsilon": c.norm_eps, "initializer_factor": c.init_std,
        "feed_forward_proj": _activation_to_hf(c.activation, c.gated_mlp),
        "tie_word_embeddings": c.tie_word_embeddings, "is_encoder_decoder": True, "use_cache": True,
        "pad_token_id": c.pad_token_id, "eos_token_id": c.eos_token_id,
        "decoder_start_token_id": c.decoder_start_token_id,
    }
    sd = dict(state_dict)
    inner = c.n_head * c.head_dim
    out: dict[str, Tensor] = {"shared.weight": take(sd, "embed.weight")}
    for stack, n_layer, decoder in stacks(c):
        out[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = take(
            sd, f"{stack}.rel_bias.embedding.weight")
        for i in range(n_layer):
            for ours, theirs in layer_map(i, decoder, c.gated_mlp).items():
                t = take(sd, f"{stack}.blocks.{i}.{ours}")
                if isinstance(theirs, tuple):
                    for name, part in zip(theirs, t.split(inner, dim=0), strict=True):
                        out[f"{stack}.block.{i}.{name}"] = part.clone()  # a view would share storage
                else:
                    out[f"{stack}.block.{i}.{theirs}"] = t
        out[f"{stack}.final_layer_norm.weight"] = take(sd, f"{stack}.norm.weight")
    lm_head = sd.pop("lm_head.weight", None)
    if c.head == "lm" and not c.tie_word_embeddings:
        if lm_head is None:
            raise ModelError("state_dict: missing tensor 'lm_head.weight' (the config has an untied LM head)")
        out["lm_head.weight"] = lm_head
    if sd:
        extra = sorted(sd)
        raise ModelError(f"state_dict: unexpected tensors for Seq2SeqConfig {extra[:8]}")
    return hf, independent(out)

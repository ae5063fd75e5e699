"""BERT ↔ duplexlm encoder.

One key table serves both directions. BERT keeps query, key and value as three Linears; ours is one
fused ``qkv``, so they are concatenated on the way in and split on the way out. The masked-LM
decoder weight is the word embedding in both, so it is never written twice.

>>> import torch
>>> from duplexlm.config import EncoderConfig
>>> from duplexlm.models.encoder import Encoder
>>> cfg = EncoderConfig(vocab_size=64, max_seq_len=16, d_model=32, n_layer=1, n_head=4, head="mlm")
>>> hf_config, hf_sd = to_hf(cfg, Encoder(cfg).state_dict())
>>> hf_config["architectures"], "bert.embeddings.word_embeddings.weight" in hf_sd
(['BertForMaskedLM'], True)
>>> back, sd = from_hf(hf_config, hf_sd)
>>> back.head, sorted(sd)[:2]
('mlm', ['blocks.0.attn.proj.bias', 'blocks.0.attn.proj.weight'])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..config import EncoderConfig
from ..errors import ConfigError, ModelError, UnsupportedModelError
from ..fileutil import independent
from ..models.encoder import Encoder
from .common import OUR_ACTIVATIONS, activation_from_hf, labels_from_hf, labels_to_hf

# ours → BERT, outside the blocks; BERT's backbone keys get the ``bert.`` prefix in headed models
_BACKBONE = {
    "embed.weight": "embeddings.word_embeddings.weight",
    "pos_embed.weight": "embeddings.position_embeddings.weight",
    "type_embed.weight": "embeddings.token_type_embeddings.weight",
    "embed_norm.weight": "embeddings.LayerNorm.weight",
    "embed_norm.bias": "embeddings.LayerNorm.bias",
}
_POOLER = {"pooler.weight": "pooler.dense.weight", "pooler.bias": "pooler.dense.bias"}
LAYER = {  # ours → BERT, inside block i (``encoder.layer.{i}.``); q/k/v are handled apart
    "attn.proj": "attention.output.dense",
    "norm_1": "attention.output.LayerNorm",
    "mlp.up": "intermediate.dense",
    "mlp.down": "output.dense",
    "norm_2": "output.LayerNorm",
}
_HEADS = {  # ours → BERT, head keys carry no prefix
    "mlm": {
        "mlm_head.dense.weight": "cls.predictions.transform.dense.weight",
        "mlm_head.dense.bias": "cls.predictions.transform.dense.bias",
        "mlm_head.norm.weight": "cls.predictions.transform.LayerNorm.weight",
        "mlm_head.norm.bias": "cls.predictions.transform.LayerNorm.bias",
        "mlm_head.decoder.bias": "cls.predictions.bias",
    },
    "classify": {"classifier.weight": "classifier.weight", "classifier.bias": "classifier.bias"},
    "tag": {"classifier.weight": "classifier.weight", "classifier.bias": "classifier.bias"},
    "none": {},
}

# architectures[0] → our head; BertForPreTraining's next-sentence head is dropped
_ARCH_TO_HEAD = {
    "BertModel": "none",
    "BertForMaskedLM": "mlm",
    "BertForPreTraining": "mlm",
    "BertForSequenceClassification": "classify",
    "BertForTokenClassification": "tag",
}
_HEAD_TO_ARCH = {
    "none": "BertModel",
    "mlm": "BertForMaskedLM",
    "classify": "BertForSequenceClassification",
    "tag": "BertForTokenClassification",
}
# Present in some checkpoints but carrying nothing we keep: buffers, the next-sentence head, and
# copies of tied tensors (the decoder weight is the word embedding, its bias is cls.predictions.bias).
_IGNORED = ("embeddings.position_ids", "embeddings.token_type_ids", "cls.seq_relationship.weight",
            "cls.seq_relationship.bias", "cls.predictions.decoder.weight", "cls.predictions.decoder.bias")


def _require(hf: dict, name: str) -> Any:
    if name not in hf:
        raise ConfigError(f"config.json: missing field {name!r} for model_type 'bert'")
    return hf[name]


def config_from_hf(hf: dict, has_pooler: bool = True) -> EncoderConfig:
    """Our :class:`EncoderConfig` for a BERT ``config.json`` dict; ``has_pooler`` says whether the
    checkpoint holds pooler weights (BertForMaskedLM and BertForTokenClassification do not)."""
    if hf.get("model_type", "bert") != "bert":
        raise UnsupportedModelError(f"config.json: model_type={hf['model_type']!r} is not 'bert'")
    checks = [
        ("position_embedding_type", hf.get("position_embedding_type", "absolute"), "absolute"),
        ("is_decoder", hf.get("is_decoder", False), False),
        ("add_cross_attention", hf.get("add_cross_attention", False), False),
    ]
    for name, value, expected in checks:
        if value != expected:
            raise UnsupportedModelError(f"config.json: {name}={value!r} is not supported; expected {expected!r}")
    archs = hf.get("architectures") or ["BertModel"]
    if archs[0] not in _ARCH_TO_HEAD:
        raise UnsupportedModelError(
            f"config.json: architectures[0]={archs[0]!r} is not supported; expected one of {sorted(_ARCH_TO_HEAD)}"
        )
    head = _ARCH_TO_HEAD[archs[0]]
    if head == "mlm" and hf.get("tie_word_embeddings", True) is False:
        raise UnsupportedModelError(
            "config.json: tie_word_embeddings=False is not supported; our masked-LM decoder is the word embedding"
        )
    num_labels, label_names = labels_from_hf(hf)
    d_model = _require(hf, "hidden_size")
    return EncoderConfig(
        vocab_size=_require(hf, "vocab_size"), max_seq_len=hf.get("max_position_embeddings", 512),
        type_vocab_size=hf.get("type_vocab_size", 2), d_model=d_model,
        n_layer=_require(hf, "num_hidden_layers"), n_head=_require(hf, "num_attention_heads"),
        d_ff=hf.get("intermediate_size") or 4 * d_model,
        activation=activation_from_hf(hf.get("hidden_act", "gelu")),
        norm_eps=hf.get("layer_norm_eps", 1e-12), dropout=hf.get("hidden_dropout_prob", 0.1),
        attn_dropout=hf.get("attention_probs_dropout_prob", 0.1),
        # a sequence classifier always has a pooler; let a missing one fail as a missing tensor
        pooler=has_pooler or head == "classify", head=head,
        pooling="cls",  # BERT's classifier reads [CLS] through the pooler; it has no other pooling
        num_labels=num_labels, label_names=label_names,
        classifier_dropout=hf.get("classifier_dropout"),
        pad_token_id=hf["pad_token_id"] if hf.get("pad_token_id") is not None else 0,
        init_std=hf.get("initializer_range", 0.02),
    )


def _key_map(config: EncoderConfig) -> dict[str, str]:
    """ours → BERT for every tensor except the fused q/k/v, BERT keys without the ``bert.`` prefix."""
    keys = dict(_BACKBONE)
    if config.pooler:
        keys.update(_POOLER)
    for i in range(config.n_layer):
        for ours, theirs in LAYER.items():
            for kind in ("weight", "bias"):
                keys[f"blocks.{i}.{ours}.{kind}"] = f"encoder.layer.{i}.{theirs}.{kind}"
    keys.update(_HEADS[config.head])
    return keys


def _strip(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop the ``bert.`` prefix and rename TF-era LayerNorm ``gamma``/``beta`` to weight/bias."""
    out = {}
    for k, v in state_dict.items():
        k = k.removeprefix("bert.")
        if "LayerNorm." in k:
            k = k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        out[k] = v
    return out


def _check_shapes(config: EncoderConfig, state_dict: dict[str, Tensor], hf_names: dict[str, str]) -> None:
    """Compare every converted tensor with the shape our model expects, naming the BERT key."""
    with torch.device("meta"):
        expected = {k: v.shape for k, v in Encoder(config).state_dict().items()}
    for key, t in state_dict.items():
        if key in expected and t.shape != expected[key]:
            raise ModelError(f"checkpoint: tensor {hf_names.get(key, key)!r} has shape {tuple(t.shape)}, "
                             f"expected {tuple(expected[key])} from config.json")


def from_hf(hf_config: dict, state_dict: dict[str, Tensor]) -> tuple[EncoderConfig, dict[str, Tensor]]:
    """Convert a BERT ``config.json`` dict and state dict (with or without the ``bert.`` prefix).

    The returned state dict leaves out ``mlm_head.decoder.weight``: it is the word embedding, and
    :class:`~duplexlm.models.encoder.Encoder` fills it in when loading.
    """
    sd = _strip(state_dict)
    config = config_from_hf(hf_config, has_pooler="pooler.dense.weight" in sd)
    if config.head == "mlm" and "cls.predictions.bias" not in sd and "cls.predictions.decoder.bias" in sd:
        sd["cls.predictions.bias"] = sd["cls.predictions.decoder.bias"]  # older exports keep only this copy
    wte, dec = sd.get("embeddings.word_embeddings.weight"), sd.get("cls.predictions.decoder.weight")
    if config.head == "mlm" and wte is not None and dec is not None and not torch.equal(wte, dec):
        raise UnsupportedModelError(
            "checkpoint: cls.predictions.decoder.weight differs from embeddings.word_embeddings.weight; "
            "our masked-LM decoder is tied to the word embedding"
        )

    out: dict[str, Tensor] = {}
    hf_names: dict[str, str] = {}
    used: set[str] = set()
    missing: list[str] = []

    def take(theirs: str) -> Tensor | None:
        if theirs not in sd:
            missing.append(theirs)
            return None
        used.add(theirs)
        return sd[theirs]

    for ours, theirs in _key_map(config).items():
        t = take(theirs)
        if t is not None:
            out[ours], hf_names[ours] = t, theirs
    for i in range(config.n_layer):
        for kind in ("weight", "bias"):
            parts = [take(f"encoder.layer.{i}.attention.self.{name}.{kind}") for name in ("query", "key", "value")]
            if all(p is not None for p in parts):
                out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(parts, dim=0)  # (3C, C) or (3C,)
                hf_names[f"blocks.{i}.attn.qkv.{kind}"] = f"encoder.layer.{i}.attention.self.query/key/value.{kind}"
    if missing:
        raise ModelError(f"checkpoint: missing tensor(s) {missing} for a BERT with head={config.head!r}")
    unexpected = sorted(k for k in sd if k not in used and k not in _IGNORED)
    if unexpected:
        raise ModelError(f"checkpoint: unexpected tensor(s) {unexpected} for architectures[0] "
                         f"{(hf_config.get('architectures') or ['BertModel'])[0]!r}")
    _check_shapes(config, out, hf_names)
    return config, independent(out)


def _check_representable(config: EncoderConfig) -> None:
    """Refuse what BERT cannot hold: its classifier (and BertModel's ``pooler_output``) always read the
    [CLS] token through the pooler, so mean pooling would export as a different model; its blocks are
    post-norm, so a pre-norm encoder has no BERT counterpart at all."""
    if config.tasks:
        raise UnsupportedModelError(
            f"EncoderConfig.tasks: a multi-task encoder ({', '.join(config.tasks)}) has no Hugging Face BERT "
            "counterpart (a BERT checkpoint holds one head); keep this model in duplexlm format")
    if config.head_dim * config.n_head != config.d_model:
        raise UnsupportedModelError(
            f"EncoderConfig.head_dim={config.head_dim} with n_head={config.n_head} has no Hugging Face BERT "
            f"counterpart: BERT's heads split hidden_size={config.d_model} evenly (head size hidden_size / "
            "num_attention_heads), and a head-pruned encoder has fewer heads of the same size; keep this model "
            "in duplexlm format")
    if config.norm_position != "post":
        raise UnsupportedModelError(
            f"EncoderConfig.norm_position={config.norm_position!r} has no Hugging Face BERT counterpart: BERT's "
            "blocks normalise after the residual sum (norm_position='post'); keep this model in duplexlm format")
    if config.pooling != "cls" and config.head in ("none", "classify"):
        arch = _HEAD_TO_ARCH[config.head]
        raise UnsupportedModelError(
            f"EncoderConfig.pooling={config.pooling!r} with head={config.head!r} has no {arch} counterpart: "
            "Hugging Face BERT pools only the [CLS] token through its pooler (dense + tanh), which is "
            "pooling='cls' with pooler=True; keep this model in duplexlm format, or train it with pooling='cls'"
        )


def config_to_hf(config: EncoderConfig) -> dict:
    """The BERT ``config.json`` dict for our config (``architectures`` picked from ``head``);
    :class:`UnsupportedModelError` for ``pooling='mean'`` with a classifier or pooled output."""
    c = config
    _check_representable(c)
    hf: dict = {
        "model_type": "bert", "architectures": [_HEAD_TO_ARCH[c.head]],
        "vocab_size": c.vocab_size, "hidden_size": c.d_model, "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head, "intermediate_size": c.d_ff,
        "hidden_act": OUR_ACTIVATIONS[c.activation], "hidden_dropout_prob": c.dropout,
        "attention_probs_dropout_prob": c.attn_dropout, "max_position_embeddings": c.max_seq_len,
        "type_vocab_size": c.type_vocab_size, "initializer_range": c.init_std, "layer_norm_eps": c.norm_eps,
        "pad_token_id": c.pad_token_id, "position_embedding_type": "absolute",
        "classifier_dropout": c.classifier_dropout, "is_decoder": False, "add_cross_attention": False,
        "tie_word_embeddings": True,
    }
    if c.head in ("classify", "tag"):
        hf.update(labels_to_hf(c.num_labels, c.label_names))
    return hf


def to_hf(config: EncoderConfig, state_dict: dict[str, Tensor]) -> tuple[dict, dict[str, Tensor]]:
    """Convert our config and state dict to BERT's, keyed as ``architectures[0]`` expects.

    Headed models prefix the backbone with ``bert.``; BertModel does not. BertForMaskedLM and
    BertForTokenClassification have no pooler, so a pooler is left out there; the tied decoder
    weight is left out too (transformers ties it to the word embedding on load).

    ``pooling='mean'`` with ``head='classify'`` or ``'none'`` raises :class:`UnsupportedModelError`: BERT
    pools only [CLS]. Masked-LM and tagging heads pool nothing, so they export (and come back as 'cls').
    """
    c = config
    hf = config_to_hf(c)
    keep_pooler = c.pooler and c.head in ("none", "classify")
    prefix = "" if c.head == "none" else "bert."
    head_keys = set(_HEADS[c.head].values())
    ignored = {"mlm_head.decoder.weight"} | (set() if keep_pooler else set(_POOLER))
    used: set[str] = set()
    missing: list[str] = []
    out: dict[str, Tensor] = {}

    def take(ours: str) -> Tensor | None:
        if ours not in state_dict:
            missing.append(ours)
            return None
        used.add(ours)
        return state_dict[ours]

    for ours, theirs in _key_map(c).items():
        if ours in ignored:
            continue
        t = take(ours)
        if t is not None:
            out[theirs if theirs in head_keys else prefix + theirs] = t
    for i in range(c.n_layer):
        for kind in ("weight", "bias"):
            qkv = take(f"blocks.{i}.attn.qkv.{kind}")
            if qkv is None:
                continue
            for name, t in zip(("query", "key", "value"), qkv.chunk(3, dim=0)):
                out[f"{prefix}encoder.layer.{i}.attention.self.{name}.{kind}"] = t.clone()
    if missing:
        raise ModelError(f"state_dict: missing tensor(s) {missing} for an encoder with head={c.head!r}")
    unexpected = sorted(k for k in state_dict if k not in used and k not in ignored)
    if unexpected:
        raise ModelError(f"state_dict: unexpected tensor(s) {unexpected} for an encoder with head={c.head!r}, "
                         f"pooler={c.pooler}")
    return hf, independent(out)


__all__ = ["config_from_hf", "config_to_hf", "from_hf", "to_hf"]

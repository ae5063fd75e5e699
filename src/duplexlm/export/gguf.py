"""GGUF exports of decoders for llama.cpp, written with the ``gguf`` package.

The model goes through its Hugging Face form (:func:`duplexlm.convert.to_hf`, whose parity with
transformers is tested) and is laid out as llama.cpp reads that form:

- ``llama`` (RMSNorm, SwiGLU, RoPE, grouped-query attention, no biases): llama.cpp rotates adjacent
  pairs of a head's dimensions (its "normal" RoPE), where Hugging Face rotates the first half against
  the second, so the rows of ``attn_q`` and ``attn_k`` are reordered per head: row ``2i`` of a head
  takes Hugging Face's row ``i`` and row ``2i + 1`` its row ``i + head_dim/2``;
- ``qwen2`` (the same with q/k/v biases): llama.cpp rotates halves for it ("NeoX" RoPE), rows as they are;
- ``gpt2`` (LayerNorm, GELU, learned positions, fused q/k/v, biases): Conv1D weights as (out, in).

The head is written as ``output.weight`` even when tied (a copy of ``token_embd.weight``). The
tokenizer goes in as llama.cpp's byte-level BPE (``tokenizer.ggml.model = gpt2``, pre-tokenizer
``gpt-2``: our byte-level BPE splits text as GPT-2 does; with ``--cjk-chars`` it isolates each Chinese
character first, which gives the same tokens since no merge was ever learnt across two characters),
with its merges, special tokens (as control tokens), ids and chat template.

``--quantize q8_0`` (or ``int8``) stores every matrix whose rows divide into blocks of 32 as Q8_0
(a scale per 32 weights), ``f16`` as half precision; vectors (norms, biases) stay f32.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..config import AnyConfig, DecoderConfig
from ..convert import to_hf
from ..errors import UnsupportedModelError

GGUF_FILE = "model.gguf"
QUANTS = {"q8_0": "Q8_0", "int8": "Q8_0", "f16": "F16"}


def architecture(config: AnyConfig) -> str:
    """llama.cpp's architecture for ``config``, or a one-line refusal saying what would work."""
    if isinstance(config, DecoderConfig) and config.head == "lm":
        c = config
        if c.positions == "learned":
            return "gpt2"
        if c.positions == "rope" and c.norm == "rmsnorm" and c.gated_mlp and not (c.out_bias or c.mlp_bias):
            return "qwen2" if c.qkv_bias else "llama"
        raise UnsupportedModelError("--format gguf: this decoder is neither GPT-2, Llama nor Qwen2 shaped "
                                    "(llama.cpp's Llama takes no output or MLP biases); export it with --format ct2")
    what = f"a {config.family} with head {getattr(config, 'head', 'none')!r}"
    hint = {"encoder": "export encoders with --format onnx", "seq2seq": "export T5 with --format ct2",
            "rnn": "recurrent baselines have no engine format; serve them with duplex serve"}.get(
        config.family, "GGUF takes decoders with an LM head")
    raise UnsupportedModelError(f"--format gguf: {what} is not supported; {hint}")


check = architecture


def interleave_rope_rows(w: Tensor, n_head: int) -> Tensor:
    """Hugging Face's q or k rows (or bias) per head, first half then second half of the rotated pairs,
    → llama.cpp's adjacent pairs: per head, rows ``i`` and ``i + d/2`` become rows ``2i`` and ``2i + 1``."""
    d = w.shape[0] // n_head
    return w.reshape(n_head, 2, d // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def tensors(config: DecoderConfig, state_dict: dict[str, Tensor]) -> tuple[str, list[tuple[str, Tensor]]]:
    """The architecture and the (GGUF name, tensor) pairs of ``config``'s model, in torch's layout."""
    arch = architecture(config)
    c = config
    _, hf = to_hf(config, state_dict)
    out: list[tuple[str, Tensor]] = []
    if arch == "gpt2":
        p = "transformer."
        out += [("token_embd.weight", hf[p + "wte.weight"]), ("position_embd.weight", hf[p + "wpe.weight"])]
        names = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "ln_2": "ffn_norm",
                 "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
        for i in range(c.n_layer):
            for theirs, ours in names.items():
                w = hf[f"{p}h.{i}.{theirs}.weight"]
                out.append((f"blk.{i}.{ours}.weight", w.t() if w.dim() == 2 else w))  # Conv1D: (in, out)
                out.append((f"blk.{i}.{ours}.bias", hf[f"{p}h.{i}.{theirs}.bias"]))
        out += [("output_norm.weight", hf[p + "ln_f.weight"]), ("output_norm.bias", hf[p + "ln_f.bias"])]
        out.append(("output.weight", hf.get("lm_head.weight", hf[p + "wte.weight"])))
        return arch, out
    p = "model."
    out.append(("token_embd.weight", hf[p + "embed_tokens.weight"]))
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    heads = {"attn_q": c.n_head, "attn_k": c.n_kv_head}
    for i in range(c.n_layer):
        for theirs, ours in names.items():
            for kind in ("weight", "bias"):
                t = hf.get(f"{p}layers.{i}.{theirs}.{kind}")
                if t is None:
                    continue
                if arch == "llama" and ours in heads:
                    t = interleave_rope_rows(t, heads[ours])
                out.append((f"blk.{i}.{ours}.{kind}", t))
    out.append(("output_norm.weight", hf[p + "norm.weight"]))
    out.append(("output.weight", hf.get("lm_head.weight", hf[p + "embed_tokens.weight"])))
    return arch, out


def _tokenizer(writer: Any, tokenizer_dir: Path, vocab_size: int) -> dict[str, Any]:
    """Write the tokenizer's metadata → what the manifest records of it."""
    import gguf

    data = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    model, pre = data.get("model") or {}, data.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    byte_level = [p for p in parts if p.get("type") == "ByteLevel"]
    if model.get("type") != "BPE" or len(byte_level) != 1 or not byte_level[0].get("use_regex", True) \
            or data.get("normalizer") is not None or len(parts) > 2:
        raise UnsupportedModelError(f"{tokenizer_dir}/tokenizer.json: --format gguf writes byte-level BPE tokenizers "
                                    "(as duplex tokenizer train --kind bpe makes); this one has no llama.cpp form here")
    config_file = tokenizer_dir / "tokenizer_config.json"
    tok_config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [gguf.TokenType.UNUSED] * vocab_size
    for text, i in model["vocab"].items():
        if i < vocab_size:
            tokens[i], types[i] = text, gguf.TokenType.NORMAL
    for added in data.get("added_tokens", []):
        if added["id"] < vocab_size:
            tokens[added["id"]] = added["content"]
            types[added["id"]] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    ids = {t: i for i, t in enumerate(tokens)}
    found = {}
    for key, add in (("bos_token", writer.add_bos_token_id), ("eos_token", writer.add_eos_token_id),
                     ("pad_token", writer.add_pad_token_id), ("unk_token", writer.add_unk_token_id)):
        text = tok_config.get(key)
        text = text.get("content") if isinstance(text, dict) else text
        if text in ids:
            add(ids[text])
            found[key] = ids[text]
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    if tok_config.get("chat_template"):
        writer.add_chat_template(tok_config["chat_template"])
    return {"tokenizer": {"model": "gpt2", "pre": "gpt-2", "tokens": len(tokens), "merges": len(merges), **found}}


def write(config: AnyConfig, state_dict: dict[str, Tensor], tokenizer_dir: Path, out: Path,
          quantize: str | None) -> dict[str, Any]:
    import gguf

    assert isinstance(config, DecoderConfig)
    arch, named = tensors(config, state_dict)
    c = config
    qtype = getattr(gguf.GGMLQuantizationType, QUANTS[quantize]) if quantize else None
    writer = gguf.GGUFWriter(str(out / GGUF_FILE), arch)
    writer.add_name(f"duplexlm {arch}")
    writer.add_file_type({None: gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
                          "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[QUANTS.get(quantize or "")])
    hparams = [("context_length", c.max_seq_len), ("embedding_length", c.d_model), ("block_count", c.n_layer),
               ("feed_forward_length", c.d_ff), ("head_count", c.n_head), ("vocab_size", c.vocab_size)]
    if arch == "gpt2":
        hparams.append(("layer_norm_eps", c.norm_eps))
    else:
        hparams += [("head_count_kv", c.n_kv_head), ("layer_norm_rms_eps", c.norm_eps), ("rope_freq_base", c.rope_theta),
                    ("rope_dimension_count", c.head_dim), ("key_length", c.head_dim), ("value_length", c.head_dim)]
    for key, value in hparams:  # under "{arch}." in the file, as llama.cpp reads them
        getattr(writer, f"add_{key}")(value)
    details = _tokenizer(writer, tokenizer_dir, c.vocab_size)
    stored: dict[str, str] = {}
    for name, t in named:
        array = t.detach().to(torch.float32).contiguous().numpy()
        if qtype == gguf.GGMLQuantizationType.Q8_0 and array.ndim == 2 and array.shape[1] % 32 == 0:
            writer.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
            stored[name] = "Q8_0"
        elif qtype == gguf.GGMLQuantizationType.F16 and array.ndim == 2:
            writer.add_tensor(name, array.astype(np.float16))
            stored[name] = "F16"
        else:
            writer.add_tensor(name, array)
            stored[name] = "F32"
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    counts = {kind: sum(v == kind for v in stored.values()) for kind in sorted(set(stored.values()))}
    return {"engine": "llama.cpp", "file": GGUF_FILE, "gguf_architecture": arch, "tensor_types": counts, **details}

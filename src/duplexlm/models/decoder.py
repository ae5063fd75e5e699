"""A causal Transformer decoder: GPT-2 and Llama/Qwen2 from one class, switched by config fields.

Read top to bottom: block (pre-norm attention + MLP) → the model (embeddings, blocks, final norm, head).

>>> import torch
>>> from duplexlm.config import DecoderConfig
>>> model = Decoder(DecoderConfig(vocab_size=64, max_seq_len=32, d_model=32, n_layer=2, n_head=4)).eval()
>>> model(torch.randint(0, 64, (2, 8))).logits.shape
torch.Size([2, 8, 64])
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..config import DecoderConfig
from .layers import (
    MLP,
    Attention,
    Dropout,
    KVCache,
    KVCacheRows,
    RotaryEmbedding,
    attention_bias,
    build_norm,
    make_mask,
    traced,
)
from .outputs import ModelOutput


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        c = config
        self.norm_1 = build_norm(c.norm, c.d_model, c.norm_eps, c.norm_bias)
        self.attn = Attention(c.d_model, c.n_head, c.n_kv_head, c.head_dim, qkv_bias=c.qkv_bias,
                              out_bias=c.out_bias, attn_dropout=c.attn_dropout)
        self.norm_2 = build_norm(c.norm, c.d_model, c.norm_eps, c.norm_bias)
        self.mlp = MLP(c.d_model, c.d_ff, c.activation, gated=c.gated_mlp, bias=c.mlp_bias)
        self.dropout = Dropout(c.dropout)

    def forward(self, x: Tensor, bias: Tensor | None, rope: tuple[Tensor, Tensor] | None,
                kv_cache: KVCache | KVCacheRows | None, layer: int, impl: str) -> tuple[Tensor, Tensor | None]:
        """``bias``: the additive attention mask (B, 1, T, S) shared by all layers, or None for plain
        causality."""
        h, weights = self.attn(self.norm_1(x), bias=bias, is_causal=bias is None, rope=rope, kv_cache=kv_cache,
                               layer=layer, impl=impl)
        x = x + self.dropout(h)
        x = x + self.dropout(self.mlp(self.norm_2(x)))
        return x, weights


class Decoder(nn.Module):
    """Token (+ learned position) embeddings → N pre-norm blocks → final norm → optional head.

    ``head='lm'`` gives next-token logits (B, T, V); ``'classify'`` gives (B, num_labels) from the
    last real token of each row; ``'none'`` gives hidden states only.
    """

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.pos_embed = nn.Embedding(c.max_seq_len, c.d_model) if c.positions == "learned" else None
        self.rope = RotaryEmbedding(c.head_dim, c.rope_theta) if c.positions == "rope" else None
        self.dropout = Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.norm = build_norm(c.norm, c.d_model, c.norm_eps, c.norm_bias)
        self.lm_head: nn.Linear | None = None
        self.classifier: nn.Linear | None = None
        if c.head == "lm":
            self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        elif c.head == "classify":
            self.classifier = nn.Linear(c.d_model, c.num_labels, bias=False)
        self.apply(self._init_weights)
        # GPT-2: scale the init of residual projections by 1/sqrt(2 * n_layer) so the residual
        # stream's variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.down.weight")):
                nn.init.normal_(p, mean=0.0, std=c.init_std / math.sqrt(2 * c.n_layer))
        self.tie_weights()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)

    def tie_weights(self) -> None:
        """Share the token embedding with the LM head when the config says so."""
        if self.lm_head is not None and self.config.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight

    def new_cache(self, batch_size: int, max_len: int | None = None, dtype: torch.dtype | None = None) -> KVCache:
        """An empty cache for incremental decoding of up to ``max_len`` positions (default: the context).

        The same call on every generative family (:meth:`Seq2Seq.new_cache` too).
        """
        c = self.config
        max_len = max_len or c.max_seq_len
        dtype = dtype or self.embed.weight.dtype
        return KVCache(c.n_layer, batch_size, c.n_kv_head, max_len, c.head_dim, dtype=dtype,
                       device=self.embed.weight.device)

    new_kv_cache = new_cache  # the older name

    def _check_input(self, input_ids: Tensor, past: int) -> None:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids: expected shape (batch, seq_len), found {tuple(input_ids.shape)}")
        T = input_ids.shape[1]
        if self.pos_embed is not None and past + T > self.config.max_seq_len:
            raise ValueError(
                f"input_ids: {past + T} positions exceed max_seq_len={self.config.max_seq_len} "
                "of this model's learned position table"
            )
        if traced():  # torch.compile / torch.export (ONNX): the values are not known yet
            return
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.config.vocab_size):
            raise ValueError(
                f"input_ids: token ids must lie in [0, {self.config.vocab_size}), "
                f"found min {int(input_ids.min())}, max {int(input_ids.max())}"
            )

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                position_ids: Tensor | None = None, kv_cache: KVCache | KVCacheRows | None = None,
                output_hidden_states: bool = False, output_attentions: bool = False,
                logits_at: Tensor | None = None) -> ModelOutput:
        """input_ids (B, T); attention_mask (B, past + T) of 1 = real token, 0 = padding.

        With ``kv_cache``, the call's tokens follow the ``kv_cache.pos`` cached ones, and the cache is
        advanced by T. ``position_ids`` default to past..past+T-1. With per-row cache rows
        (:meth:`KVCache.rows`, the decoding engine's), positions and mask come from the rows, and the
        token ids are taken as checked (the engine checks each prompt once; a check here would wait
        for the device on every token).

        ``logits_at`` (B,): the one position per row whose logits are wanted (each prompt's last
        token when prefilling a batch): ``logits`` are then (B, 1, V), and the head skips the rest.
        A boolean (B, T) ``logits_at`` picks any positions: ``logits`` are then (N, V) for the N
        positions set, in row-major order (instruction tuning scores only the answers' tokens, and
        the vocabulary head is most of a small model's cost).
        """
        past = kv_cache.pos if kv_cache is not None else 0
        per_row = kv_cache is not None and kv_cache.per_row
        if not per_row:
            self._check_input(input_ids, past)
        B, T = input_ids.shape
        if position_ids is None:
            position_ids = kv_cache.positions if per_row else \
                torch.arange(past, past + T, device=input_ids.device)[None].expand(B, T)
        x = self.embed(input_ids)  # (B, T, C)
        if self.pos_embed is not None:
            x = x + self.pos_embed(position_ids)
        x = self.dropout(x)
        rope = self.rope(position_ids) if self.rope is not None else None
        if per_row:
            mask = kv_cache.mask
        else:
            mask = make_mask(attention_mask, T, past + T, causal=True, q_offset=past, device=input_ids.device)
        bias = attention_bias(mask, None, x.dtype)  # once for every layer
        impl = "eager" if output_attentions else "sdpa"

        hidden_states: list[Tensor] = [x] if output_hidden_states else []
        attentions: list[Tensor] = []
        for i, block in enumerate(self.blocks):
            x, weights = block(x, bias, rope, kv_cache, i, impl)
            if output_hidden_states:
                hidden_states.append(x)
            if weights is not None:
                attentions.append(weights)
        x = self.norm(x)
        if output_hidden_states:
            hidden_states[-1] = x  # as in transformers: the last entry is after the final norm
        if kv_cache is not None:
            kv_cache.advance(T)

        logits = None
        if self.lm_head is not None:
            if logits_at is None:
                h = x
            elif logits_at.dtype == torch.bool:
                if tuple(logits_at.shape) != (B, T):
                    raise ValueError(f"logits_at: a boolean mask must be {(B, T)} (as input_ids), found "
                                     f"{tuple(logits_at.shape)}")
                h = x[logits_at]  # (N, C)
            else:
                h = x[torch.arange(B, device=x.device), logits_at][:, None]
            logits = self.lm_head(h)  # (B, T, V), or (B, 1, V) with logits_at
        elif self.classifier is not None:
            logits = self.classifier(self._last_token(x, attention_mask))  # (B, num_labels)
        return ModelOutput(
            last_hidden_state=x, logits=logits,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
            kv_cache=kv_cache,
        )

    @staticmethod
    def _last_token(x: Tensor, attention_mask: Tensor | None) -> Tensor:
        """The state at each row's last real token (right padding), (B, C)."""
        if attention_mask is None:
            return x[:, -1]
        mask = attention_mask[:, -x.shape[1]:]
        idx = (mask.long().cumsum(-1).argmax(-1))  # position of the last 1 in each row
        return x[torch.arange(x.shape[0], device=x.device), idx]

    def num_flops_per_token(self, seq_len: int | None = None) -> int:
        """Forward+backward FLOPs per token: 6 × matmul parameters + attention (PaLM appendix B)."""
        c = self.config
        T = seq_len or c.max_seq_len
        n_matmul = sum(p.numel() for n, p in self.named_parameters() if p.dim() == 2 and "embed" not in n)
        if self.lm_head is not None and self.config.tie_word_embeddings:
            n_matmul += self.embed.weight.numel()
        return 6 * n_matmul + 12 * c.n_layer * c.n_head * c.head_dim * T


"""A T5-style encoder-decoder: one shared embedding, a bidirectional encoder, a causal decoder that
cross-attends to the encoder's output, and an optional LM head.

T5's particular choices, all kept here so the weights of Hugging Face T5 checkpoints run unchanged:
pre-RMSNorm blocks without biases; no absolute positions but a learned relative position bias
(bucketed ``key - query`` offsets), computed once per stack from the first layer's table and added
to every layer's self-attention scores; no 1/sqrt(head_dim) scaling of the scores; cross-attention
without position bias; a ReLU (v1.0) or gated-GELU (v1.1) feed-forward; a tied head whose input is
scaled by d_model**-0.5 (v1.0) or a separate head without scaling (v1.1).

One choice of ours, off by default (T5 has no such thing, so such a model has no Hugging Face form):
``absolute_positions='sinusoidal'`` adds the fixed sine/cosine position signal to each stack's input.
Cross-attention has no position bias, so without it the decoder finds its place in the source by
content alone, and on a monotonic task (Simplified → Traditional) it jumps where a character repeats.

Read top to bottom: cache → block → stack (encoder or decoder) → the model.

>>> import torch
>>> from duplexlm.config import Seq2SeqConfig
>>> config = Seq2SeqConfig(vocab_size=64, d_model=32, head_dim=8, d_ff=64, n_layer=2, n_head=4)
>>> model = Seq2Seq(config).eval()
>>> src, tgt = torch.randint(0, 64, (2, 7)), torch.randint(0, 64, (2, 5))
>>> model(src, decoder_input_ids=tgt).logits.shape
torch.Size([2, 5, 64])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import Seq2SeqConfig
from .layers import (
    MLP,
    Attention,
    Dropout,
    KVCache,
    KVCacheRows,
    RelativePositionBias,
    RMSNorm,
    attention_bias,
    make_mask,
    traced,
)
from .outputs import ModelOutput


def shift_right(labels: Tensor, decoder_start_token_id: int = 0, pad_token_id: int = 0) -> Tensor:
    """Decoder inputs for teacher forcing: ``labels`` moved one step right behind the start token,
    with the loss's ignore index -100 replaced by padding.

    >>> shift_right(torch.tensor([[5, 6, 1, -100]])).tolist()
    [[0, 5, 6, 1]]
    """
    shifted = torch.empty_like(labels)  # (B, T)
    shifted[..., 0] = decoder_start_token_id
    shifted[..., 1:] = labels[..., :-1]
    return shifted.masked_fill(shifted == -100, pad_token_id)


# ----------------------------------------------------------------------------------------------------
# Cache for incremental decoding


class Seq2SeqCache:
    """What decoding token by token keeps between calls: the decoder's self-attention keys and values
    (a preallocated :class:`KVCache`), and each decoder layer's cross-attention keys and values,
    projected once from the encoder output at the first call, with the encoder's padding mask.

    With ``max_source_len``, the cross-attention keys and values also get preallocated rows, so that
    the decoding engine can address the cache per row (:meth:`rows`): sources of different lengths
    joining and leaving a running batch.

    >>> cache = Seq2SeqCache(n_layer=2, batch_size=1, n_head=4, max_len=16, head_dim=8)
    >>> cache.pos, cache.has_cross
    (0, False)
    """

    per_row = False

    def __init__(self, n_layer: int, batch_size: int, n_head: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
                 max_source_len: int | None = None) -> None:
        self.self_attn = KVCache(n_layer, batch_size, n_head, max_len, head_dim, dtype=dtype, device=device)
        self.batch_size = batch_size
        self.cross: list[tuple[Tensor, Tensor]] = []  # per layer: k, v each (B, nh, S, hs)
        self.encoder_mask: Tensor | None = None  # (B, S) of 1/0, or None when nothing is padded
        self.max_source_len = max_source_len
        if max_source_len is not None:  # per-row storage: (n_layer, B, nh, S_max, hs) and (B, S_max)
            shape = (n_layer, batch_size, n_head, max_source_len, head_dim)
            self.cross_k = torch.zeros(shape, dtype=dtype, device=device)
            self.cross_v = torch.zeros(shape, dtype=dtype, device=device)
            self.source_keep = torch.zeros(batch_size, max_source_len, dtype=torch.bool, device=device)

    @property
    def pos(self) -> int:
        """Number of decoder positions already cached."""
        return self.self_attn.pos

    @property
    def has_cross(self) -> bool:
        return bool(self.cross)

    def reset(self) -> None:
        """Forget everything, so the cache can serve a new batch of sources."""
        self.self_attn.reset()
        self.cross = []
        self.encoder_mask = None

    # -- per row (continuous batching) ------------------------------------------------------------
    def _need_rows(self) -> None:
        if self.max_source_len is None:
            raise ValueError("Seq2SeqCache: per-row use needs max_source_len (see Seq2Seq.new_cache)")

    def set_source(self, start: int, cross: list[tuple[Tensor, Tensor]], source_mask: Tensor | None) -> None:
        """Store the cross-attention k, v of new sources (each (n, nh, S, hs), from
        :meth:`Block.cross_kv`) in rows ``start..start+n-1``, with their padding ``source_mask`` (n, S)."""
        self._need_rows()
        n, _, S, _ = cross[0][0].shape
        if self.max_source_len < S:
            raise ValueError(f"Seq2SeqCache: a source of {S} tokens but max_source_len={self.max_source_len}")
        for layer, (k, v) in enumerate(cross):
            self.cross_k[layer, start:start + n, :, :S] = k
            self.cross_v[layer, start:start + n, :, :S] = v
        keep = self.source_keep[start:start + n]
        keep.zero_()
        keep[:, :S] = True if source_mask is None else source_mask.bool()

    def rows(self, start: int, positions: Tensor, span: int, mask: Tensor | None, source_span: int,
             source_padded: bool = True, offset: int | None = None) -> Seq2SeqCacheRows:
        """Rows ``start..start+B-1`` per row (see :meth:`KVCache.rows`); cross-attention reads the first
        ``source_span`` source positions, masked by each row's source padding when ``source_padded``."""
        self._need_rows()
        return Seq2SeqCacheRows(self, self.self_attn.rows(start, positions, span, mask, offset), source_span,
                                source_padded)

    def move_rows(self, src: int, dst: int, n: int, length: int, source_length: int) -> None:
        """Copy rows ``src..src+n-1`` onto ``dst..dst+n-1``: decoder positions up to ``length``, source
        positions up to ``source_length``."""
        self._need_rows()
        if src == dst or n == 0:
            return
        self.self_attn.move_rows(src, dst, n, length)
        for t in (self.cross_k, self.cross_v):
            t[:, dst:dst + n, :, :source_length] = t[:, src:src + n, :, :source_length].clone()
        self.source_keep[dst:dst + n] = self.source_keep[src:src + n].clone()


class Seq2SeqCacheRows:
    """A per-row view of a :class:`Seq2SeqCache` for one decoder call (see :meth:`Seq2SeqCache.rows`)."""

    per_row = True
    has_cross = True

    def __init__(self, cache: Seq2SeqCache, self_attn: KVCacheRows, source_span: int, source_padded: bool) -> None:
        self.self_attn = self_attn
        self.batch_size = self_attn.batch_size
        a, b = self_attn.start, self_attn.stop
        self.cross = [(cache.cross_k[i, a:b, :, :source_span], cache.cross_v[i, a:b, :, :source_span])
                      for i in range(cache.cross_k.shape[0])]
        self.cross_mask = cache.source_keep[a:b, None, None, :source_span] if source_padded else None

    @property
    def pos(self) -> int:
        return self.self_attn.pos


# ----------------------------------------------------------------------------------------------------
# Blocks


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), [x + cross_attn(norm(x), encoder)], x + mlp(norm(x)).

    The encoder's blocks have no cross-attention; the decoder's do.
    """

    def __init__(self, config: Seq2SeqConfig, cross: bool) -> None:
        super().__init__()
        c = config
        # T5 folds the scale into its init (q std (d_model * hs)**-0.5), so scores are not divided
        # by sqrt(hs): scale=1.0.
        self.norm_1 = RMSNorm(c.d_model, c.norm_eps)
        self.attn = Attention(c.d_model, c.n_head, head_dim=c.head_dim, qkv_bias=False, out_bias=False,
                              attn_dropout=c.dropout, scale=1.0)
        self.norm_cross: RMSNorm | None = None
        self.cross_attn: Attention | None = None
        if cross:
            self.norm_cross = RMSNorm(c.d_model, c.norm_eps)
            self.cross_attn = Attention(c.d_model, c.n_head, head_dim=c.head_dim, qkv_bias=False,
                                        out_bias=False, attn_dropout=c.dropout, scale=1.0, cross=True)
        self.norm_2 = RMSNorm(c.d_model, c.norm_eps)
        self.mlp = MLP(c.d_model, c.d_ff, c.activation, gated=c.gated_mlp, bias=False, dropout=c.dropout)
        self.dropout = Dropout(c.dropout)

    def cross_kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder output (B, S, C) → this layer's cross-attention k, v, each (B, nh, S, hs)."""
        if self.cross_attn is None:
            raise ValueError("cross_kv: this block has no cross-attention (it belongs to the encoder)")
        return self.cross_attn.project_kv(context)

    def forward(self, x: Tensor, bias: Tensor, kv_cache: KVCache | KVCacheRows | None, layer: int,
                impl: str, cross_kv: tuple[Tensor, Tensor] | None = None,
                cross_bias: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """x (B, T, C) → (B, T, C) and the self-attention weights (B, nh, T, S) when ``impl='eager'``.

        ``bias``: the additive self-attention bias, position bias and mask together (causality
        included); ``cross_bias``: the additive mask of the source's padding, or None."""
        h, weights = self.attn(self.norm_1(x), bias=bias, kv_cache=kv_cache, layer=layer, impl=impl)
        x = x + self.dropout(h)
        if self.norm_cross is not None and cross_kv is not None:
            h, _ = self.cross_attn(self.norm_cross(x), bias=cross_bias, context_kv=cross_kv, impl=impl)
            x = x + self.dropout(h)
        x = x + self.dropout(self.mlp(self.norm_2(x)))
        return x, weights


def sinusoidal_positions(positions: Tensor, dim: int) -> Tensor:
    """The fixed position signals of "Attention is all you need": positions (...,) → (..., dim), sines
    in the first half and cosines in the second, wavelengths from 2π to 10000·2π."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, device=positions.device, dtype=torch.float32) * (-math.log(10000.0) / half))
    angles = positions.to(torch.float32)[..., None] * freq  # (..., half)
    out = torch.cat([angles.sin(), angles.cos()], dim=-1)
    return F.pad(out, (0, dim - 2 * half)) if dim % 2 else out


class Stack(nn.Module):
    """N blocks sharing one relative position bias, then a final RMSNorm.

    The encoder's bias is bidirectional (separate buckets for keys before and after the query); the
    decoder's looks only back and is combined with a causal mask.
    """

    def __init__(self, config: Seq2SeqConfig, n_layer: int, decoder: bool) -> None:
        super().__init__()
        c = config
        self.decoder = decoder
        # T5 keeps this table in the first layer only; every layer adds the same bias.
        self.rel_bias = RelativePositionBias(c.n_head, c.relative_buckets, c.relative_max_distance,
                                             bidirectional=not decoder)
        self.blocks = nn.ModuleList(Block(c, cross=decoder) for _ in range(n_layer))
        self.norm = RMSNorm(c.d_model, c.norm_eps)
        self.dropout = Dropout(c.dropout)
        self.sinusoidal = c.absolute_positions == "sinusoidal"

    def forward(self, x: Tensor, attention_mask: Tensor | None = None, kv_cache: Seq2SeqCache | None = None,
                context: Tensor | None = None, context_mask: Tensor | None = None,
                output_hidden_states: bool = False, output_attentions: bool = False) -> ModelOutput:
        """x (B, T, C) embedded tokens → ModelOutput with last_hidden_state (B, T, C).

        For the decoder: ``context`` (B, S, C) is the encoder output and ``context_mask`` (B, S) its
        padding; with ``kv_cache``, the cross-attention keys and values come from the cache once it
        holds them, and ``attention_mask`` covers the cached positions too (B, past + T).
        """
        T = x.shape[1]
        past = kv_cache.pos if kv_cache is not None else 0
        S = past + T
        per_row = kv_cache is not None and kv_cache.per_row
        q_positions = None
        if self.decoder and per_row:  # the engine's rows: each its own positions, mask and source
            mask = kv_cache.self_attn.mask
            if mask is None and T > 1:  # rows prefilled from 0 together: plain causality
                mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(S - T)[None, None]
            q_positions = kv_cache.self_attn.positions
            cross_kv, cross_mask = kv_cache.cross, kv_cache.cross_mask
        elif self.decoder:
            mask = make_mask(attention_mask, T, S, causal=True, q_offset=past, device=x.device)
            cross_kv = self._cross_kv(context, context_mask, kv_cache)
            cross_mask = make_mask(kv_cache.encoder_mask if kv_cache is not None else context_mask,
                                   T, cross_kv[0][0].shape[2], causal=False)
            if mask is None and T > 1:  # causality with a position bias is spelt out: once, here
                mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(S - T)[None, None]
        else:
            mask = make_mask(attention_mask, T, S, causal=False)
            cross_kv, cross_mask = [None] * len(self.blocks), None
        # position bias (1 or B, nh, T, S) and masks folded into one additive bias, shared by all layers
        bias = attention_bias(mask, self.rel_bias(T, S, q_offset=past, q_positions=q_positions), x.dtype)
        cross_bias = attention_bias(cross_mask, None, x.dtype)
        impl = "eager" if output_attentions else "sdpa"
        self_cache = kv_cache.self_attn if kv_cache is not None else None

        if self.sinusoidal:  # (B, T) per-row positions or (T,) shared ones
            positions = q_positions if q_positions is not None else torch.arange(past, S, device=x.device)
            x = x + sinusoidal_positions(positions, x.shape[-1]).to(x.dtype)
        x = self.dropout(x)
        hidden_states: list[Tensor] = [x] if output_hidden_states else []
        attentions: list[Tensor] = []
        for i, block in enumerate(self.blocks):
            x, weights = block(x, bias, self_cache, i, impl, cross_kv[i], cross_bias)
            if output_hidden_states:
                hidden_states.append(x)
            if weights is not None:
                attentions.append(weights)
        x = self.dropout(self.norm(x))
        if output_hidden_states:
            hidden_states[-1] = x  # as in transformers: the last entry is after the final norm
        if self_cache is not None:
            self_cache.advance(T)
        return ModelOutput(
            last_hidden_state=x,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
            kv_cache=kv_cache,
        )

    def _cross_kv(self, context: Tensor | None, context_mask: Tensor | None,
                  kv_cache: Seq2SeqCache | None) -> list[tuple[Tensor, Tensor]]:
        """Every layer's cross-attention k, v: from the cache when it has them, else projected from
        ``context`` (and stored in the cache for the next calls)."""
        if kv_cache is not None and kv_cache.has_cross:
            if context_mask is not None:
                kv_cache.encoder_mask = context_mask
            return kv_cache.cross
        if context is None:
            raise ValueError("encoder_outputs: the decoder needs the encoder output (or a cache that holds it)")
        cross = [block.cross_kv(context) for block in self.blocks]
        if kv_cache is not None:
            kv_cache.cross, kv_cache.encoder_mask = cross, context_mask
        return cross


# ----------------------------------------------------------------------------------------------------
# The model


class Seq2Seq(nn.Module):
    """Shared token embedding → encoder stack; shared embedding → decoder stack (cross-attending to
    the encoder) → optional LM head.

    ``head='lm'`` gives next-token logits (B, T, V); ``'none'`` gives hidden states only.
    """

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)  # shared by encoder, decoder (and tied head)
        self.encoder = Stack(c, c.n_layer, decoder=False)
        self.decoder = Stack(c, c.n_decoder_layer, decoder=True)
        self.lm_head: nn.Linear | None = None
        if c.head == "lm":
            self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self._init_weights()
        self.tie_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """T5's init (Mesh TensorFlow): each weight's std makes its output roughly unit-variance,
        times ``config.init_std`` (T5's ``initializer_factor``)."""
        c, f = self.config, self.config.init_std
        nn.init.normal_(self.embed.weight, mean=0.0, std=f)
        if self.lm_head is not None:
            nn.init.normal_(self.lm_head.weight, mean=0.0, std=f)
        for module in self.modules():
            if isinstance(module, Attention):
                q_size = module.n_head * module.head_dim
                q = module.q.weight if module.cross else module.qkv.weight[:q_size]
                kv = module.kv.weight if module.cross else module.qkv.weight[q_size:]
                nn.init.normal_(q, mean=0.0, std=f * (c.d_model * c.head_dim) ** -0.5)
                nn.init.normal_(kv, mean=0.0, std=f * c.d_model ** -0.5)
                nn.init.normal_(module.proj.weight, mean=0.0, std=f * q_size ** -0.5)
            elif isinstance(module, MLP):
                for linear in (module.up, module.gate):
                    if linear is not None:
                        nn.init.normal_(linear.weight, mean=0.0, std=f * c.d_model ** -0.5)
                nn.init.normal_(module.down.weight, mean=0.0, std=f * c.d_ff ** -0.5)
            elif isinstance(module, RelativePositionBias):
                nn.init.normal_(module.embedding.weight, mean=0.0, std=f * c.d_model ** -0.5)
            elif isinstance(module, RMSNorm):
                nn.init.constant_(module.weight, f)

    def tie_weights(self) -> None:
        """Share the token embedding with the LM head when the config says so (T5 v1.0)."""
        if self.lm_head is not None and self.config.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight

    def shift_right(self, labels: Tensor) -> Tensor:
        """Decoder inputs from ``labels`` (B, T) with this config's start and pad tokens."""
        return shift_right(labels, self.config.decoder_start_token_id, self.config.pad_token_id)

    def new_cache(self, batch_size: int, max_len: int, dtype: torch.dtype | None = None,
                  max_source_len: int | None = None) -> Seq2SeqCache:
        """An empty cache for decoding up to ``max_len`` target positions of ``batch_size`` sources
        (with ``max_source_len``, preallocated per-row source rows too, as the engine uses)."""
        c = self.config
        return Seq2SeqCache(c.n_decoder_layer, batch_size, c.n_head, max_len, c.head_dim,
                            dtype=dtype or self.embed.weight.dtype, device=self.embed.weight.device,
                            max_source_len=max_source_len)

    new_kv_cache = new_cache  # the name decoders had first

    def _check_ids(self, ids: Tensor, name: str) -> None:
        if ids.dim() != 2:
            raise ValueError(f"{name}: expected shape (batch, seq_len), found {tuple(ids.shape)}")
        if traced():  # torch.compile / torch.export: the values are not known yet
            return
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size):
            raise ValueError(
                f"{name}: token ids must lie in [0, {self.config.vocab_size}), "
                f"found min {int(ids.min())}, max {int(ids.max())}"
            )

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None, output_hidden_states: bool = False,
               output_attentions: bool = False) -> ModelOutput:
        """input_ids (B, S); attention_mask (B, S) of 1 = real token, 0 = padding → the encoder's
        ModelOutput, last_hidden_state (B, S, C)."""
        self._check_ids(input_ids, "input_ids")
        return self.encoder(self.embed(input_ids), attention_mask, output_hidden_states=output_hidden_states,
                            output_attentions=output_attentions)

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                decoder_input_ids: Tensor | None = None, decoder_attention_mask: Tensor | None = None,
                encoder_outputs: Tensor | ModelOutput | None = None, kv_cache: Seq2SeqCache | None = None,
                output_hidden_states: bool = False, output_attentions: bool = False,
                logits_at: Tensor | None = None) -> ModelOutput:
        """Encode ``input_ids`` (B, S) unless ``encoder_outputs`` (B, S, C) is given, then decode
        ``decoder_input_ids`` (B, T).

        ``attention_mask`` (B, S) masks the source's padding in the encoder and in cross-attention;
        ``decoder_attention_mask`` (B, past + T) the target's. With ``kv_cache`` (from
        :meth:`new_cache`), the call's decoder tokens follow the ``kv_cache.pos`` cached ones; the
        first call stores the cross-attention keys and values, so later calls need neither
        ``input_ids`` nor ``encoder_outputs`` (a source given then is not encoded again).

        Returns the decoder's final state as ``last_hidden_state`` (B, T, C), the encoder's as
        ``encoder_last_hidden_state`` (when computed or given), ``logits`` (B, T, V) with an LM head,
        and the decoder's hidden states and self-attention weights on request. ``logits_at``, a boolean
        (B, T): the logits at those positions only, (N, V) in row-major order (training scores only the
        targets' tokens; the head's cost on the padding is saved).
        """
        if decoder_input_ids is None:
            raise ValueError(
                "decoder_input_ids: required by Seq2Seq.forward; build them from the labels with "
                "shift_right(labels), or call encode() to run the encoder alone"
            )
        if kv_cache is None or not kv_cache.per_row:  # the engine checks its prompts once
            self._check_ids(decoder_input_ids, "decoder_input_ids")
        if kv_cache is not None and kv_cache.batch_size != decoder_input_ids.shape[0]:
            raise ValueError(
                f"kv_cache: built for batch size {kv_cache.batch_size}, "
                f"but decoder_input_ids has {decoder_input_ids.shape[0]} rows"
            )
        if isinstance(encoder_outputs, ModelOutput):
            encoder_outputs = encoder_outputs.last_hidden_state
        cached = kv_cache is not None and kv_cache.has_cross
        if encoder_outputs is None and not cached:
            if input_ids is None:
                raise ValueError("input_ids: required (or encoder_outputs, or a cache filled by an earlier call)")
            encoder_outputs = self.encode(input_ids, attention_mask).last_hidden_state  # (B, S, C)

        out = self.decoder(self.embed(decoder_input_ids), decoder_attention_mask, kv_cache=kv_cache,
                           context=encoder_outputs, context_mask=attention_mask,
                           output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        x = out.last_hidden_state  # (B, T, C)
        if self.lm_head is not None:
            if logits_at is not None:
                if logits_at.dtype != torch.bool or tuple(logits_at.shape) != tuple(x.shape[:2]):
                    raise ValueError(f"logits_at: expected a boolean mask of shape {tuple(x.shape[:2])} (as "
                                     f"decoder_input_ids), found {logits_at.dtype} {tuple(logits_at.shape)}")
                x = x[logits_at]  # (N, C)
            # T5 v1.0 rescales before the tied head, since the embedding was initialised with std 1.
            h = x * self.config.d_model ** -0.5 if self.config.tie_word_embeddings else x
            out.logits = self.lm_head(h)  # (B, T, V), or (N, V) with logits_at
        out.encoder_last_hidden_state = encoder_outputs
        return out


__all__ = ["Block", "Seq2Seq", "Seq2SeqCache", "Seq2SeqCacheRows", "Stack", "shift_right", "sinusoidal_positions"]

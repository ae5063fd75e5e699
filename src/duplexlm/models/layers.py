"""Building blocks shared by every Transformer family, read top to bottom:

norms → activations and MLPs → positions (rotary, T5 relative buckets) → masks → attention functions
(SDPA and an explicit-math reference that returns the weights) → the attention module → KV cache.

Shapes use B batch, T query length, S key length, nh query heads, nkv key/value heads, hs head size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ----------------------------------------------------------------------------------------------------
# Norms


class RMSNorm(nn.Module):
    """Root-mean-square norm (Llama, T5): no mean subtraction, no bias, computed in fp32."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if (x.dtype == torch.float32 and self.weight.dtype == torch.float32 and torch.is_grad_enabled()
                and (x.requires_grad or self.weight.requires_grad) and not traced()):
            return _RMSNormFunction.apply(x, self.weight, self.eps)  # training in fp32: one fused backward
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        # Cast back before the weight, as Llama and T5 do, so half-precision matches them.
        return self.weight * x32.to(dtype)


class _RMSNormFunction(torch.autograd.Function):
    """``weight * x * rsqrt(mean(x²) + eps)`` in fp32 with its gradient written out: autograd's own
    graph of the same formula takes about twelve kernels backward and keeps their intermediates;
    this takes five and keeps the normalised x and the (…, 1) scale. Same values (fp32 rounding)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True).add_(eps))
        xn = x * r
        ctx.save_for_backward(xn, r, weight)
        return xn * weight

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        xn, r, weight = ctx.saved_tensors
        gw = grad * weight
        # d/dx of x·r: r·(g·w − xn·mean(g·w·xn)), since dr/dx = −r³·x/n
        dx = (gw - xn * (gw * xn).mean(-1, keepdim=True)).mul_(r) if ctx.needs_input_grad[0] else None
        dw = (grad * xn).reshape(-1, xn.shape[-1]).sum(0) if ctx.needs_input_grad[1] else None
        return dx, dw, None


class Dropout(nn.Dropout):
    """``nn.Dropout`` with a cheaper mask on the CPU. There torch draws one Bernoulli sample per
    element, which in a small model costs as much as its matrix products (a fifth of a T5 step); here
    each 64-bit random word gives four 16-bit uniforms, so ``p`` holds to within 1/65,536. Same
    expectation and the same seeded generator, but a different stream of random numbers than
    ``nn.Dropout``; elsewhere (CUDA, eval, ``p=0``) it is ``nn.Dropout``."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0 or self.p >= 1.0 or self.inplace or x.device.type != "cpu":
            return super().forward(x)
        return x * dropout_mask(x, self.p)


def traced() -> bool:
    """Whether torch.compile or torch.export is tracing this code: tensor values are unknown then, and
    reading one (``int(t.max())``, ``bool(t.all())``) would break the graph. Checks of values and
    value-dependent shortcuts step aside under tracing; shapes are still checked."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


def dropout_mask(x: Tensor, p: float) -> Tensor:
    """A dropout mask shaped and typed as ``x``: 0 with probability ``p`` (to 1/65,536), else
    ``1 / (1 - p)``; drawn from torch's global generator, 16 bits per element."""
    n = x.numel()
    words = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=x.device)
    uniform = words.view(torch.int16)[:n].view(x.shape)
    keep = uniform >= round(p * 65536) - 32768
    return keep.to(x.dtype).mul_(1.0 / (1.0 - p))


def build_norm(kind: str, dim: int, eps: float, bias: bool = True) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps, bias=bias)
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=eps)
    raise ValueError(f"norm: expected 'layernorm' or 'rmsnorm', found {kind!r}")


# ----------------------------------------------------------------------------------------------------
# Activations and feed-forward

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,  # exact (erf) GELU: BERT
    "gelu_tanh": partial(F.gelu, approximate="tanh"),  # GPT-2's "gelu_new", T5 v1.1's gated-gelu
    "relu": F.relu,
    "silu": F.silu,  # SwiGLU when gated: Llama, Qwen2
}


class MLP(nn.Module):
    """Position-wise feed-forward: ``down(act(up(x)))``, or gated ``down(act(gate(x)) * up(x))``."""

    def __init__(self, d_model: int, d_ff: int, activation: str = "gelu", gated: bool = False,
                 bias: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {sorted(ACTIVATIONS)}, found {activation!r}")
        self.act = ACTIVATIONS[activation]
        self.gate = nn.Linear(d_model, d_ff, bias=bias) if gated else None
        self.up = nn.Linear(d_model, d_ff, bias=bias)
        self.down = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        if self.gate is not None:
            h = self.act(self.gate(x)) * self.up(x)
        else:
            h = self.act(self.up(x))
        return self.down(self.dropout(h))


# ----------------------------------------------------------------------------------------------------
# Positions


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoFormer), half-split layout as in Llama/Qwen2 checkpoints."""

    def __init__(self, head_dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        """position_ids (B, T) → cos, sin each (B, 1, T, hs) in fp32."""
        freqs = position_ids.float()[..., None] * self.inv_freq  # (B, T, hs/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, hs)
        return emb.cos()[:, None], emb.sin()[:, None]


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (B, nh, T, hs); cos/sin (B, 1, T, hs)."""
    return (x * cos.to(x.dtype)) + (rotate_half(x) * sin.to(x.dtype))


def relative_position_bucket(relative_position: Tensor, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> Tensor:
    """T5's bucketing of (key - query) offsets: exact buckets near zero, log-spaced ones beyond,
    everything past ``max_distance`` in the last bucket. Bidirectional halves the buckets by sign."""
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        # A decoder only looks back: offsets to the future collapse into bucket 0.
        distance = (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    log_ratio = torch.log(distance.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (num_buckets - max_exact)).long()
    large = large.clamp(max=num_buckets - 1)
    return buckets + torch.where(is_small, distance, large)


class RelativePositionBias(nn.Module):
    """T5 relative position bias: one learned scalar per (bucket, head), added to attention scores."""

    def __init__(self, n_head: int, num_buckets: int = 32, max_distance: int = 128,
                 bidirectional: bool = True) -> None:
        super().__init__()
        self.num_buckets, self.max_distance, self.bidirectional = num_buckets, max_distance, bidirectional
        self.embedding = nn.Embedding(num_buckets, n_head)

    def forward(self, q_len: int, k_len: int, q_offset: int = 0, q_positions: Tensor | None = None) -> Tensor:
        """→ bias (1, nh, T, S) for queries at positions q_offset..q_offset+T-1 and keys 0..S-1, or
        (B, nh, T, S) for each row's own query positions ``q_positions`` (B, T) (continuous batching)."""
        device = self.embedding.weight.device
        k_pos = torch.arange(k_len, device=device)
        if q_positions is not None:
            rel = k_pos[None, None, :] - q_positions[:, :, None]  # (B, T, S)
            buckets = relative_position_bucket(rel, self.bidirectional, self.num_buckets, self.max_distance)
            return self.embedding(buckets).permute(0, 3, 1, 2)  # (B, nh, T, S)
        q_pos = torch.arange(q_offset, q_offset + q_len, device=device)[:, None]
        buckets = relative_position_bucket(k_pos[None, :] - q_pos, self.bidirectional, self.num_buckets,
                                           self.max_distance)
        return self.embedding(buckets).permute(2, 0, 1)[None]  # (1, nh, T, S)


# ----------------------------------------------------------------------------------------------------
# Masks: True means "may attend". Kept boolean until the attention function turns them into an
# additive bias in the query's dtype, so padding and causality combine without overflowing to -inf.


def make_mask(attention_mask: Tensor | None, q_len: int, k_len: int, causal: bool,
              q_offset: int = 0, device: torch.device | None = None) -> Tensor | None:
    """Combine a padding mask (B, S) of 1/0 with causality into a boolean (B, 1, T, S), or None
    when nothing is masked. A 4-D boolean ``attention_mask`` (B, 1, T, S) is already the whole mask
    (packed sequences: each token sees the earlier tokens of its own example) and is used as it is."""
    mask = None
    if attention_mask is not None and attention_mask.dim() == 4:
        if attention_mask.dtype != torch.bool or tuple(attention_mask.shape[-2:]) != (q_len, k_len):
            raise ValueError(f"attention_mask: a 4-D mask must be boolean (B, 1, {q_len}, {k_len}), found "
                             f"{attention_mask.dtype} {tuple(attention_mask.shape)}")
        return attention_mask
    if attention_mask is not None:
        if attention_mask.shape[-1] != k_len:
            raise ValueError(
                f"attention_mask: expected {k_len} columns (one per key position, cached ones included), "
                f"found shape {tuple(attention_mask.shape)}"
            )
        # (traced by torch.compile or torch.export, the mask's values are unknown: it is kept)
        if traced() or not bool(attention_mask.all()):
            mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
    # Causality needs no explicit mask when the attention function can infer it: a square
    # block from position 0 (is_causal, the flash path), or one new token that sees everything.
    implicit = q_offset == k_len - q_len and (q_len == k_len or q_len == 1)
    if causal and not (mask is None and implicit):
        device = attention_mask.device if attention_mask is not None else device
        q_pos = torch.arange(q_offset, q_offset + q_len, device=device)[:, None]
        k_pos = torch.arange(k_len, device=device)[None, :]
        causal_mask = (k_pos <= q_pos)[None, None]  # (1, 1, T, S)
        mask = causal_mask if mask is None else mask & causal_mask
    return mask


def _additive(mask: Tensor | None, bias: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    if mask is None:
        return None if bias is None else bias.to(dtype)
    base = torch.zeros((), dtype=dtype, device=mask.device) if bias is None else bias.to(dtype)
    return base.masked_fill(~mask, torch.finfo(dtype).min)


def attention_bias(mask: Tensor | None, bias: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """A boolean mask (True = may attend) and an additive bias folded into one additive bias, or None.

    A model computes it once per forward and hands it to every layer (as ``bias``, with ``mask=None``
    and ``is_causal`` only when it is None), rather than each layer converting the mask again.

    >>> attention_bias(torch.tensor([[True, False]]), None, torch.float32)
    tensor([[ 0.0000e+00, -3.4028e+38]])
    """
    return _additive(mask, bias, dtype)


# ----------------------------------------------------------------------------------------------------
# Attention functions: one registry, as transformers' ALL_ATTENTION_FUNCTIONS. Each takes
# q (B, nh, T, hs), k and v (B, nkv, S, hs) and returns (out (B, nh, T, hs), weights or None).


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, bias: Tensor | None = None,
                   is_causal: bool = False, dropout_p: float = 0.0,
                   scale: float | None = None) -> tuple[Tensor, None]:
    """PyTorch's fused scaled dot-product attention (flash / memory-efficient kernels where they apply)."""
    T, S = q.shape[-2], k.shape[-2]
    if T == 1:
        is_causal = False  # one query, the last one: causality hides nothing from it
    if is_causal and mask is None and (bias is not None or T != S):
        # SDPA's is_causal cannot be combined with an additive bias, and aligns top-left when T != S:
        # spell causality out, aligned so the last query sees every key.
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)[None, None]
    if dropout_p > 0.0 and q.device.type == "cpu":
        # SDPA's CPU kernels take no dropout: it would fall back to its math path, which draws one
        # Bernoulli sample per weight; the same math here, with the cheaper mask of `Dropout`
        return eager_attention(q, k, v, mask=mask, bias=bias, is_causal=is_causal, dropout_p=dropout_p,
                               scale=scale)[0], None
    attn_mask = _additive(mask, bias, q.dtype)
    gqa = k.shape[1] != q.shape[1]
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
        is_causal=is_causal and attn_mask is None,
        scale=scale, enable_gqa=gqa,
    )
    return out, None


def eager_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, bias: Tensor | None = None,
                    is_causal: bool = False, dropout_p: float = 0.0,
                    scale: float | None = None) -> tuple[Tensor, Tensor]:
    """The explicit math, softmax(q kᵀ · scale + bias + mask) v, returning the weights (B, nh, T, S)."""
    n_rep = q.shape[1] // k.shape[1]
    if n_rep > 1:  # grouped-query attention: each key/value head serves n_rep query heads
        k = k.repeat_interleave(n_rep, dim=1)
        v = v.repeat_interleave(n_rep, dim=1)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ k.transpose(-2, -1)  # (B, nh, T, S)
    if scale != 1.0:  # T5 folds the scale into its weights
        scores = scores * scale
    if is_causal and mask is None and q.shape[-2] > 1:
        T, S = q.shape[-2], k.shape[-2]
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)[None, None]
    additive = _additive(mask, bias, scores.dtype)
    if additive is not None:
        scores = scores + additive
    # softmax in at least fp32 (half-precision scores lose too much), in fp64 when given fp64
    weights = scores.softmax(dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(q.dtype)
    if dropout_p > 0.0:
        dropped = weights * dropout_mask(weights, dropout_p) if q.device.type == "cpu" else F.dropout(weights, dropout_p)
    else:
        dropped = weights
    return dropped @ v, weights


ATTENTION_FUNCTIONS: dict[str, Callable[..., tuple[Tensor, Tensor | None]]] = {
    "sdpa": sdpa_attention,
    "eager": eager_attention,
}


# ----------------------------------------------------------------------------------------------------
# Key/value cache: a plain preallocated structure the model writes into; decoding loops live in infer/.


class KVCache:
    """Preallocated keys and values for incremental decoding, ``(n_layer, B, nkv, max_len, hs)``.

    Two ways to address it:

    - **in step** (this object itself): every row holds the same number of positions, :attr:`pos`; a
      call writes its T tokens at ``pos..pos+T-1`` and attends to ``0..pos+T-1`` (padding is the
      caller's ``attention_mask``);
    - **per row** (:meth:`rows`, what continuous batching uses): each row is at its own length, so
      requests of different lengths share a batch and join or leave it between steps without
      padding or copying the others; the engine keeps the lengths and builds the mask.

    >>> cache = KVCache(n_layer=2, batch_size=1, n_kv_head=2, max_len=16, head_dim=8)
    >>> cache.pos
    0
    """

    per_row = False  # the model asks: in-step addressing (mask from attention_mask) or per row
    mask: Tensor | None = None

    def __init__(self, n_layer: int, batch_size: int, n_kv_head: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        shape = (n_layer, batch_size, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.batch_size = batch_size
        self.max_len = max_len
        self.pos = 0  # number of positions already written

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write this call's k, v (B, nkv, T, hs) after the cached ones; return all so far (B, nkv, pos+T, hs)."""
        end = self.pos + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KVCache: {end} positions requested but the cache holds max_len={self.max_len}")
        self.k[layer, :, :, self.pos:end] = k.to(self.k.dtype)
        self.v[layer, :, :, self.pos:end] = v.to(self.v.dtype)
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, n: int) -> None:
        self.pos += n

    def reset(self) -> None:
        self.pos = 0

    def rows(self, start: int, positions: Tensor, span: int, mask: Tensor | None = None,
             offset: int | None = None) -> KVCacheRows:
        """Rows ``start..start+B-1`` addressed per row: row b writes its T tokens at ``positions[b]``
        (B, T) and attends to keys ``0..span-1`` under ``mask`` (B, 1, T, span) (True = may attend;
        None = causal, the last query seeing every key). ``offset``: the one start position all rows
        share, when they do (a plain slice write instead of a scatter)."""
        if span > self.max_len:
            raise ValueError(f"KVCache: {span} positions requested but the cache holds max_len={self.max_len}")
        return KVCacheRows(self, start, positions, span, mask, offset)

    def move_rows(self, src: int, dst: int, n: int, length: int) -> None:
        """Copy rows ``src..src+n-1`` onto ``dst..dst+n-1`` (their first ``length`` positions), as
        closing a gap in the batch does."""
        if src == dst or n == 0:
            return
        for t in (self.k, self.v):
            t[:, dst:dst + n, :, :length] = t[:, src:src + n, :, :length].clone()

    def gather_rows(self, start: int, index: Tensor, length: int) -> None:
        """Rows ``start + i`` become the former rows ``start + index[i]`` (beam search reordering)."""
        n = index.shape[0]
        for t in (self.k, self.v):
            t[:, start:start + n, :, :length] = t[:, start:start + n, :, :length].index_select(1, index)


class KVCacheRows:
    """A per-row view of a :class:`KVCache` for one forward call (see :meth:`KVCache.rows`)."""

    per_row = True

    def __init__(self, cache: KVCache, start: int, positions: Tensor, span: int, mask: Tensor | None,
                 offset: int | None = None) -> None:
        B, T = positions.shape
        self.cache, self.start, self.stop = cache, start, start + B
        self.positions, self.span, self.mask, self.offset = positions, span, mask, offset
        self.batch_size = B
        self.pos = span - T  # the keys before this call's block, as the model counts them
        self._rows = None if offset is not None else \
            torch.arange(start, start + B, device=positions.device)[:, None]  # (B, 1)
        self._flat: Tensor | None = None

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v (B, nkv, T, hs) at each row's positions; return keys and values ``0..span-1``."""
        kc, vc = self.cache.k[layer], self.cache.v[layer]  # (B_max, nkv, L, hs)
        if self.offset is not None:
            end = self.offset + k.shape[2]
            kc[self.start:self.stop, :, self.offset:end] = k
            vc[self.start:self.stop, :, self.offset:end] = v
        elif k.shape[2] == 1:  # one token per row (decoding): a row copy into the flattened cache
            if self._flat is None:  # (B * nkv,) rows of the (B_max * nkv * L, hs) view, shared by all layers
                nkv, L = kc.shape[1], kc.shape[2]
                heads = torch.arange(nkv, device=k.device)
                self._flat = ((self._rows * nkv + heads) * L + self.positions).reshape(-1)
            hs = kc.shape[-1]
            kc.view(-1, hs).index_copy_(0, self._flat, k.reshape(-1, hs).to(kc.dtype))
            vc.view(-1, hs).index_copy_(0, self._flat, v.reshape(-1, hs).to(vc.dtype))
        else:
            # advanced indices on dims 0 and 2 put those dims first: the values go in as (B, T, nkv, hs)
            kc[self._rows, :, self.positions] = k.transpose(1, 2).to(kc.dtype)
            vc[self._rows, :, self.positions] = v.transpose(1, 2).to(vc.dtype)
        return kc[self.start:self.stop, :, :self.span], vc[self.start:self.stop, :, :self.span]

    def advance(self, n: int) -> None:
        """Nothing: per-row lengths belong to the caller, which knows how many tokens were real."""


# ----------------------------------------------------------------------------------------------------
# The attention module


class Attention(nn.Module):
    """Multi-head attention with grouped-query heads (nkv ≤ nh), optional rotary positions,
    an additive bias (T5 relative positions), a KV cache, and a cross-attention mode.

    Self-attention projects q, k, v with one fused ``qkv`` Linear; cross-attention uses ``q`` on the
    decoder states and a fused ``kv`` on the encoder's.
    """

    def __init__(self, d_model: int, n_head: int, n_kv_head: int | None = None, head_dim: int | None = None,
                 qkv_bias: bool = True, out_bias: bool = True, attn_dropout: float = 0.0,
                 scale: float | None = None, cross: bool = False) -> None:
        super().__init__()
        self.n_head = n_head
        self.n_kv_head = n_kv_head or n_head
        self.head_dim = head_dim or d_model // n_head
        self.scale = scale
        self.attn_dropout = attn_dropout
        self.cross = cross
        q_size, kv_size = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        if cross:
            self.q = nn.Linear(d_model, q_size, bias=qkv_bias)
            self.kv = nn.Linear(d_model, 2 * kv_size, bias=qkv_bias)
        else:
            self.qkv = nn.Linear(d_model, q_size + 2 * kv_size, bias=qkv_bias)
        self.proj = nn.Linear(q_size, d_model, bias=out_bias)

    def _heads(self, x: Tensor, n: int) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, n, self.head_dim).transpose(1, 2)  # (B, n, T, hs)

    def forward(self, x: Tensor, mask: Tensor | None = None, bias: Tensor | None = None,
                is_causal: bool = False, rope: tuple[Tensor, Tensor] | None = None,
                kv_cache: KVCache | None = None, layer: int = 0, context: Tensor | None = None,
                context_kv: tuple[Tensor, Tensor] | None = None,
                impl: str = "sdpa") -> tuple[Tensor, Tensor | None]:
        """x (B, T, C) → (B, T, C) and the attention weights when ``impl='eager'``.

        Cross-attention attends to ``context`` (B, S, C), the encoder output, or to its keys and
        values already projected by :meth:`project_kv` (``context_kv``), as incremental decoding does.
        """
        B, T, _ = x.shape
        q_size, kv_size = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        if self.cross:
            if context_kv is None and context is None:
                raise ValueError("cross-attention needs the encoder output as context (or its context_kv)")
            q = self._heads(self.q(x), self.n_head)
            k, v = context_kv if context_kv is not None else self.project_kv(context)
        else:
            q, k, v = self.qkv(x).split([q_size, kv_size, kv_size], dim=-1)
            q, k, v = self._heads(q, self.n_head), self._heads(k, self.n_kv_head), self._heads(v, self.n_kv_head)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(layer, k, v)
        dropout_p = self.attn_dropout if self.training else 0.0
        y, weights = ATTENTION_FUNCTIONS[impl](q, k, v, mask=mask, bias=bias, is_causal=is_causal,
                                               dropout_p=dropout_p, scale=self.scale)
        y = y.transpose(1, 2).reshape(B, T, q_size)  # re-assemble heads side by side
        return self.proj(y), weights

    def project_kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-attention keys and values of the encoder output (B, S, C) → each (B, nkv, S, hs);
        computed once per source, since the encoder output does not change while decoding."""
        if not self.cross:
            raise ValueError("project_kv: only a cross-attention module projects an encoder output")
        k, v = self.kv(context).chunk(2, dim=-1)
        return self._heads(k, self.n_kv_head), self._heads(v, self.n_kv_head)

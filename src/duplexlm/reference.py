"""NumPy reference implementations, used as test oracles for the torch code.

Everything runs in float64 with plain matrix products and explicit loops over time, so each function
reads like the equations in its docstring. Weight layouts follow PyTorch (``nn.Linear`` weights are
(out, in); recurrent gates are stacked in PyTorch's order), so a test can copy a module's parameters
straight in with ``p.detach().numpy()``.

>>> q = k = v = np.eye(2)[None]  # (1, T=2, d=2)
>>> out, w = attention(q, k, v, mask=np.array([[True, False], [True, True]]))
>>> w.round(2).tolist()
[[[1.0, 0.0], [0.33, 0.67]]]
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

Array = NDArray[np.float64]


def _f64(a: ArrayLike) -> Array:
    return np.asarray(a, dtype=np.float64)


def softmax(x: ArrayLike, axis: int = -1) -> Array:
    """exp(x - max) / Σ exp(x - max) along ``axis``; subtracting the max keeps exp from overflowing.

    >>> softmax([0.0, 0.0]).tolist()
    [0.5, 0.5]
    """
    x = _f64(x)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def sigmoid(x: ArrayLike) -> Array:
    """σ(x) = 1 / (1 + exp(-x)).

    >>> float(sigmoid(0.0))
    0.5
    """
    return 1.0 / (1.0 + np.exp(-_f64(x)))


# ----------------------------------------------------------------------------------------------------
# Attention


def attention(q: ArrayLike, k: ArrayLike, v: ArrayLike, mask: ArrayLike | None = None,
              scale: float | None = None) -> tuple[Array, Array]:
    """Scaled dot-product attention.

        scores  = q kᵀ · scale                      (..., T, S), scale = 1/√d unless given
        scores += 0 where mask is True, finfo.min where it is False
        weights = softmax(scores, over S)
        out     = weights v                         (..., T, dv)

    q is (..., T, d), k (..., S, d), v (..., S, dv); ``mask`` is boolean, broadcastable to (..., T, S),
    True meaning "may attend". Masking adds the most negative finite number rather than -inf, as the
    torch functions in ``duplexlm.models.layers`` do: a row whose keys are all masked then holds equal
    scores and gets uniform weights instead of NaN.

    >>> out, w = attention(np.ones((1, 3, 4)), np.ones((1, 2, 4)), np.arange(2.0).reshape(1, 2, 1))
    >>> out.shape, w[0, 0].tolist()
    ((1, 3, 1), [0.5, 0.5])
    """
    q, k, v = _f64(q), _f64(k), _f64(v)
    if scale is None:
        scale = 1.0 / np.sqrt(q.shape[-1])
    scores = (q @ np.swapaxes(k, -1, -2)) * scale  # (..., T, S)
    if mask is not None:
        allowed = np.asarray(mask, dtype=bool)
        scores = scores + np.where(allowed, 0.0, np.finfo(np.float64).min)
    weights = softmax(scores, axis=-1)
    return weights @ v, weights


def multi_head_attention(x: ArrayLike, w_q: ArrayLike, w_k: ArrayLike, w_v: ArrayLike, w_o: ArrayLike,
                         n_head: int, mask: ArrayLike | None = None,
                         causal: bool = False) -> tuple[Array, Array]:
    """Multi-head self-attention without biases, grouped-query when there are fewer key/value heads.

        q = x W_qᵀ, k = x W_kᵀ, v = x W_vᵀ        split into heads of size hs = rows(W_q) / n_head
        head_i = attention(q_i, k_j, v_j)          j = i // g, g = n_head / n_kv (key/value head j
                                                   serves g consecutive query heads)
        out = concat(head_1 … head_nh) W_oᵀ

    x is (B, T, C); w_q (nh·hs, C), w_k and w_v (nkv·hs, C), w_o (C, nh·hs), laid out as ``nn.Linear``
    weights. ``mask`` is boolean, broadcastable to (B, nh, T, T); ``causal`` also lets position i see
    only positions j ≤ i. Returns out (B, T, C) and weights (B, nh, T, T).

    >>> rng = np.random.default_rng(0)
    >>> w = [rng.normal(size=s) for s in [(8, 8), (4, 8), (4, 8), (8, 8)]]
    >>> out, weights = multi_head_attention(rng.normal(size=(2, 5, 8)), *w, n_head=4, causal=True)
    >>> out.shape, weights.shape, float(weights[0, 0, 0, 1])
    ((2, 5, 8), (2, 4, 5, 5), 0.0)
    """
    x, w_q, w_k, w_v, w_o = _f64(x), _f64(w_q), _f64(w_k), _f64(w_v), _f64(w_o)
    B, T, _ = x.shape
    if w_q.shape[0] % n_head:
        raise ValueError(f"w_q: {w_q.shape[0]} rows are not divisible by n_head={n_head}")
    hs = w_q.shape[0] // n_head
    if w_k.shape[0] % hs or n_head % (w_k.shape[0] // hs):
        raise ValueError(
            f"w_k: expected a multiple of the head size {hs} rows that divides n_head={n_head} heads, "
            f"found {w_k.shape[0]} rows"
        )
    n_kv = w_k.shape[0] // hs

    def heads(y: Array, n: int) -> Array:
        return y.reshape(B, T, n, hs).transpose(0, 2, 1, 3)  # (B, n, T, hs)

    q = heads(x @ w_q.T, n_head)
    k = np.repeat(heads(x @ w_k.T, n_kv), n_head // n_kv, axis=1)  # (B, nh, T, hs)
    v = np.repeat(heads(x @ w_v.T, n_kv), n_head // n_kv, axis=1)
    allowed = None if mask is None else np.asarray(mask, dtype=bool)
    if causal:
        lower = np.tril(np.ones((T, T), dtype=bool))
        allowed = lower if allowed is None else allowed & lower
    out, weights = attention(q, k, v, mask=allowed)  # (B, nh, T, hs), (B, nh, T, T)
    out = out.transpose(0, 2, 1, 3).reshape(B, T, n_head * hs)
    return out @ w_o.T, weights


# ----------------------------------------------------------------------------------------------------
# Recurrent cells: one layer, one direction, the equations of torch.nn.RNN / LSTM / GRU.


def _recurrent_args(x: ArrayLike, h0: ArrayLike | None, w_ih: ArrayLike, w_hh: ArrayLike,
                    b_ih: ArrayLike | None, b_hh: ArrayLike | None, n_gate: int,
                    ) -> tuple[Array, Array, Array, Array, Array, Array]:
    """Convert to float64, check shapes, fill in zero biases and a zero initial state."""
    x, w_ih, w_hh = _f64(x), _f64(w_ih), _f64(w_hh)
    if x.ndim != 3:
        raise ValueError(f"x: expected shape (batch, time, input), found {x.shape}")
    H = w_hh.shape[1]
    if w_ih.shape != (n_gate * H, x.shape[2]):
        raise ValueError(f"w_ih: expected shape {(n_gate * H, x.shape[2])}, found {w_ih.shape}")
    if w_hh.shape != (n_gate * H, H):
        raise ValueError(f"w_hh: expected shape {(n_gate * H, H)}, found {w_hh.shape}")
    b_ih = np.zeros(n_gate * H) if b_ih is None else _f64(b_ih)
    b_hh = np.zeros(n_gate * H) if b_hh is None else _f64(b_hh)
    h0 = np.zeros((x.shape[0], H)) if h0 is None else _f64(h0)
    if h0.shape != (x.shape[0], H):
        raise ValueError(f"h0: expected shape {(x.shape[0], H)}, found {h0.shape}")
    return x, h0, w_ih, w_hh, b_ih, b_hh


def rnn_forward(x: ArrayLike, h0: ArrayLike | None, w_ih: ArrayLike, w_hh: ArrayLike,
                b_ih: ArrayLike | None = None, b_hh: ArrayLike | None = None,
                nonlinearity: str = "tanh") -> tuple[Array, Array]:
    """Elman RNN, as ``torch.nn.RNN`` (one layer, one direction, batch first):

        h_t = act(x_t W_ihᵀ + b_ih + h_{t-1} W_hhᵀ + b_hh),   act = tanh or relu

    x (B, T, I); h0 (B, H), or None for zeros; w_ih (H, I), w_hh (H, H), b_ih and b_hh (H,) or None.
    Returns every step's state (B, T, H) and the last one h_T (B, H).

    >>> out, h = rnn_forward(np.ones((1, 3, 2)), None, np.full((4, 2), 0.1), 0.5 * np.eye(4))
    >>> out.shape, h.shape
    ((1, 3, 4), (1, 4))
    """
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', found {nonlinearity!r}")
    x, h, w_ih, w_hh, b_ih, b_hh = _recurrent_args(x, h0, w_ih, w_hh, b_ih, b_hh, n_gate=1)
    outputs = []
    for t in range(x.shape[1]):
        pre = x[:, t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh
        h = np.tanh(pre) if nonlinearity == "tanh" else np.maximum(pre, 0.0)
        outputs.append(h)
    return np.stack(outputs, axis=1), h


def lstm_forward(x: ArrayLike, h0: ArrayLike | None, c0: ArrayLike | None, w_ih: ArrayLike,
                 w_hh: ArrayLike, b_ih: ArrayLike | None = None,
                 b_hh: ArrayLike | None = None) -> tuple[Array, Array, Array]:
    """Long short-term memory, as ``torch.nn.LSTM`` (one layer, one direction, batch first):

        i_t = σ(x_t W_iiᵀ + b_ii + h_{t-1} W_hiᵀ + b_hi)      input gate
        f_t = σ(x_t W_ifᵀ + b_if + h_{t-1} W_hfᵀ + b_hf)      forget gate
        g_t = tanh(x_t W_igᵀ + b_ig + h_{t-1} W_hgᵀ + b_hg)   candidate cell
        o_t = σ(x_t W_ioᵀ + b_io + h_{t-1} W_hoᵀ + b_ho)      output gate
        c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
        h_t = o_t ⊙ tanh(c_t)

    The gate weights are stacked in PyTorch's order i, f, g, o: w_ih (4H, I), w_hh (4H, H), biases
    (4H,). x (B, T, I); h0 and c0 (B, H), or None for zeros. Returns the states (B, T, H), h_T and c_T.

    >>> out, h, c = lstm_forward(np.ones((2, 3, 2)), None, None, np.full((8, 2), 0.1), np.zeros((8, 2)))
    >>> out.shape, h.shape, c.shape
    ((2, 3, 2), (2, 2), (2, 2))
    """
    x, h, w_ih, w_hh, b_ih, b_hh = _recurrent_args(x, h0, w_ih, w_hh, b_ih, b_hh, n_gate=4)
    c = np.zeros_like(h) if c0 is None else _f64(c0)
    if c.shape != h.shape:
        raise ValueError(f"c0: expected shape {h.shape}, found {c.shape}")
    outputs = []
    for t in range(x.shape[1]):
        gates = x[:, t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh  # (B, 4H)
        i, f, g, o = np.split(gates, 4, axis=-1)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        outputs.append(h)
    return np.stack(outputs, axis=1), h, c


def gru_forward(x: ArrayLike, h0: ArrayLike | None, w_ih: ArrayLike, w_hh: ArrayLike,
                b_ih: ArrayLike | None = None, b_hh: ArrayLike | None = None) -> tuple[Array, Array]:
    """Gated recurrent unit, as ``torch.nn.GRU`` (one layer, one direction, batch first):

        r_t = σ(x_t W_irᵀ + b_ir + h_{t-1} W_hrᵀ + b_hr)              reset gate
        z_t = σ(x_t W_izᵀ + b_iz + h_{t-1} W_hzᵀ + b_hz)              update gate
        n_t = tanh(x_t W_inᵀ + b_in + r_t ⊙ (h_{t-1} W_hnᵀ + b_hn))   candidate state
        h_t = (1 - z_t) ⊙ n_t + z_t ⊙ h_{t-1}

    Note r_t multiplies the hidden projection *with* its bias b_hn, as PyTorch (and cuDNN) compute it.
    Gates are stacked in PyTorch's order r, z, n: w_ih (3H, I), w_hh (3H, H), biases (3H,).
    x (B, T, I); h0 (B, H), or None for zeros. Returns the states (B, T, H) and h_T (B, H).

    >>> out, h = gru_forward(np.ones((1, 4, 3)), None, np.full((6, 3), 0.1), np.zeros((6, 2)))
    >>> out.shape, h.shape
    ((1, 4, 2), (1, 2))
    """
    x, h, w_ih, w_hh, b_ih, b_hh = _recurrent_args(x, h0, w_ih, w_hh, b_ih, b_hh, n_gate=3)
    outputs = []
    for t in range(x.shape[1]):
        x_r, x_z, x_n = np.split(x[:, t] @ w_ih.T + b_ih, 3, axis=-1)  # each (B, H)
        h_r, h_z, h_n = np.split(h @ w_hh.T + b_hh, 3, axis=-1)
        r = sigmoid(x_r + h_r)
        z = sigmoid(x_z + h_z)
        n = np.tanh(x_n + r * h_n)
        h = (1.0 - z) * n + z * h
        outputs.append(h)
    return np.stack(outputs, axis=1), h


__all__ = [
    "attention",
    "gru_forward",
    "lstm_forward",
    "multi_head_attention",
    "rnn_forward",
    "sigmoid",
    "softmax",
]

"""The NumPy oracles in duplexlm.reference against the torch code they check: the attention
functions of models/layers.py and PyTorch's own recurrent modules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from duplexlm import reference
from duplexlm.models.layers import ATTENTION_FUNCTIONS, Attention

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def _tol(impl: str, dtype: torch.dtype) -> float:
    return TOL[dtype]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _qkv(B: int, nh: int, nkv: int, T: int, S: int, hs: int, dtype: torch.dtype):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(B, nh, T, hs, generator=g, dtype=dtype)
    k = torch.randn(B, nkv, S, hs, generator=g, dtype=dtype)
    v = torch.randn(B, nkv, S, hs, generator=g, dtype=dtype)
    return q, k, v


def _masks(B: int, T: int, S: int) -> dict[str, torch.Tensor | None]:
    lengths = torch.tensor([S, S - 2, 1])[:B]
    padding = (torch.arange(S)[None, :] < lengths[:, None])[:, None, None, :]  # (B, 1, 1, S)
    # Causal, aligned to the end as with a KV cache: query i sits at position S - T + i.
    causal = torch.ones(T, S, dtype=torch.bool).tril(S - T)[None, None]  # (1, 1, T, S)
    return {"none": None, "padding": padding, "causal": causal, "both": padding & causal}


# ----------------------------------------------------------------------------------------------------
# Attention


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("mask_kind", ["none", "padding", "causal", "both"])
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (4, 1)], ids=["mha", "gqa", "mqa"])
def test_attention_matches_torch(dtype, impl, mask_kind, heads):
    nh, nkv = heads
    B, T, S, hs = 3, 5, 7, 8
    q, k, v = _qkv(B, nh, nkv, T, S, hs, dtype)
    mask = _masks(B, T, S)[mask_kind]
    out, weights = ATTENTION_FUNCTIONS[impl](q, k, v, mask=mask)

    # NumPy side: every query head gets its own copy of the key/value head that serves it.
    k_rep = np.repeat(_np(k), nh // nkv, axis=1)
    v_rep = np.repeat(_np(v), nh // nkv, axis=1)
    ref_out, ref_weights = reference.attention(_np(q), k_rep, v_rep, mask=None if mask is None else mask.numpy())

    np.testing.assert_allclose(_np(out), ref_out, atol=_tol(impl, dtype), rtol=0)
    if impl == "eager":
        np.testing.assert_allclose(_np(weights), ref_weights, atol=_tol(impl, dtype), rtol=0)
    else:
        assert weights is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_attention_scale_and_weights_sum(dtype):
    q, k, v = _qkv(2, 2, 2, 4, 4, 8, dtype)
    out, weights = ATTENTION_FUNCTIONS["eager"](q, k, v, scale=0.3)
    ref_out, ref_weights = reference.attention(_np(q), _np(k), _np(v), scale=0.3)
    np.testing.assert_allclose(_np(out), ref_out, atol=_tol("eager", dtype), rtol=0)
    np.testing.assert_allclose(ref_weights.sum(-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(_np(weights), ref_weights, atol=_tol("eager", dtype), rtol=0)


def test_eager_softmax_keeps_float64():
    q, k, v = _qkv(2, 2, 2, 5, 5, 8, torch.float64)
    _, weights = ATTENTION_FUNCTIONS["eager"](q, k, v)
    _, ref_weights = reference.attention(_np(q), _np(k), _np(v))
    np.testing.assert_allclose(_np(weights), ref_weights, atol=1e-10, rtol=0)


@pytest.mark.parametrize(("impl", "dtype"), [
    ("eager", torch.float32),
    ("sdpa", torch.float32),
    ("sdpa", torch.float64),
    ("eager", torch.float64),
])
def test_fully_masked_row_is_uniform_not_nan(impl, dtype):
    q, k, v = _qkv(1, 1, 1, 3, 4, 8, dtype)
    mask = torch.tensor([[True, True, False, False], [False] * 4, [True, False, True, False]])[None, None]
    out, weights = ATTENTION_FUNCTIONS[impl](q, k, v, mask=mask)
    ref_out, ref_weights = reference.attention(_np(q), _np(k), _np(v), mask=mask.numpy())
    assert not np.isnan(ref_out).any()
    np.testing.assert_allclose(ref_weights[0, 0, 1], 0.25, atol=1e-15)  # nothing to attend to: uniform
    np.testing.assert_allclose(ref_weights[0, 0, 0, 2:], 0.0, atol=0)  # masked keys get exactly 0
    np.testing.assert_allclose(_np(out), ref_out, atol=TOL[dtype], rtol=0)
    if weights is not None:
        np.testing.assert_allclose(_np(weights), ref_weights, atol=TOL[dtype], rtol=0)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("n_kv_head", [4, 2])
@pytest.mark.parametrize("causal", [False, True])
def test_multi_head_attention_matches_attention_module(impl, n_kv_head, causal):
    torch.manual_seed(0)
    B, T, C, nh = 2, 6, 16, 4
    module = Attention(C, nh, n_kv_head=n_kv_head, qkv_bias=False, out_bias=False).double()
    x = torch.randn(B, T, C, dtype=torch.float64)
    padding = torch.tensor([[True] * T, [True] * 4 + [False] * 2])[:, None, None, :]  # (B, 1, 1, T)
    mask = padding & torch.ones(T, T, dtype=torch.bool).tril() if causal else padding
    y, weights = module(x, mask=mask, impl=impl)

    q_size, kv_size = nh * module.head_dim, n_kv_head * module.head_dim
    w_q, w_k, w_v = module.qkv.weight.split([q_size, kv_size, kv_size], dim=0)
    ref_y, ref_weights = reference.multi_head_attention(
        _np(x), _np(w_q), _np(w_k), _np(w_v), _np(module.proj.weight), nh, mask=padding.numpy(), causal=causal
    )
    np.testing.assert_allclose(_np(y), ref_y, atol=_tol(impl, torch.float64), rtol=0)
    if weights is not None:
        np.testing.assert_allclose(_np(weights), ref_weights, atol=_tol(impl, torch.float64), rtol=0)


def test_multi_head_attention_rejects_bad_head_counts():
    x = np.zeros((1, 2, 8))
    with pytest.raises(ValueError, match="w_q"):
        reference.multi_head_attention(x, np.zeros((8, 8)), np.zeros((8, 8)), np.zeros((8, 8)),
                                       np.zeros((8, 8)), n_head=3)
    with pytest.raises(ValueError, match="w_k"):
        reference.multi_head_attention(x, np.zeros((8, 8)), np.zeros((6, 8)), np.zeros((6, 8)),
                                       np.zeros((8, 8)), n_head=4)


# ----------------------------------------------------------------------------------------------------
# Recurrent cells


def _weights(module: nn.RNNBase) -> tuple[np.ndarray, ...]:
    return tuple(_np(getattr(module, f"{n}_l0")) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_forward_matches_torch(nonlinearity):
    torch.manual_seed(0)
    module = nn.RNN(5, 7, batch_first=True, nonlinearity=nonlinearity).double()
    x, h0 = torch.randn(3, 6, 5, dtype=torch.float64), torch.randn(1, 3, 7, dtype=torch.float64)
    out, h_n = module(x, h0)
    ref_out, ref_h = reference.rnn_forward(_np(x), _np(h0[0]), *_weights(module), nonlinearity=nonlinearity)
    np.testing.assert_allclose(_np(out), ref_out, atol=1e-6, rtol=0)
    np.testing.assert_allclose(_np(h_n[0]), ref_h, atol=1e-6, rtol=0)


def test_lstm_forward_matches_torch():
    torch.manual_seed(0)
    module = nn.LSTM(5, 7, batch_first=True).double()
    x = torch.randn(3, 6, 5, dtype=torch.float64)
    h0, c0 = torch.randn(1, 3, 7, dtype=torch.float64), torch.randn(1, 3, 7, dtype=torch.float64)
    out, (h_n, c_n) = module(x, (h0, c0))
    ref_out, ref_h, ref_c = reference.lstm_forward(_np(x), _np(h0[0]), _np(c0[0]), *_weights(module))
    np.testing.assert_allclose(_np(out), ref_out, atol=1e-6, rtol=0)
    np.testing.assert_allclose(_np(h_n[0]), ref_h, atol=1e-6, rtol=0)
    np.testing.assert_allclose(_np(c_n[0]), ref_c, atol=1e-6, rtol=0)


def test_gru_forward_matches_torch():
    torch.manual_seed(0)
    module = nn.GRU(5, 7, batch_first=True).double()
    x, h0 = torch.randn(3, 6, 5, dtype=torch.float64), torch.randn(1, 3, 7, dtype=torch.float64)
    out, h_n = module(x, h0)
    ref_out, ref_h = reference.gru_forward(_np(x), _np(h0[0]), *_weights(module))
    np.testing.assert_allclose(_np(out), ref_out, atol=1e-6, rtol=0)
    np.testing.assert_allclose(_np(h_n[0]), ref_h, atol=1e-6, rtol=0)


def test_zero_initial_state_is_the_default():
    torch.manual_seed(0)
    module = nn.GRU(3, 4, batch_first=True).double()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    out, _ = module(x)
    ref_out, _ = reference.gru_forward(_np(x), None, *_weights(module))
    np.testing.assert_allclose(_np(out), ref_out, atol=1e-6, rtol=0)


def test_recurrent_shape_errors_name_the_array():
    x = np.zeros((2, 3, 4))
    with pytest.raises(ValueError, match="w_ih"):
        reference.lstm_forward(x, None, None, np.zeros((4, 4)), np.zeros((8, 2)))
    with pytest.raises(ValueError, match="h0"):
        reference.rnn_forward(x, np.zeros((3, 5)), np.zeros((5, 4)), np.zeros((5, 5)))
    with pytest.raises(ValueError, match="nonlinearity"):
        reference.rnn_forward(x, None, np.zeros((5, 4)), np.zeros((5, 5)), nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="x"):
        reference.gru_forward(np.zeros((3, 4)), None, np.zeros((6, 4)), np.zeros((6, 2)))

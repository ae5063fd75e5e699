"""The CPU training paths written out by hand: RMSNorm's fused backward and attention with the
cheap dropout mask, each against the plain formula (fp64) or the path it replaces."""

from __future__ import annotations

import pytest
import torch

from duplexlm.models.layers import RMSNorm, eager_attention, sdpa_attention


def _plain_rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


@pytest.mark.parametrize("weight_grad", [True, False])
def test_rmsnorm_gradients_equal_autograds_of_the_formula(weight_grad):
    torch.manual_seed(0)
    norm = RMSNorm(48, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(48))
    norm.weight.requires_grad_(weight_grad)
    x = (torch.randn(3, 7, 48) * 3).requires_grad_()
    g = torch.randn(3, 7, 48)
    y = norm(x)
    assert y.grad_fn is not None and "RMSNormFunction" in type(y.grad_fn).__name__  # the written-out path
    y.backward(g)
    x64, w64 = x.detach().double().requires_grad_(), norm.weight.detach().double().requires_grad_()
    y64 = _plain_rms(x64, w64, 1e-6)
    y64.backward(g.double())
    torch.testing.assert_close(y.double(), y64, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad.double(), x64.grad, atol=1e-5, rtol=1e-5)
    if weight_grad:
        torch.testing.assert_close(norm.weight.grad.double(), w64.grad, atol=1e-4, rtol=1e-5)
    else:
        assert norm.weight.grad is None
    # without gradients (inference), and in half precision, the plain formula: the same values
    with torch.no_grad():
        torch.testing.assert_close(norm(x), y.detach())


def test_attention_with_dropout_on_cpu_is_the_math_with_the_cheap_mask():
    """Training attention with dropout on the CPU runs the explicit math (SDPA's CPU kernels have no
    dropout) and drops weights at the rate asked; without dropout it is SDPA's answer."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 9, 8) for _ in range(3))
    bias = torch.randn(1, 4, 9, 9)
    plain, _ = sdpa_attention(q, k, v, bias=bias, scale=1.0)
    math, weights = eager_attention(q, k, v, bias=bias, scale=1.0)
    torch.testing.assert_close(plain, math, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights, torch.softmax(q @ k.transpose(-2, -1) + bias, dim=-1))
    # with dropout: each output is the weights, some zeroed and the rest scaled by 1/(1-p), times v
    ones = torch.ones(2, 4, 9, 1)
    torch.manual_seed(1)
    out, _ = sdpa_attention(q, k, ones, bias=bias, dropout_p=0.5, scale=1.0)
    kept = out[..., 0]  # the sum over keys of the dropped weights: 2·(sum of those kept)
    assert not torch.allclose(kept, torch.ones_like(kept))
    assert abs(kept.mean().item() - 1.0) < 0.15
    torch.manual_seed(1)
    again, _ = sdpa_attention(q, k, ones, bias=bias, dropout_p=0.5, scale=1.0)
    torch.testing.assert_close(out, again)  # the global generator's seed decides the mask

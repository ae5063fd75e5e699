"""The CPU dropout: the rate it promises, the expectation kept, gradients through the same mask,
seeded draws, and nn.Dropout wherever the fast path does not apply."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from duplexlm.models.layers import Dropout, dropout_mask


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_drops_the_rate_asked_and_keeps_the_expectation(p, dtype):
    torch.manual_seed(0)
    x = torch.ones(64, 128, 257, dtype=dtype)  # an odd size: the last random word is used in part
    y = Dropout(p).train()(x)
    assert y.dtype == dtype and y.shape == x.shape
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - p) < 0.005
    kept = y[y != 0].float()
    assert torch.allclose(kept, torch.full_like(kept, 1 / (1 - p)), rtol=1e-2)
    assert abs(y.float().mean().item() - 1.0) < 0.01
    # the 16-bit uniforms are independent of position: every column drops at the rate, not some always
    per_column = (y == 0).float().mean(dim=(0, 1))
    assert per_column.min() > p - 0.05 and per_column.max() < p + 0.05


def test_gradient_flows_through_the_same_mask_and_draws_follow_the_seed():
    x = torch.randn(8, 16, 32, requires_grad=True)
    torch.manual_seed(3)
    y = Dropout(0.25).train()(x)
    y.sum().backward()
    mask = (y != 0).float() / 0.75
    assert torch.allclose(x.grad, mask)
    torch.manual_seed(3)
    assert torch.equal(Dropout(0.25).train()(x), y)
    torch.manual_seed(4)
    assert not torch.equal(Dropout(0.25).train()(x), y)


def test_is_nn_dropout_in_eval_at_zero_and_in_place():
    x = torch.randn(4, 8)
    assert torch.equal(Dropout(0.5).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    assert isinstance(Dropout(0.1), nn.Dropout)  # LoRA and the converters read .p from it
    torch.manual_seed(1)
    y = Dropout(0.5, inplace=True).train()(x.clone())
    torch.manual_seed(1)
    assert torch.equal(y, nn.functional.dropout(x.clone(), 0.5, True, True))
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))
    assert dropout_mask(torch.ones(5), 0.5).shape == (5,)

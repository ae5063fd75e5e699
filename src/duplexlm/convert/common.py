"""Helpers shared by the conversion adapters."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

# Hugging Face activation names → ours
HF_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
OUR_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}


def activation_from_hf(name: str, field: str = "hidden_act") -> str:
    if name not in HF_ACTIVATIONS:
        raise ValueError(f"config.json: {field}={name!r} is not supported; expected one of {sorted(HF_ACTIVATIONS)}")
    return HF_ACTIVATIONS[name]


def strip_prefix(state_dict: dict[str, Tensor], prefixes: Iterable[str]) -> dict[str, Tensor]:
    """Drop the first matching prefix (e.g. ``transformer.``, ``model.``) from every key that has it."""
    out = {}
    for k, v in state_dict.items():
        for p in prefixes:
            if k.startswith(p):
                k = k[len(p):]
                break
        out[k] = v
    return out


def take(state_dict: dict[str, Tensor], key: str, source: str = "checkpoint") -> Tensor:
    """Pop a tensor, failing with the missing key's name."""
    if key not in state_dict:
        raise KeyError(f"{source}: missing tensor {key!r}")
    return state_dict.pop(key)


def independent(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Contiguous tensors that share no storage: what safetensors requires."""
    seen: set[int] = set()
    out = {}
    for k, v in state_dict.items():
        v = v.detach().contiguous()
        ptr = v.untyped_storage().data_ptr()
        if ptr in seen:
            v = v.clone()
        seen.add(v.untyped_storage().data_ptr())
        out[k] = v
    return out


def fuse(*tensors: Tensor) -> Tensor:
    return torch.cat(tensors, dim=0)

"""Helpers shared by the conversion adapters."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from ..errors import ModelError, UnsupportedModelError

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
        raise UnsupportedModelError(f"config.json: {field}={name!r} is not supported; expected one of {sorted(HF_ACTIVATIONS)}")
    return HF_ACTIVATIONS[name]


def labels_to_hf(num_labels: int, label_names: list[str] | None) -> dict:
    """``num_labels``, ``id2label`` and ``label2id`` as transformers writes them; our label names
    when the config has them (else transformers' own ``LABEL_i``)."""
    names = label_names or [f"LABEL_{i}" for i in range(num_labels)]
    return {"num_labels": num_labels, "id2label": {str(i): n for i, n in enumerate(names)},
            "label2id": {n: i for i, n in enumerate(names)}}


def labels_from_hf(hf: dict) -> tuple[int, list[str] | None]:
    """``(num_labels, label_names)`` from a Hugging Face config; the names are None when they are
    transformers' placeholders ``LABEL_0, LABEL_1, ...``."""
    id2label = hf.get("id2label")
    if not id2label:
        return int(hf.get("num_labels", 2)), None
    names = [str(id2label[k]) for k in sorted(id2label, key=int)]
    placeholder = all(n == f"LABEL_{i}" for i, n in enumerate(names))
    return len(names), None if placeholder else names


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
        raise ModelError(f"{source}: missing tensor {key!r}")
    return state_dict.pop(key)


def check_all_used(state_dict: dict[str, Tensor], model: str, ignore: Iterable[str] = ()) -> None:
    """After an adapter took every tensor the config describes, anything left over (a layer beyond
    ``num_hidden_layers``, a head of another architecture) means config and weights disagree: refuse
    rather than drop it silently. ``ignore``: fnmatch patterns of buffers safe to drop."""
    import fnmatch

    extra = sorted(k for k in state_dict if not any(fnmatch.fnmatchcase(k, p) for p in ignore))
    if extra:
        raise ModelError(f"checkpoint: unexpected tensors for {model}, which config.json does not describe: "
                         f"{extra[:8]}{' ...' if len(extra) > 8 else ''}")


def fuse(*tensors: Tensor) -> Tensor:
    return torch.cat(tensors, dim=0)

"""Hugging Face ↔ duplexlm weight conversion: one small adapter module per family.

Every adapter exposes ``from_hf(hf_config, state_dict) -> (config, state_dict)`` and
``to_hf(config, state_dict) -> (hf_config, state_dict)``; this module only picks the adapter.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from torch import Tensor

from ..config import AnyConfig, DecoderConfig
from ..errors import ConfigError, DuplexError, UnsupportedModelError

# model_type in a Hugging Face config.json → our adapter module
HF_MODEL_TYPES: dict[str, str] = {
    "bert": "bert",
    "gpt2": "gpt2",
    "llama": "llama",
    "qwen2": "llama",  # Qwen2 is Llama with q/k/v biases: one adapter serves both
    "t5": "t5",
}


def adapter_for_hf(model_type: str | None, source: str = "config.json") -> ModuleType:
    if model_type not in HF_MODEL_TYPES:
        raise UnsupportedModelError(
            f"{source}: model_type {model_type!r} is not supported; "
            f"expected one of {sorted(HF_MODEL_TYPES)}"
        )
    return importlib.import_module(f"{__name__}.{HF_MODEL_TYPES[model_type]}")


def adapter_for_config(config: AnyConfig) -> ModuleType:
    """The adapter that writes ``config`` as a Hugging Face checkpoint."""
    if config.family == "encoder":
        name = "bert"
    elif config.family == "seq2seq":
        name = "t5"
    elif isinstance(config, DecoderConfig):
        name = "gpt2" if config.positions == "learned" else "llama"
    else:
        raise UnsupportedModelError(
            f"family {config.family!r} has no Hugging Face counterpart (recurrent baselines stay duplexlm-only)"
        )
    return importlib.import_module(f"{__name__}.{name}")


def from_hf(hf_config: dict, state_dict: dict[str, Tensor], source: str = "config.json") -> tuple[AnyConfig, dict[str, Tensor]]:
    """Convert a Hugging Face config dict and state dict to ours. Errors name ``source`` (the
    config.json) for a missing or unsupported field, and its directory for the tensors."""
    adapter = adapter_for_hf(hf_config.get("model_type"), source)
    try:
        return adapter.from_hf(hf_config, state_dict)
    except KeyError as e:  # the adapters read required fields as hf["name"]
        raise ConfigError(f"{source}: missing field {e.args[0]!r}, which model_type "
                          f"{hf_config.get('model_type')!r} needs") from None
    except DuplexError as e:
        # the adapters know only "config.json" and "checkpoint": say which directory
        where = str(Path(source).parent)
        msg = str(e).replace("config.json:", f"{source}:", 1).replace("checkpoint:", f"{where}:", 1)
        raise type(e)(msg) from e


def to_hf(config: AnyConfig, state_dict: dict[str, Tensor]) -> tuple[dict, dict[str, Tensor]]:
    """Convert our config and state dict to a Hugging Face config dict and state dict."""
    return adapter_for_config(config).to_hf(config, state_dict)

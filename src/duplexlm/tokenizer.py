"""Tokenizers: a thin wrapper over Hugging Face ``tokenizers`` that knows its special tokens.

A model directory holds ``tokenizer.json`` (the ``tokenizers`` pipeline) and ``tokenizer_config.json``
(the special tokens, in the layout ``transformers.PreTrainedTokenizerFast`` reads unchanged).

>>> from tokenizers import Tokenizer as _T, models
>>> tok = Tokenizer(_T(models.WordLevel({"[PAD]": 0, "a": 1}, unk_token="[PAD]")), {"pad_token": "[PAD]"})
>>> tok.pad_token_id
0
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer as HFTokenizer

SPECIAL_KEYS = ("pad_token", "unk_token", "bos_token", "eos_token", "cls_token", "sep_token", "mask_token")


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # transformers' serialised AddedToken
        return value.get("content")
    return value if isinstance(value, str) else None


class Tokenizer:
    """Text ↔ token ids, with batch padding to tensors."""

    def __init__(self, backend: HFTokenizer, config: dict[str, Any] | None = None) -> None:
        self.backend = backend
        self.config = dict(config or {})
        self.special_tokens: dict[str, str] = {}
        for key in SPECIAL_KEYS:
            text = _token_text(self.config.get(key))
            if text is not None and backend.token_to_id(text) is not None:
                self.special_tokens[key] = text

    # -- special tokens -------------------------------------------------------------------------
    def _id(self, key: str) -> int | None:
        text = self.special_tokens.get(key)
        return None if text is None else self.backend.token_to_id(text)

    @property
    def pad_token_id(self) -> int | None:
        return self._id("pad_token")

    @property
    def bos_token_id(self) -> int | None:
        return self._id("bos_token")

    @property
    def eos_token_id(self) -> int | None:
        return self._id("eos_token")

    @property
    def mask_token_id(self) -> int | None:
        return self._id("mask_token")

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    # -- encoding -------------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def __call__(self, texts: str | list[str], max_length: int | None = None,
                 add_special_tokens: bool = True) -> dict[str, torch.Tensor]:
        """Encode a batch, right-padded: ``input_ids``, ``attention_mask`` (and ``token_type_ids``)."""
        if isinstance(texts, str):
            texts = [texts]
        encs = self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        # A tokenizer.json may carry its own padding (all-MiniLM pads to 128): keep the real tokens only
        # (sum of its attention mask, right-padded) and pad the batch to its longest row ourselves.
        rows = [e.ids[: sum(e.attention_mask)] for e in encs]
        rows = [r[:max_length] if max_length else r for r in rows]
        types = [e.type_ids[: len(r)] for e, r in zip(encs, rows)]
        width = max((len(r) for r in rows), default=0)
        pad = self.pad_token_id if self.pad_token_id is not None else 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        tt = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (r, t) in enumerate(zip(rows, types)):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
            tt[i, : len(t)] = torch.tensor(t, dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt}

    # -- files ----------------------------------------------------------------------------------
    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        file = path / "tokenizer.json"
        if not file.is_file():
            raise FileNotFoundError(f"{path}: no tokenizer.json")
        try:
            backend = HFTokenizer.from_file(str(file))
        except Exception as e:  # the Rust library raises bare Exceptions
            raise ValueError(f"{file}: not a valid tokenizers file: {e}") from e
        config: dict[str, Any] = {}
        cfg_file = path / "tokenizer_config.json"
        if cfg_file.is_file():
            config = json.loads(cfg_file.read_text(encoding="utf-8"))
        stm = path / "special_tokens_map.json"
        if stm.is_file():
            for k, v in json.loads(stm.read_text(encoding="utf-8")).items():
                config.setdefault(k, v)
        return cls(backend, config)

    def save(self, path: str | Path) -> None:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` into an existing directory."""
        path = Path(path)
        self.backend.save(str(path / "tokenizer.json"))
        config = {"tokenizer_class": "PreTrainedTokenizerFast", **self.config}
        for key, text in self.special_tokens.items():
            config[key] = text
        config.pop("added_tokens_decoder", None)  # refers to ids of the old file; tokenizer.json has them
        (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                                    encoding="utf-8")

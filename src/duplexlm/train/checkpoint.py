"""Checkpoints you can trust: complete or absent, never half-written.

A checkpoint is a directory ``checkpoints/step_00000200/`` holding the model weights (safetensors),
optimizer state, trainer state (step, counters, RNG states), the model's ``config.json`` and its
tokenizer (so that it is a model as well: ``duplexlm.load``, ``init_from``, ``duplex eval`` and
``duplex export`` take it; see :mod:`duplexlm.io`) and, written last, ``manifest.json`` with every
file's size and SHA-256. It is assembled in a temporary sibling directory and renamed into place
only when complete; a directory without a valid manifest is ignored by ``--resume``.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from ..fileutil import atomic_directory, independent, sha256_file, write_json
from ..io import CHECKPOINT_MANIFEST, CHECKPOINT_STATE, checkpoint_complete
from ..tokenizer import Tokenizer
from ..version import __version__

MANIFEST = CHECKPOINT_MANIFEST


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _rng_to_plain(state: dict[str, Any]) -> dict[str, Any]:
    """RNG states as tensors, lists and numbers only, so they load with ``weights_only=True``."""
    np_state = state["numpy"]
    py_state = state["python"]
    out = {
        "torch": state["torch"],
        "numpy": [np_state[0], torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)), *np_state[2:]],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if "cuda" in state:
        out["cuda"] = state["cuda"]
    return out


def _rng_from_plain(plain: dict[str, Any]) -> dict[str, Any]:
    np_state = plain["numpy"]
    out = {
        "torch": plain["torch"],
        "numpy": (np_state[0], np_state[1].numpy().astype(np.uint32), *np_state[2:]),
        "python": (plain["python"][0], tuple(plain["python"][1]), plain["python"][2]),
    }
    if "cuda" in plain:
        out["cuda"] = plain["cuda"]
    return out


def save_checkpoint(root: str | Path, step: int, model_state: dict[str, torch.Tensor],
                    optimizer_state: dict[str, Any], trainer_state: dict[str, Any], keep_last: int,
                    model_config: Any = None, tokenizer: Tokenizer | None = None) -> Path:
    """Write ``root/step_{step:08d}`` atomically, then delete all but the newest ``keep_last``.
    ``model_config`` (written as ``config.json``) and ``tokenizer`` make the checkpoint a model too."""
    root = Path(root)
    final = root / f"step_{step:08d}"
    for stale in root.glob(".step_*.tmp-*"):  # left by a process killed mid-write
        shutil.rmtree(stale, ignore_errors=True)
    with atomic_directory(final) as tmp:
        save_file(independent(model_state), str(tmp / "model.safetensors"))
        torch.save(optimizer_state, tmp / "optimizer.pt")
        torch.save(_rng_to_plain(rng_state()), tmp / "rng.pt")
        (tmp / CHECKPOINT_STATE).write_text(json.dumps(trainer_state, indent=2) + "\n")
        if model_config is not None:  # as duplexlm.io writes a model directory's
            write_json(tmp / "config.json", {"duplexlm_version": __version__, **model_config.to_dict()})
        if tokenizer is not None:
            tokenizer.save(tmp)
        files = {f.name: {"bytes": f.stat().st_size, "sha256": sha256_file(f)} for f in sorted(tmp.iterdir())}
        # written last: a checkpoint is complete exactly when its manifest matches its files
        (tmp / MANIFEST).write_text(json.dumps({"step": step, "files": files}, indent=2) + "\n")
    for old in list_checkpoints(root)[:-keep_last]:
        if old != final:  # never the one just written
            shutil.rmtree(old, ignore_errors=True)
    return final


def is_complete(path: Path, verify_hashes: bool = False) -> bool:
    return checkpoint_complete(path, verify_hashes=verify_hashes)


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if p.is_dir() and is_complete(p))


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """→ (model state, optimizer state, trainer state); restores the RNG states as a side effect."""
    path = Path(path)
    if not is_complete(path, verify_hashes=True):
        raise CheckpointError(f"{path}: checkpoint is incomplete or corrupt (manifest does not match its files)")
    model_state = load_file(str(path / "model.safetensors"))
    optimizer_state = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    trainer_state = json.loads((path / CHECKPOINT_STATE).read_text())
    set_rng_state(_rng_from_plain(torch.load(path / "rng.pt", map_location="cpu", weights_only=True)))
    return model_state, optimizer_state, trainer_state

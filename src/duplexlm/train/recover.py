"""Prune, then recover: structured or magnitude pruning (:func:`duplexlm.compress.prune`) followed by a
fine-tune of the pruned model (the one training loop, ``init_from`` the pruned directory), the recovered
model written as the command's output. ``duplex prune --recover key=value ...`` calls it.

>>> result = prune_and_recover("runs/cls/model", "runs/cls-pruned", "heads,neurons", 0.3,  # doctest: +SKIP
...                            ["data.train=reviews-zh", "max_steps=300"])
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..compress import prune
from ..compress.pruning import PruneReport
from ..fileutil import atomic_directory, check_output_dir
from .config import TrainConfig, load_train_config
from .loop import finetune


@dataclass
class Recovery:
    """What :func:`prune_and_recover` did: the pruning report, the pruned directory, the recovery run's
    config and its result (``interrupted`` set when it was stopped before writing ``out``)."""

    report: PruneReport
    pruned: Path
    run_dir: Path
    config: TrainConfig
    result: dict[str, Any]


def prune_and_recover(model: str | Path, out: str | Path, method: str, sparsity: float, recover: list[str], *,
                      run_dir: str | Path | None = None, importance: str = "weight", overwrite: bool = False,
                      texts: list[str] | None = None,
                      on_pruned: Callable[[PruneReport], None] | None = None) -> Recovery:
    """Prune ``model`` into ``run_dir/pruned``, fine-tune it with the ``recover`` overrides (the settings of
    ``duplex finetune``; task classify unless they name another) in ``run_dir/train``, and write the
    recovered model to ``out`` atomically. ``run_dir`` defaults to ``OUT-recovery``; both output
    directories are checked before any work starts; ``on_pruned`` sees the pruning report before the
    fine-tune starts."""
    check_output_dir(out, "model", overwrite=overwrite, flag="--out", inputs=[model])
    run_dir = Path(run_dir or f"{str(out).rstrip('/')}-recovery")
    check_output_dir(run_dir, "run", overwrite=overwrite, flag="--run-dir", inputs=[model])
    pruned = run_dir / "pruned"
    report = prune(model, pruned, method, sparsity, importance=importance, overwrite=True, texts=texts)
    if on_pruned is not None:
        on_pruned(report)
    cfg = load_train_config(None, [*recover, f"init_from={pruned}", f"out_dir={run_dir / 'train'}"],
                            default_objective="classify")
    result = finetune(cfg, overwrite=overwrite)
    if not result.get("interrupted"):
        with atomic_directory(out) as tmp:  # the recovered model is the command's output
            for entry in (run_dir / "train" / "model").iterdir():
                (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, tmp / entry.name)
    return Recovery(report, pruned, run_dir, cfg, result)


__all__ = ["Recovery", "prune_and_recover"]

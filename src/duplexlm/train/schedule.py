"""Learning-rate schedules: one small pure function of the optimizer step, as nanoGPT's ``get_lr``.

>>> round(get_lr(0, lr=1.0, min_lr=0.1, warmup=10, total=100, schedule="cosine"), 3)
0.1
>>> get_lr(10, lr=1.0, min_lr=0.1, warmup=10, total=100, schedule="cosine")
1.0
>>> round(get_lr(100, lr=1.0, min_lr=0.1, warmup=10, total=100, schedule="linear"), 12)
0.1
"""

from __future__ import annotations

import math

from ..errors import ConfigError


def get_lr(step: int, *, lr: float, min_lr: float, warmup: int, total: int, schedule: str = "cosine",
           decay_fraction: float = 0.2) -> float:
    """Learning rate at optimizer step ``step`` (0-based) of ``total``.

    Linear warmup from lr/warmup to lr over ``warmup`` steps, then
    - cosine:   min_lr + (lr - min_lr) · ½(1 + cos(π · progress))
    - linear:   lr → min_lr linearly
    - constant: lr
    - wsd:      lr until the last ``decay_fraction`` of the steps, then linearly to min_lr
    """
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    if schedule == "cosine":
        return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return lr + (min_lr - lr) * progress
    if schedule == "wsd":
        decay_start = total - max(1, round(decay_fraction * total))
        if step < decay_start:
            return lr
        return lr + (min_lr - lr) * min(1.0, (step - decay_start) / max(1, total - decay_start))
    raise ConfigError(f"optim.schedule: expected cosine, linear, constant or wsd, found {schedule!r}")

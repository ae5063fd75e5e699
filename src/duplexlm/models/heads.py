"""Heads that read an encoder's hidden states: the masked-LM head, and the task heads of a
multi-task model (several named heads over one shared encoder).

A task head is the classifier of a single-task model, kept under a name: dropout → a linear layer
onto ``num_labels`` outputs, reading the pooled vector (``classify``: a class per text, or one output
per target for regression) or every token (``tag``: a label per token, optionally scored as a
sequence by a CRF).

>>> import torch
>>> heads = build_task_heads({"sentiment": {"head": "classify", "num_labels": 2},
...                           "ner": {"head": "tag", "num_labels": 7, "crf": True}}, d_model=16, dropout=0.1)
>>> hidden, pooled = torch.randn(3, 5, 16), torch.randn(3, 16)
>>> heads["sentiment"](hidden, pooled).shape, heads["ner"](hidden, pooled).shape
(torch.Size([3, 2]), torch.Size([3, 5, 7]))
>>> heads["ner"].crf is not None
True
"""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

from torch import Tensor, nn

from ..config import TASK_HEAD_KINDS, check_task_heads
from ..errors import ConfigError
from .crf import crf_for
from .layers import ACTIVATIONS, Dropout, build_norm


class MLMHead(nn.Module):
    """Masked-LM head: dense → activation → LayerNorm → decoder onto the vocabulary.

    The decoder's weight is the word embedding (tied by the encoder's ``tie_weights``); its bias is
    the head's own.
    """

    def __init__(self, d_model: int, vocab_size: int, activation: str, norm_eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(d_model, d_model)
        self.act = ACTIVATIONS[activation]
        self.norm = build_norm("layernorm", d_model, norm_eps)
        self.decoder = nn.Linear(d_model, vocab_size)

    def forward(self, x: Tensor) -> Tensor:
        """x (..., C) → logits (..., V)."""
        return self.decoder(self.norm(self.act(self.dense(x))))


class RTDHead(nn.Module):
    """ELECTRA's discriminator head: dense → activation → one logit per token, "was this token
    replaced?"."""

    def __init__(self, d_model: int, activation: str) -> None:
        super().__init__()
        self.dense = nn.Linear(d_model, d_model)
        self.act = ACTIVATIONS[activation]
        self.out = nn.Linear(d_model, 1)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, T, C) → logits (B, T)."""
        return self.out(self.act(self.dense(x))).squeeze(-1)


class TaskHead(nn.Module):
    """One named task's head: dropout and a linear layer; ``tag`` heads may add a CRF."""

    def __init__(self, kind: str, num_labels: int, d_model: int, dropout: float,
                 label_names: list[str] | None = None, crf: bool = False) -> None:
        super().__init__()
        self.kind = kind
        self.dropout = Dropout(dropout)
        self.classifier = nn.Linear(d_model, num_labels)
        self.crf = (crf_for(SimpleNamespace(num_labels=num_labels, label_names=label_names))
                    if crf else None)

    def forward(self, hidden: Tensor, pooled: Tensor | None) -> Tensor:
        """hidden (B, T, C), pooled (B, C) → (B, num_labels) for ``classify``, (B, T, num_labels) for ``tag``."""
        if self.kind == "classify":
            if pooled is None:
                raise ConfigError("task head: a classify head reads the pooled vector, and this encoder pools nothing")
            return self.classifier(self.dropout(pooled))
        return self.classifier(self.dropout(hidden))


def build_task_heads(tasks: Mapping[str, Mapping[str, Any]], d_model: int, dropout: float) -> nn.ModuleDict:
    """One :class:`TaskHead` per named task, in the config's order."""
    return nn.ModuleDict({
        name: TaskHead(spec["head"], spec["num_labels"], d_model, dropout, spec.get("label_names"),
                       bool(spec.get("crf", False)))
        for name, spec in tasks.items()
    })


def task_head_kind(config: Any, task: str | None) -> tuple[str, dict[str, Any]]:
    """``(kind, spec)`` of the named head of a multi-task ``config``; an unknown or missing name is an
    error listing the model's tasks."""
    tasks = getattr(config, "tasks", None) or {}
    if task is None or task not in tasks:
        what = "name a task" if task is None else f"no task {task!r}"
        raise ConfigError(f"--task: {what}; this multi-task model has {', '.join(tasks)}")
    spec = dict(tasks[task])
    return spec["head"], spec


__all__ = ["TASK_HEAD_KINDS", "MLMHead", "RTDHead", "TaskHead", "build_task_heads", "check_task_heads", "task_head_kind"]

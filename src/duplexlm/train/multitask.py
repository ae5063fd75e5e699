"""Multi-task fine-tuning (``task=multi``): one shared encoder, one named head per task.

Each task keeps its own data, objective (``classify``, ``regress`` or ``tag`` from the registry),
loss options and metrics. A training step trains one task, chosen by a fixed interleaving in
proportion to the tasks' weights (:class:`TaskSchedule`): a pure function of the step, so a
resumed run reads exactly what the uninterrupted one read, and every process of a distributed run
trains the same head at the same step. Validation scores every task (``val_NAME_metric``), and
``val_loss`` is the mean of the tasks' validation losses.

>>> s = TaskSchedule([3.0, 1.0])
>>> [s.at(step)[0] for step in range(8)]
[0, 0, 1, 0, 0, 0, 1, 0]
>>> s.at(6)  # the second task's second step (its own step 1)
(1, 1)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..objectives import LossOptions, ObjectiveSpec
from .samplers import ExampleSampler


class TaskSchedule:
    """Which task each step trains: smooth weighted round robin. Every step each task earns its
    share ``w_k / sum(w)`` of credit; the task with the most credit (the first on a tie) trains and
    pays one. Over any ``n`` steps a task trains ``n * share`` of them, within one step, with no
    random draw. ``at(step)`` → ``(task index, how many earlier steps trained that task)``."""

    def __init__(self, weights: Sequence[float]) -> None:
        if not weights or any(not w > 0 for w in weights):
            raise ValueError(f"weights: expected positive task weights, found {list(weights)}")
        total = float(sum(weights))
        self.shares = [w / total for w in weights]
        self._credit = [0.0] * len(weights)
        self._counts = [0] * len(weights)
        self._tasks: list[int] = []
        self._local: list[int] = []

    def at(self, step: int) -> tuple[int, int]:
        while len(self._tasks) <= step:
            for k, share in enumerate(self.shares):
                self._credit[k] += share
            k = max(range(len(self.shares)), key=lambda i: (self._credit[i], -i))
            self._credit[k] -= 1.0
            self._tasks.append(k)
            self._local.append(self._counts[k])
            self._counts[k] += 1
        return self._tasks[step], self._local[step]

    def counts(self, steps: int) -> list[int]:
        """How many of the first ``steps`` steps train each task."""
        if steps > 0:
            self.at(steps - 1)
        return [self._tasks[:steps].count(k) for k in range(len(self.shares))]


@dataclass
class TaskData:
    """One task of a multi-task run, as the loop uses it."""

    name: str
    spec: ObjectiveSpec  # classify, regress or tag
    train: ExampleSampler
    val: ExampleSampler
    test: ExampleSampler | None
    label_names: list[str] | None
    num_labels: int
    options: LossOptions
    weight: float

    def head(self) -> dict[str, Any]:
        """This task's entry in the encoder's ``tasks`` config (a regressor is a classify head
        without label names, one output per target, as for a single task)."""
        return {"head": "tag" if self.spec.name == "tag" else "classify", "num_labels": self.num_labels,
                "label_names": self.label_names, "crf": False}


@dataclass
class MultiTask:
    tasks: list[TaskData]
    schedule: TaskSchedule

    @property
    def n_train(self) -> int:
        return sum(t.train.n for t in self.tasks)

    def heads(self, crf: dict[str, bool]) -> dict[str, dict[str, Any]]:
        return {t.name: {**t.head(), "crf": crf.get(t.name, False)} for t in self.tasks}


class TaskView:
    """The model as one task's loss and predictions see it: calls run the task's head
    (``model(..., task=name)``), and ``crf`` is that head's CRF (None without one)."""

    def __init__(self, model: nn.Module, raw_model: nn.Module, name: str) -> None:
        self.model, self.name = model, name
        self.crf = raw_model.task_heads[name].crf

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, task=self.name, **kwargs)


__all__ = ["MultiTask", "TaskData", "TaskSchedule", "TaskView"]

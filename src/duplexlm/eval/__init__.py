"""Evaluation: metrics (pure NumPy functions) and report plots.

The metrics are imported here; the plots live in :mod:`duplexlm.eval.plots` and are imported on
demand, because matplotlib takes a noticeable time to import and a training worker that only
scores a validation set should not pay for it.

>>> from duplexlm.eval import classification_metrics, is_better
>>> classification_metrics([1, 0], [1, 1], ["neg", "pos"])["accuracy"]
0.5
"""

from __future__ import annotations

from .metrics import (
    METRICS_HIGHER_IS_BETTER,
    EntityCounts,
    bits_per_byte,
    classification_metrics,
    confusion_counts,
    entity_counts,
    entity_metrics,
    extract_entities,
    higher_is_better,
    is_better,
    merge_confusion,
    merge_entity_counts,
    metrics_from_confusion,
    metrics_from_entity_counts,
    perplexity,
    regression_metrics,
)

__all__ = [
    "METRICS_HIGHER_IS_BETTER",
    "EntityCounts",
    "bits_per_byte",
    "classification_metrics",
    "confusion_counts",
    "entity_counts",
    "entity_metrics",
    "extract_entities",
    "higher_is_better",
    "is_better",
    "merge_confusion",
    "merge_entity_counts",
    "metrics_from_confusion",
    "metrics_from_entity_counts",
    "perplexity",
    "regression_metrics",
]

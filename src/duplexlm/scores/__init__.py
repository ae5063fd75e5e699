"""Scores: pure functions of predictions and references, below everything that trains or evaluates.

:mod:`~duplexlm.scores.labels` scores labels (classification, regression, entities, perplexity);
:mod:`~duplexlm.scores.text` scores generated text (chrF, BLEU, ROUGE, the zh-tasks' answer formats).
The label scores are imported here; the text scores import sacrebleu and rouge-score when first used.

>>> from duplexlm.scores import classification_metrics, is_better
>>> classification_metrics([1, 0], [1, 1], ["neg", "pos"])["accuracy"]
0.5
"""

from __future__ import annotations

from .labels import (
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

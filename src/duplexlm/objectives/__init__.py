"""Training objectives, one registry: what the loop trains a model to do.

=============  =======================================  ==========================================
module         objectives                               data
=============  =======================================  ==========================================
pretraining    ``clm``, ``mlm``, ``span``, ``rtd``      packed token shards
tasks          ``classify``, ``regress``, ``tag``,      labelled examples
               ``multi``
generative     ``sft``, ``seq2seq``                     conversations, source → target pairs
preference     ``dpo`` (and IPO, SimPO)                 a prompt, a chosen and a rejected answer
rl             ``grpo``                                 prompts, completions sampled and rewarded
=============  =======================================  ==========================================

Each is an :class:`ObjectiveSpec` (the families it trains, its head, its loss, how predictions are
read and scored); :func:`get_objective` finds one by name. The pretraining batch builders are
re-exported here, so ``objectives.mlm_batch`` is the one in :mod:`~duplexlm.objectives.pretraining`.

>>> get_objective("mlm").families, get_objective("classify").data
(('encoder',), 'examples')
"""

from __future__ import annotations

from ..errors import ConfigError
from . import generative, preference, pretraining, rl, tasks
from .base import IGNORE_INDEX, LossOptions, ObjectiveSpec, Replay
from .pretraining import (
    OBJECTIVES,
    Generators,
    Objective,
    ObjectiveTokens,
    SpanLengths,
    chunk_length,
    clm_batch,
    compute_loss,
    make_batch,
    mlm_batch,
    random_spans_noise_mask,
    rtd_batch,
    rtd_count,
    rtd_loss,
    span_batch,
    span_lengths,
)

REGISTRY: dict[str, ObjectiveSpec] = {spec.name: spec for spec in (
    pretraining.CLM, pretraining.MLM, pretraining.SPAN, pretraining.RTD,
    tasks.CLASSIFY, tasks.REGRESS, tasks.TAG, tasks.MULTI,
    generative.SFT, generative.SEQ2SEQ, preference.DPO, rl.GRPO,
)}


def get_objective(name: str) -> ObjectiveSpec:
    """The registered objective ``name``; an unknown one is a ``ConfigError`` listing the others."""
    if name not in REGISTRY:
        raise ConfigError(f"objective: expected one of {', '.join(REGISTRY)}, found {name!r}")
    return REGISTRY[name]


__all__ = [
    "IGNORE_INDEX",
    "OBJECTIVES",
    "REGISTRY",
    "Generators",
    "LossOptions",
    "Objective",
    "ObjectiveSpec",
    "ObjectiveTokens",
    "Replay",
    "SpanLengths",
    "chunk_length",
    "clm_batch",
    "compute_loss",
    "get_objective",
    "make_batch",
    "mlm_batch",
    "random_spans_noise_mask",
    "rtd_batch",
    "rtd_count",
    "rtd_loss",
    "span_batch",
    "span_lengths",
]

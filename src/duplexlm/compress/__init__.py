"""Model compression: pruning (:mod:`.pruning`: magnitude, attention heads, feed-forward neurons, for
every family; ``prune`` on a model directory) and weight-only quantisation (int8 per output channel, int4
per group of input columns) of every untied ``nn.Linear``, for every family, stored in our model directories and
loaded back by :func:`duplexlm.load`; ``duplex quantize`` on the command line.

>>> import torch
>>> from duplexlm.config import EncoderConfig
>>> from duplexlm.models import build_model
>>> model = build_model(EncoderConfig(vocab_size=64, d_model=32, n_layer=1, n_head=4, head="classify",
...                                   num_labels=2)).eval()
>>> names = quantize_model(model, "int8")
>>> len(names), type(model.blocks[0].attn.qkv).__name__
(6, 'QuantLinear')
>>> quantization_spec(model)["method"]
'int8'
"""

from __future__ import annotations

from ..models.qlinear import (
    DEFAULT_GROUP_SIZE,
    METHODS,
    QuantEmbedding,
    QuantLinear,
    dequantize_int4,
    dequantize_int8,
    int8_kernel_available,
    pack_int4,
    quantize_int4,
    quantize_int8,
    unpack_int4,
)
from .pruning import (
    PruneInfo,
    PruneReport,
    keep_sparsity,
    magnitude_modules,
    prune,
    prune_model,
)
from .quantization import (
    FORMAT,
    QuantReport,
    apply_quantization_spec,
    dequantize_model,
    logit_gap,
    plan_embeddings,
    plan_quantization,
    quant_embeddings,
    quant_modules,
    quantization_spec,
    quantize,
    quantize_model,
    quantized_parameters,
    sample_inputs,
    set_fast_path,
)
from .report import ModelRow, compare, measure, measure_many, write_report

__all__ = ["DEFAULT_GROUP_SIZE", "FORMAT", "METHODS", "ModelRow", "PruneInfo", "PruneReport", "QuantEmbedding", "QuantLinear",
           "QuantReport", "apply_quantization_spec", "compare", "dequantize_int4", "dequantize_int8",
           "dequantize_model", "int8_kernel_available", "keep_sparsity", "logit_gap", "magnitude_modules", "measure",
           "measure_many", "pack_int4", "plan_embeddings", "plan_quantization", "prune", "prune_model", "quant_embeddings", "quant_modules",
           "quantization_spec", "quantize", "quantize_int4", "quantize_int8", "quantize_model", "quantized_parameters",
           "sample_inputs", "set_fast_path", "unpack_int4", "write_report"]

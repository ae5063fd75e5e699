"""Weight-only quantisation of whole models: every ``nn.Linear`` of any duplexlm family swapped in place
for a :class:`~duplexlm.models.qlinear.QuantLinear` (as LoRA swaps its targets), the ``quantization``
entry a model directory's ``config.json`` records, and ``duplex quantize``: a directory in, a smaller
directory out, with a report of what it cost.

What is quantised, and what is not (and why):

- every ``nn.Linear``: attention (fused ``qkv``, cross-attention ``q``/``kv``, ``proj``), MLPs, the
  encoder's pooler and heads, the RNN's attention pooling and head, an **untied** LM head;
- **tied** weights stay fp32: a tied LM head *is* the token embedding (GPT-2, BERT's masked-LM decoder,
  T5 v1.0), and quantising it would either break the tie (two tensors where the config says one) or
  quantise the embedding lookups too. :func:`plan_quantization` lists them with the reason, and the
  ``quantization`` entry records them under ``kept``;
- embeddings, norms, T5's relative position buckets, the CRF's transitions and the RNN cells'
  own weights (``nn.GRU``/``nn.LSTM`` are not Linears) stay in full precision.

Read top to bottom: choosing the modules → quantise / dequantise a model → the config entry and
loading → the comparison with the fp32 model → ``duplex quantize``.

>>> import torch
>>> from duplexlm.config import DecoderConfig
>>> from duplexlm.models import build_model
>>> model = build_model(DecoderConfig(vocab_size=64, max_seq_len=16, d_model=32, n_layer=1, n_head=2)).eval()
>>> ids = torch.randint(0, 64, (2, 8))
>>> before = model(ids).logits
>>> quantize_model(model, "int8")
['blocks.0.attn.qkv', 'blocks.0.attn.proj', 'blocks.0.mlp.up', 'blocks.0.mlp.down']
>>> quantization_spec(model)["kept"]  # the tied head stays fp32
{'lm_head': 'weight tied to embed.weight'}
>>> bool((model(ids).logits - before).abs().max() < 0.05 * before.abs().max())
True
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ModelDirectoryError, ModelError
from ..models.qlinear import (
    METHODS,
    QuantEmbedding,
    QuantLinear,
    check_group_size,
    check_method,
    int8_kernel_available,
)
from ..models.quant_spec import (
    FORMAT,
    apply_quantization_spec,
    check_spec,
    plan_embeddings,
    plan_quantization,
    quant_embeddings,
    quant_modules,
    quantization_spec,
)
from ..units import format_bytes, format_count

# Sample inputs for the comparison when the directory has a tokenizer: everyday Chinese, as the
# project's corpora (reviews, People's Daily).
SAMPLE_TEXTS = ("今天天气很好，我们一起去公园散步吧。", "北京是中华人民共和国的首都。",
                "这家餐厅的菜很好吃，服务也很周到，下次还会再来。", "机器学习让计算机从数据中自动学习规律。")


# ----------------------------------------------------------------------------------------------------
# Quantise and dequantise a model, in place


def quantize_model(model: nn.Module, method: str = "int8", group_size: int | None = None,
                   embeddings: bool = False) -> list[str]:
    """Swap every untied ``nn.Linear`` of ``model`` in place for a :class:`QuantLinear` (see the module
    docstring for what stays fp32) and return the replaced module names.

    ``method``: ``"int8"`` (one scale per output channel) or ``"int4"`` (one scale per ``group_size``
    input columns, default 128; a row that ``group_size`` does not divide ends in a shorter group).
    ``embeddings``: also store every untied embedding table as int8 with a scale per row
    (:class:`QuantEmbedding`, whatever ``method`` is): in a small model the tables are a large share of
    the file. Their names follow the Linears' in the list returned.

    >>> from duplexlm.config import RNNConfig
    >>> from duplexlm.models import build_model
    >>> quantize_model(build_model(RNNConfig(vocab_size=20, d_embed=8, d_hidden=8, num_labels=2)), "int4", 8)
    ['attention_pool.proj', 'attention_pool.score', 'classifier']
    >>> quantize_model(build_model(RNNConfig(vocab_size=20, d_embed=8, d_hidden=8)), "int2")
    Traceback (most recent call last):
    ...
    duplexlm.errors.ConfigError: method: expected one of 'int8', 'int4', found 'int2'
    """
    method = check_method(method)
    group_size = check_group_size(method, group_size)
    targets, _ = plan_quantization(model)
    if not targets:
        raise ModelError(f"{type(model).__name__} has no untied nn.Linear to quantise")
    for name, linear in targets.items():  # checked first: a bad weight leaves the model as it was
        if not torch.isfinite(linear.weight).all():
            raise ModelError(f"{name}: the weight holds NaN or infinite values; a scale cannot be chosen for them")
    tables = plan_embeddings(model)[0] if embeddings else {}
    for name, table in tables.items():
        if not torch.isfinite(table.weight).all():
            raise ModelError(f"{name}: the table holds NaN or infinite values; a scale cannot be chosen for them")
    for name, linear in targets.items():
        parent_name, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent_name), leaf, QuantLinear.from_linear(linear, method, group_size))
    for name, table in tables.items():
        parent_name, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent_name), leaf, QuantEmbedding.from_embedding(table))
    return [*targets, *tables]


def dequantize_model(model: nn.Module) -> nn.Module:
    """Put plain ``nn.Linear``s back, holding the dequantised weights (the quantised model's function
    in floating point, not the original weights); returns ``model``. The explicit way to hand a
    quantised model to code that expects full precision (``convert_to_hf`` after ``save_model``)."""
    for name, module in quant_modules(model).items():
        parent_name, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent_name), leaf, module.to_linear())
    for name, table in quant_embeddings(model).items():
        parent_name, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent_name), leaf, table.to_embedding())
    return model


def set_fast_path(model: nn.Module, enabled: bool = True) -> int:
    """Switch the CPU int8 kernel of every QuantLinear on or off (off: the exact weight-only result,
    dequantised on the fly); returns how many modules were set."""
    modules = quant_modules(model)
    for m in modules.values():
        m.fast = enabled
    return len(modules)


def quantized_parameters(model: nn.Module) -> int:
    """How many weights the QuantLinears (and QuantEmbeddings) hold as integers (out × in each, whatever
    the packing)."""
    return (sum(m.in_features * m.out_features for m in quant_modules(model).values())
            + sum(m.qweight.numel() for m in quant_embeddings(model).values()))


def sample_inputs(model: nn.Module, tokenizer: Any = None, texts: tuple[str, ...] | list[str] | None = None,
                  seq_len: int = 32) -> tuple[dict[str, Tensor], str]:
    """Keyword inputs for ``model`` (any family) and a description: ``texts`` (default
    :data:`SAMPLE_TEXTS`) through ``tokenizer`` when there is one, else 4 rows of seeded random ids."""
    c = model.config
    limit = min(seq_len, getattr(c, "max_seq_len", seq_len))
    ids = mask = None
    what = ""
    if tokenizer is not None:
        texts = list(texts or SAMPLE_TEXTS)
        enc = tokenizer(texts, max_length=limit)
        fits = int(enc["input_ids"].max()) < c.vocab_size if enc["input_ids"].numel() else False
        if fits and bool(enc["attention_mask"].any(1).all()):  # else a mismatched tokenizer: random ids
            ids, mask = enc["input_ids"], enc["attention_mask"]
            what = f"{len(texts)} sample sentences through the tokenizer"
    if ids is None:
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(1 if c.vocab_size > 1 else 0, c.vocab_size, (4, min(16, limit)), generator=g)
        mask = torch.ones_like(ids)
        what = f"4 × {ids.shape[1]} random token ids (seed 0)"
    inputs = {"input_ids": ids, "attention_mask": mask}
    if c.family == "seq2seq":
        inputs["decoder_input_ids"] = model.shift_right(ids)
    return inputs, what


def _outputs(model: nn.Module, inputs: dict[str, Tensor]) -> Tensor:
    out = model(**inputs)
    y = out.logits if out.logits is not None else out.last_hidden_state
    return y.float()


@torch.no_grad()
def logit_gap(reference: nn.Module, quantized: nn.Module, inputs: dict[str, Tensor]) -> tuple[float, float, float]:
    """(max |Δ|, mean |Δ|, max |reference|) of the two models' logits (hidden states for a model
    without a head) on ``inputs``, over the real tokens only when the outputs are per token."""
    a, b = _outputs(reference, inputs), _outputs(quantized, inputs)
    diff = (a - b).abs()
    mask = inputs.get("attention_mask")  # T5: target position t predicts token t, real where the mask is 1
    if mask is not None and diff.dim() >= 2 and tuple(diff.shape[:2]) == tuple(mask.shape):
        keep = mask.bool()
        diff, a = diff[keep], a[keep]
    return float(diff.max()), float(diff.mean()), float(a.abs().max())


# ----------------------------------------------------------------------------------------------------
# duplex quantize


@dataclass
class QuantReport:
    """What ``duplex quantize`` did: the method, how much of the model it covers, the files' sizes,
    and how far the quantised model's logits moved on the sample inputs."""

    out: str
    method: str
    bits: int
    group_size: int | None
    parameters: int  # the model's, tied weights once (the same before and after)
    quantized_parameters: int  # held as integers now
    modules: list[str]
    kept: dict[str, str]
    bytes_before: int  # the source directory's weight files
    bytes_after: int  # the output's model.safetensors
    max_abs_dlogits: float
    mean_abs_dlogits: float
    max_abs_logits: float  # of the full-precision model: the scale the differences compare with
    inputs: str
    kernel: bool  # whether the comparison ran the CPU int8 kernel (else dequantised on the fly)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def size_ratio(self) -> float:
        return self.bytes_after / self.bytes_before if self.bytes_before else math.nan

    def method_label(self) -> str:
        return ("int8, a scale per output channel" if self.method == "int8"
                else f"int4, a scale per {self.group_size} input columns")

    def table(self) -> list[str]:
        """A header and one row, aligned, as the command prints them."""
        cells = {
            "method": self.method if self.group_size is None else f"{self.method}/g{self.group_size}",
            "parameters": format_count(self.parameters),
            "quantised": f"{format_count(self.quantized_parameters)} ({self.quantized_parameters / max(self.parameters, 1):.0%})",
            "size before": format_bytes(self.bytes_before),
            "size after": format_bytes(self.bytes_after),
            "after/before": f"{self.size_ratio:.1%}",
            "max |Δlogits|": f"{self.max_abs_dlogits:.3g}",
            "mean |Δlogits|": f"{self.mean_abs_dlogits:.3g}",
            "max |logits|": f"{self.max_abs_logits:.3g}",
        }
        return aligned(cells)

    def summary(self) -> str:
        """The command's output: where it wrote, the table, and what the numbers mean."""
        kept = "; ".join(f"{n} ({why})" for n, why in self.kept.items())
        tables = self.extra.get("embeddings") or []
        lines = [f"wrote {self.out}: {self.method_label()}; {len(self.modules) - len(tables)} Linears quantised"
                 + (f", {len(tables)} embedding tables as int8 (a scale per row)" if tables else ""), *self.table(),
                 f"kept in full precision: {'' if tables else 'embeddings, '}norms{', ' + kept if kept else ''}",
                 f"Δlogits: fp32 model vs quantised on {self.inputs}, "
                 + ("the CPU int8 kernel (activations quantised per tensor on the fly)" if self.kernel
                    else "weights dequantised on the fly")]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__} | {"size_ratio": self.size_ratio}


def aligned(cells: dict[str, str]) -> list[str]:
    """A header line and a value line, each column as wide as its longer cell (the reports' tables)."""
    widths = {k: max(len(k), len(v)) for k, v in cells.items()}
    return ["  ".join(k.ljust(widths[k]) for k in cells), "  ".join(v.ljust(widths[k]) for k, v in cells.items())]


def weight_bytes(path: str | Path) -> int:
    """Bytes of a model directory's weight files (safetensors, shards, or ``pytorch_model.bin``)."""
    path = Path(path)
    files = {p for pattern in ("model.safetensors", "model-*-of-*.safetensors", "pytorch_model.bin")
             for p in path.glob(pattern) if p.is_file()}
    return sum(p.stat().st_size for p in files)


def check_source(model_dir: str | Path, out: str | Path, overwrite: bool, quantized: str) -> Path:
    """The checks a compression command makes before any work: ``--model`` is a model directory,
    ``--out`` may receive one, and the source is not quantised (``quantized``: why not, with ``{found}``
    for the method it holds)."""
    from ..fileutil import check_output_dir
    from ..io import read_quantization

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ModelDirectoryError(f"--model: {model_dir} is not a model directory; expected one with config.json "
                                  "and weights (ours or Hugging Face's)")
    check_output_dir(out, "model", overwrite=overwrite, flag="--out", inputs=[model_dir])
    done = read_quantization(model_dir)
    if done is not None:
        found = done.get("method") if isinstance(done, dict) else done
        raise ModelError(f"--model: {model_dir} " + quantized.format(found=found))
    return model_dir


def quantize(model_dir: str | Path, out: str | Path, method: str = "int8", group_size: int | None = None,
             overwrite: bool = False, texts: list[str] | None = None, embeddings: bool = False) -> QuantReport:
    """``duplex quantize``: read ``model_dir`` (ours or Hugging Face), quantise every untied Linear
    (and with ``embeddings`` every untied embedding table, int8 per row),
    write ``out`` atomically (config.json with a ``quantization`` entry, the integer weights and
    scales in model.safetensors, the tokenizer files) and return a :class:`QuantReport`. Errors name
    the command's flags: ``--model``, ``--method``, ``--group-size``, ``--out``.

    >>> report = quantize("runs/gpt2", "runs/gpt2-int8", method="int8")  # doctest: +SKIP
    >>> print(report.summary())  # doctest: +SKIP
    """
    from ..io import load, save_model
    from ..models import count_parameters

    method = check_method(method, flag="--method")
    group_size = check_group_size(method, group_size, flag="--group-size", method_flag="--method")
    model_dir = check_source(model_dir, out, overwrite, "is already quantised ({found}); quantising again would "
                             "round rounded weights; quantise the full-precision model it was made from")
    reference, tokenizer = load(model_dir)
    quantized = copy.deepcopy(reference)
    names = quantize_model(quantized, method, group_size, embeddings=embeddings)
    _, kept = plan_quantization(reference)
    if embeddings:
        kept = {**kept, **plan_embeddings(reference)[1]}
    inputs, what = sample_inputs(reference, tokenizer, texts)
    max_d, mean_d, scale = logit_gap(reference, quantized, inputs)
    kernel = method == "int8" and int8_kernel_available()
    save_model(quantized, out, tokenizer=tokenizer, overwrite=True)  # checked above with the caller's flag
    return QuantReport(
        out=str(out), method=method, bits=METHODS[method], group_size=group_size,
        parameters=count_parameters(reference), quantized_parameters=quantized_parameters(quantized),
        modules=names, kept=kept, bytes_before=weight_bytes(model_dir), bytes_after=weight_bytes(out),
        max_abs_dlogits=max_d, mean_abs_dlogits=mean_d, max_abs_logits=scale, inputs=what, kernel=kernel,
        extra={"embeddings": list(quant_embeddings(quantized))})


__all__ = ["FORMAT", "SAMPLE_TEXTS", "QuantReport", "apply_quantization_spec", "check_spec", "dequantize_model",
           "logit_gap", "plan_embeddings", "plan_quantization", "quant_embeddings", "quant_modules", "quantization_spec", "quantize",
           "quantize_model", "quantized_parameters", "sample_inputs", "set_fast_path", "weight_bytes"]

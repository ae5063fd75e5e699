"""ONNX exports of encoders with a task head (classify, tag), by torch's exporter (``dynamo=True``),
run with onnxruntime (:class:`duplexlm.models.onnx_module.ONNXModule`): ``model.onnx`` takes
``input_ids`` and ``attention_mask`` (batch, length), both dynamic, and gives the head's ``logits``. A
CRF head's transitions go into the manifest: Viterbi runs on the host, as for the original. ``int8``:
onnxruntime's dynamic quantisation (int8 weights, activations quantised per call)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import AnyConfig, EncoderConfig
from ..errors import UnsupportedModelError
from ..io import load_weights
from ..models import build_model
from ..models.onnx_module import ONNX_FILE


class _Logits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.model(input_ids, attention_mask=attention_mask).logits


def check(config: AnyConfig) -> str:
    if isinstance(config, EncoderConfig) and config.head in ("classify", "tag") and not config.tasks:
        return f"bert-{config.head}" + ("-crf" if config.crf else "")
    what = f"a {config.family} with head {getattr(config, 'head', 'none')!r}"
    hint = {"decoder": "export decoders with --format ct2 or gguf", "seq2seq": "export T5 with --format ct2",
            "rnn": "recurrent baselines have no engine format; serve them with duplex serve"}.get(
        config.family, "ONNX takes encoders with one classify or tag head")
    if isinstance(config, EncoderConfig) and config.tasks:
        hint = "a multi-task encoder has several heads; ONNX takes encoders with one classify or tag head"
    raise UnsupportedModelError(f"--format onnx: {what} is not supported; {hint}")


def write(config: AnyConfig, state_dict: dict[str, Tensor], tokenizer_dir: Path, out: Path,
          quantize: str | None) -> dict[str, Any]:
    model = build_model(config)
    load_weights(model, state_dict)
    model.eval()
    length = min(16, config.max_seq_len)
    ids = torch.full((2, length), 5 % config.vocab_size, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, length // 2:] = 0
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("length", max=config.max_seq_len)
    chatty = logging.getLogger("torch.onnx")  # notes on torchvision's operators, which we do not use
    level = chatty.level
    chatty.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(_Logits(model).eval(), (ids, mask), str(out / ONNX_FILE), dynamo=True,
                              input_names=["input_ids", "attention_mask"], output_names=["logits"],
                              dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}), external_data=False,
                              verbose=False, optimize=True)
    finally:
        chatty.setLevel(level)
    if quantize == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        root = logging.getLogger()  # quantize_dynamic logs a pre-processing hint at WARNING on the root
        level = root.level
        root.setLevel(max(level, logging.ERROR))
        full = out / "model.fp32.onnx"
        (out / ONNX_FILE).rename(full)
        try:
            quantize_dynamic(str(full), str(out / ONNX_FILE), weight_type=QuantType.QInt8, per_channel=True)
        finally:
            root.setLevel(level)
        full.unlink()
    details: dict[str, Any] = {"engine": "onnxruntime", "inputs": ["input_ids", "attention_mask"],
                               "outputs": ["logits"]}
    if config.crf:
        crf = model.crf
        details["crf"] = {name: getattr(crf, name).detach().tolist()
                          for name in ("transitions", "start_transitions", "end_transitions")}
    return details

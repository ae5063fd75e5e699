"""An ONNX export of an encoder with a task head (``duplex export --format onnx``), run by
onnxruntime behind the interface of the model it came from: ``forward(input_ids, attention_mask)``
gives a :class:`ModelOutput` whose ``logits`` are the head's, and a CRF head keeps its transitions
here for the Viterbi decoding done on the host. So ``duplexlm.load`` returns it for an ONNX export
directory and ``duplex classify``, ``duplex tag`` and ``duplex eval`` score it as they score the
original."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import config_from_dict
from ..errors import ConfigError
from .crf import CRF
from .outputs import ModelOutput

ONNX_FILE = "model.onnx"


class ONNXModule(nn.Module):
    """``path``: the export directory; ``manifest``: its ``duplex_export.json``; ``threads``: the
    session's intra-op threads (default: torch's). It has the head's logits only: no hidden states,
    embeddings or attention maps."""

    exported = True

    def __init__(self, path: str | Path, manifest: dict[str, Any], threads: int = 0) -> None:
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ConfigError(f"{path}: an ONNX export needs onnxruntime to run; install with: pip install "
                              "onnxruntime (or pip install 'duplexlm[deploy]')") from e
        self.path = Path(path)
        self.config = config_from_dict(manifest["config"], source=f"{self.path}/duplex_export.json: config")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        self.session = ort.InferenceSession(str(self.path / ONNX_FILE), options, providers=["CPUExecutionProvider"])
        self.crf: CRF | None = None
        crf = manifest.get("crf")
        if crf:
            self.crf = CRF(len(crf["start_transitions"]))
            with torch.no_grad():
                for name in ("transitions", "start_transitions", "end_transitions"):
                    getattr(self.crf, name).copy_(torch.tensor(crf[name]))
        # no weights live here; the callers that ask a model for its device and dtype get them from this
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, **_: Any) -> ModelOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        feed = {"input_ids": input_ids.detach().cpu().long().numpy(),
                "attention_mask": attention_mask.detach().cpu().long().numpy()}
        (logits,) = self.session.run(["logits"], feed)
        logits = torch.from_numpy(logits).to(input_ids.device)
        return ModelOutput(last_hidden_state=None, logits=logits)  # type: ignore[arg-type]


__all__ = ["ONNX_FILE", "ONNXModule"]

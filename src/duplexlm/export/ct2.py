"""CTranslate2 exports: our model → its Hugging Face form (:func:`duplexlm.convert.to_hf`) in a
temporary directory → CTranslate2's own ``TransformersConverter`` → ``model.bin``, ``config.json``
and the vocabulary, loaded by ``ctranslate2.Generator`` (decoders) or ``ctranslate2.Translator`` (T5).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import Tensor

from ..config import AnyConfig, DecoderConfig, Seq2SeqConfig
from ..convert import to_hf
from ..errors import UnsupportedModelError
from ..fileutil import independent, write_json
from ..io import TOKENIZER_FILES


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' loading bars and deprecation notes, which CTranslate2's converter triggers, kept
    off the user's terminal; its errors still raise."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def check(config: AnyConfig) -> str:
    """The Hugging Face architecture CTranslate2 will convert ``config`` as, or a one-line refusal
    saying what would work."""
    if isinstance(config, DecoderConfig) and config.head == "lm":
        return "gpt2" if config.positions == "learned" else ("qwen2" if config.qkv_bias else "llama")
    if isinstance(config, Seq2SeqConfig) and config.head == "lm":
        if config.absolute_positions != "none":
            raise UnsupportedModelError("--format ct2: a T5 with absolute_positions="
                                        f"{config.absolute_positions!r} has no CTranslate2 (T5) form; "
                                        "serve it with duplex serve")
        return "t5"
    what = f"a {config.family} with head {getattr(config, 'head', 'none')!r}"
    hint = {"encoder": "export encoders with --format onnx",
            "rnn": "recurrent baselines have no engine format; serve them with duplex serve"}.get(
        config.family, "CTranslate2 takes decoders with an LM head (GPT-2, Llama, Qwen2) and T5")
    raise UnsupportedModelError(f"--format ct2: {what} is not supported; {hint}")


def write(config: AnyConfig, state_dict: dict[str, Tensor], tokenizer_dir: Path, out: Path,
          quantize: str | None) -> dict[str, Any]:
    """Convert into ``out`` (an existing empty directory); returns the manifest's extra fields."""
    from ctranslate2.converters import TransformersConverter

    hf_config, hf_sd = to_hf(config, state_dict)
    with tempfile.TemporaryDirectory(prefix="duplex-ct2-") as hf:
        hf_dir = Path(hf)
        write_json(hf_dir / "config.json", hf_config)
        save_file(independent(hf_sd), str(hf_dir / "model.safetensors"), metadata={"format": "pt"})
        for name in TOKENIZER_FILES:
            if (tokenizer_dir / name).is_file():
                (hf_dir / name).write_bytes((tokenizer_dir / name).read_bytes())
        with quiet_transformers():
            TransformersConverter(str(hf_dir)).convert(str(out), quantization=quantize, force=True)
    return {"engine": "ctranslate2", "loader": "Translator" if config.family == "seq2seq" else "Generator"}


class CT2Model:
    """A CTranslate2 export loaded for decoding and scoring, in token ids of our tokenizer (the export's
    vocabulary lists the same tokens in the same order).

    >>> m = CT2Model("runs/llama-ct2")  # doctest: +SKIP
    >>> m.generate([[5, 17, 9]], max_new_tokens=8)  # doctest: +SKIP
    """

    def __init__(self, path: str | Path, compute_type: str = "default", threads: int = 0) -> None:
        import ctranslate2
        import torch

        from . import read_manifest

        self.path = Path(path)
        manifest = read_manifest(self.path)
        if manifest is None or manifest.get("format") != "ct2":
            raise UnsupportedModelError(f"{self.path}: not a CTranslate2 export (no duplex_export.json naming ct2)")
        self.manifest = manifest
        self.seq2seq = manifest["family"] == "seq2seq"
        vocab_file = self.path / ("shared_vocabulary.json" if self.seq2seq else "vocabulary.json")
        self.vocab: list[str] = json.loads(vocab_file.read_text(encoding="utf-8"))
        self.index = {token: i for i, token in enumerate(self.vocab)}
        eos = json.loads((self.path / "config.json").read_text(encoding="utf-8")).get("eos_token")
        self.eos_token_id = self.index.get(eos)
        kind = ctranslate2.Translator if self.seq2seq else ctranslate2.Generator
        self.engine = kind(str(self.path), device="cpu", compute_type=compute_type,
                           intra_threads=threads or torch.get_num_threads())

    def tokens(self, ids: list[int]) -> list[str]:
        return [self.vocab[i] for i in ids]

    def generate(self, prompts: list[list[int]], max_new_tokens: int, ignore_eos: bool = False,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0) -> list[list[int]]:
        """Each prompt's continuation (a source's translation for T5), greedy at ``temperature=0``; the
        end token is left out of the result."""
        sampling = ({"sampling_topk": 1} if temperature == 0 else
                    {"sampling_topk": top_k, "sampling_topp": top_p, "sampling_temperature": temperature})
        end = {"end_token": []} if ignore_eos else {}
        if self.seq2seq:
            results = self.engine.translate_batch([self.tokens(p) for p in prompts], max_decoding_length=max_new_tokens,
                                                  beam_size=1, min_decoding_length=max_new_tokens if ignore_eos else 0,
                                                  **sampling, **end)
            return [[self.index[t] for t in r.hypotheses[0]] for r in results]
        results = self.engine.generate_batch([self.tokens(p) for p in prompts], max_length=max_new_tokens,
                                             include_prompt_in_result=False, **sampling, **end)
        return [list(r.sequences_ids[0]) for r in results]

    def score(self, sequences: list[list[int]]) -> list[list[float]]:
        """Decoders: the log-probability of each token after the first, given those before it."""
        if self.seq2seq:
            raise UnsupportedModelError("CT2Model.score: decoders only")
        return [list(r.log_probs) for r in self.engine.score_batch([self.tokens(s) for s in sequences])]

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

import torch
from safetensors.torch import save_file
from torch import Tensor

from ..config import AnyConfig, DecoderConfig, Seq2SeqConfig
from ..convert import to_hf
from ..errors import ConfigError, UnsupportedModelError
from ..fileutil import independent, write_json
from ..infer.engine import Request, RequestOutput, SamplingParams
from ..io import copy_tokenizer
from .threaded import Batch, ThreadedEngine


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
        copy_tokenizer(tokenizer_dir, hf_dir)
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
        out: list[list[int]] = [[] for _ in prompts]
        # one-token prompts apart: beside longer ones, CTranslate2 reports the longer prompts' tails as
        # generated (it feeds the shortest prompt's length minus one at once, then decodes the rest)
        for single in (True, False):
            rows = [i for i, p in enumerate(prompts) if (len(p) == 1) == single]
            if rows:
                results = self.engine.generate_batch([self.tokens(prompts[i]) for i in rows], max_length=max_new_tokens,
                                                     include_prompt_in_result=False, **sampling, **end)
                for i, r in zip(rows, results):
                    out[i] = list(r.sequences_ids[0])
        return out

    def score(self, sequences: list[list[int]]) -> list[list[float]]:
        """Decoders: the log-probability of each token after the first, given those before it."""
        if self.seq2seq:
            raise UnsupportedModelError("CT2Model.score: decoders only")
        return [list(r.log_probs) for r in self.engine.score_batch([self.tokens(s) for s in sequences])]


# ----------------------------------------------------------------------------------------------------
# Serving: the engine's interface over a CTranslate2 export


class CT2Engine(ThreadedEngine):
    """:class:`~duplexlm.infer.engine.Engine`'s interface (requests, stop strings, streamed text,
    abort, beam search) over a CTranslate2 export, so that ``duplex serve`` serves one as it serves a
    model directory.

    CTranslate2 decodes static batches: requests that arrive while a batch runs wait for it to end
    (our engine's continuous batching lets them join at the next step). Requests with the same
    sampling settings share a batch (up to ``max_batch_size``). Beam search runs one request per call
    and reports its text at the end; aborting it ends the request at once, but the call runs to its end
    before the next batch starts (CTranslate2 takes no callback with beams). Not offered: ``min_p``,
    ``seed`` on a sampled request (CTranslate2 has no per-call seed: its threads seed their generators
    once) and ``early_stopping`` (its beam search stops by its own rule)."""

    library = "ctranslate2"

    def __init__(self, path: str | Path, tokenizer: Any, *, max_batch_size: int = 16, max_len: int | None = None,
                 max_source_len: int = 512, threads: int = 0) -> None:
        from ..config import config_from_dict

        self.ct2 = CT2Model(path, threads=threads)
        c = config_from_dict(self.ct2.manifest["config"], source=f"{path}/duplex_export.json: config")
        self._setup(c, path, tokenizer, max_batch_size, max_len, max_source_len)

    def _add(self, prompt: Any, params: SamplingParams | None, request_id: str | None) -> Request:
        p = params or SamplingParams()
        if p.min_p > 0:
            raise ConfigError("min_p: not offered by the CTranslate2 engine; leave it at 0")
        if p.seed is not None and not p.greedy and p.num_beams == 1:
            # CTranslate2 seeds the generators of its own threads once, not one call's sampling
            raise ConfigError("seed: the CTranslate2 engine cannot make one request's sampling reproducible; "
                              "leave seed out, or serve the model directory for seeded sampling")
        if p.num_beams > 1 and p.early_stopping is not False:
            raise ConfigError("early_stopping: the CTranslate2 engine's beam search has its own stopping rule; "
                              "leave early_stopping at false")
        self._check_stop_ids(p)
        return super()._add(prompt, params, request_id)

    def _group(self, first: Request) -> list[Request]:
        """The first waiting request and those behind it with the same settings, as one call."""
        # a one-token prompt goes apart: beside longer ones, CTranslate2 would report their prompts' tails
        # as generated tokens (it feeds the shortest prompt's length minus one at once, then decodes)
        key = (_settings(first.params), len(first.prompt_ids) == 1)
        if first.params.num_beams > 1:
            return [first]
        return [r for r in self._waiting if r.params.num_beams == 1
                and (_settings(r.params), len(r.prompt_ids) == 1) == key][: self.max_batch_size]

    def _call(self, batch: Batch) -> None:
        p = batch.reqs[0].params
        beams = p.num_beams > 1

        made = [0] * len(batch.reqs)  # step.step also counts a longer prompt's tail, decoded in the loop

        def callback(step: Any) -> bool:
            row = step.batch_id
            req = batch.reqs[row]
            if batch.stop[row]:
                return True
            batch.tokens.put((row, step.token_id))
            made[row] += 1
            # stop ids and the length are decided here, at once; stop strings by step(), a little later
            return step.token_id in req.stop_ids or made[row] >= req.max_new_tokens

        options: dict[str, Any] = {"end_token": [], "repetition_penalty": p.repetition_penalty, "beam_size": 1}
        if beams:  # no callback: CTranslate2 takes none with beams, so the answer comes at the end
            options.update(beam_size=p.num_beams, length_penalty=p.length_penalty, return_end_token=True,
                           return_scores=True, end_token=sorted(batch.reqs[0].stop_ids))
        elif p.greedy:
            options.update(sampling_topk=1, callback=callback)
        else:  # top_k beyond the vocabulary is all of it, which CTranslate2 spells 0
            options.update(sampling_topk=p.top_k if p.top_k < self.vocab_size else 0, sampling_topp=p.top_p,
                           sampling_temperature=p.temperature, callback=callback)
        longest = max(r.max_new_tokens for r in batch.reqs)
        prompts = [self.ct2.tokens(r.prompt_ids) for r in batch.reqs]
        if self.ct2.seq2seq:  # our engine lets a T5 end at once: no minimum length
            batch.results = self.ct2.engine.translate_batch(prompts, max_decoding_length=longest,
                                                            min_decoding_length=0, **options)
        else:
            batch.results = self.ct2.engine.generate_batch(prompts, max_length=longest,
                                                           include_prompt_in_result=False, **options)

    def _beam_output(self, batch: Batch, row: int, req: Request) -> RequestOutput:
        r = batch.results[row]  # type: ignore[index]
        best = (list(r.sequences_ids[0]) if not self.ct2.seq2seq else
                [self.ct2.index[t] for t in r.hypotheses[0]])[: req.max_new_tokens]
        return self._finish_beam(req, best, float(r.scores[0]) if r.scores else None)


def _settings(p: SamplingParams) -> tuple[Any, ...]:
    """What must be equal for two requests to share a CTranslate2 call."""
    if p.greedy:
        return ("greedy", p.repetition_penalty)
    return (p.temperature, p.top_k, p.top_p, p.repetition_penalty)

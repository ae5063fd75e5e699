"""GGUF exports run by llama.cpp through llama-cpp-python (optional: it builds llama.cpp from source,
6 to 20 minutes on 2 cores): :class:`LlamaCppModel` decodes and scores in our token ids (the file holds
our vocabulary in id order), :class:`LlamaCppEngine` gives the engine's interface over it, so that
``duplex serve`` serves a GGUF export as it serves a model directory.

llama-cpp-python decodes one sequence per call: requests take turns, each from its prompt to its end.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from ..config import config_from_dict
from ..errors import ConfigError, UnsupportedModelError
from ..infer.engine import Request, SamplingParams, end_token_ids
from ..io import EXPORT_MANIFEST
from .gguf import GGUF_FILE
from .threaded import Batch, ThreadedEngine

INSTALL = ("pip install llama-cpp-python (it builds llama.cpp from source: 6 to 20 minutes on 2 cores; "
           "or serve the model directory, or its --format ct2 export)")


class LlamaCppModel:
    """A GGUF export loaded by llama.cpp, in token ids of our tokenizer. ``context``: llama.cpp's
    context (default: the model's, at most 2048); ``scoring=True`` keeps the logits of every position,
    which :meth:`score` needs (and the prompt's decoding pays for).

    >>> m = LlamaCppModel("runs/llama-gguf")  # doctest: +SKIP
    >>> m.generate([[5, 17, 9]], max_new_tokens=8)  # doctest: +SKIP
    """

    def __init__(self, path: str | Path, context: int | None = None, threads: int = 0,
                 scoring: bool = False) -> None:
        from . import read_manifest

        self.path = Path(path)
        manifest = read_manifest(self.path)
        if manifest is None or manifest.get("format") != "gguf":
            raise UnsupportedModelError(f"{self.path}: not a GGUF export (no {EXPORT_MANIFEST} naming gguf)")
        try:
            import llama_cpp
        except ImportError as e:
            raise ConfigError(f"{self.path}: a GGUF export runs in llama.cpp, and llama-cpp-python is not "
                              f"installed; install with: {INSTALL}") from e
        self.manifest = manifest
        self.config = config_from_dict(manifest["config"], source=f"{self.path}/{EXPORT_MANIFEST}: config")
        self.context = context or min(self.config.max_seq_len, 2048)
        self.scoring = scoring
        threads = threads or torch.get_num_threads()
        self.llm = llama_cpp.Llama(str(self.path / GGUF_FILE), n_ctx=self.context, n_batch=self.context,
                                   n_threads=threads, n_threads_batch=threads, logits_all=scoring, verbose=False)

    def stream(self, max_new_tokens: int, prompt: list[int], ignore_eos: bool = False,
               sampling: dict[str, Any] | None = None, stop_ids: frozenset[int] = frozenset()) -> Any:
        """Yield ``prompt``'s continuation token by token, greedy unless ``sampling`` says otherwise
        (llama.cpp's ``temp``, ``top_k``, ``top_p``, ``min_p``, ``repeat_penalty``); ends after
        ``max_new_tokens``, or at an end token (yielded), or a ``stop_ids`` one."""
        if len(prompt) + max_new_tokens > self.context:
            raise ValueError(f"prompt + max_new_tokens: {len(prompt) + max_new_tokens} positions exceed the "
                             f"context of {self.context}")
        ends = (frozenset() if ignore_eos else end_token_ids(self.config, None)) | stop_ids
        options = {"temp": 0.0, "top_k": 1, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": 1.0, **(sampling or {})}
        for made, token in enumerate(self.llm.generate(prompt, reset=True, typical_p=1.0, **options), 1):
            yield int(token)
            if made >= max_new_tokens or int(token) in ends:
                return

    def generate(self, prompts: list[list[int]], max_new_tokens: int, ignore_eos: bool = False,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 seed: int | None = None) -> list[list[int]]:
        """Each prompt's continuation (one after another), greedy at ``temperature=0``; the end token is
        left out of the result."""
        sampling = {} if temperature == 0 else {"temp": temperature, "top_k": top_k, "top_p": top_p}
        if seed is not None:
            self.llm.set_seed(seed)
        ends = end_token_ids(self.config, None)
        out = []
        for prompt in prompts:
            row = list(self.stream(max_new_tokens, prompt, ignore_eos, sampling))
            out.append(row[:-1] if row and not ignore_eos and row[-1] in ends else row)
        return out

    def score(self, sequences: list[list[int]]) -> list[list[float]]:
        """The log-probability of each token after the first, given those before it."""
        if not self.scoring:
            raise ConfigError("LlamaCppModel.score: load the export with scoring=True (llama.cpp keeps every "
                              "position's logits only when asked)")
        rows = []
        for s in sequences:
            if len(s) > self.context:
                raise ValueError(f"sequences: {len(s)} tokens exceed the context of {self.context}")
            self.llm.reset()
            self.llm.eval(s)
            logits = torch.from_numpy(self.llm.scores[:len(s) - 1].copy()).float()
            rows.append(logits.log_softmax(-1).gather(1, torch.tensor(s[1:])[:, None])[:, 0].tolist())
        return rows


class LlamaCppEngine(ThreadedEngine):
    """:class:`~duplexlm.infer.engine.Engine`'s interface (requests, stop strings, streamed text,
    abort, seeded sampling) over a GGUF export run by llama.cpp, so that ``duplex serve`` serves one.

    llama-cpp-python decodes one sequence at a time: a request waits for the one before it to end.
    Sampling uses llama.cpp's own samplers (temperature, top-k, top-p, min-p, seeded per request); its
    repetition penalty looks back over the last 64 tokens (ours over the whole text). Not offered: beam
    search (llama.cpp's high-level API has none)."""

    library = "llama.cpp"

    def __init__(self, path: str | Path, tokenizer: Any, *, max_batch_size: int = 16, max_len: int | None = None,
                 threads: int = 0) -> None:
        self.llama = LlamaCppModel(path, threads=threads)
        self._setup(self.llama.config, path, tokenizer, max_batch_size, min(max_len or self.llama.context,
                                                                           self.llama.context), 512)

    def _add(self, prompt: Any, params: SamplingParams | None, request_id: str | None) -> Request:
        p = params or SamplingParams()
        if p.num_beams > 1:
            raise ConfigError("num_beams: the llama.cpp engine offers no beam search; leave num_beams at 1, or "
                              "serve the model directory (or its --format ct2 export) for beams")
        self._check_stop_ids(p)
        return super()._add(prompt, params, request_id)

    def _call(self, batch: Batch) -> None:
        (req,) = batch.reqs
        p = req.params
        self.llama.llm.set_seed(p.seed if p.seed is not None else random.randrange(2**31))
        sampling: dict[str, Any] = {"repeat_penalty": p.repetition_penalty}
        if not p.greedy:  # top_k beyond the vocabulary is all of it, which llama.cpp spells 0
            sampling.update(temp=p.temperature, top_k=p.top_k if p.top_k < self.vocab_size else 0, top_p=p.top_p,
                            min_p=p.min_p)
        # stop ids and the length end the call here, at once; stop strings by step(), a little later
        for token in self.llama.stream(req.max_new_tokens, req.prompt_ids, ignore_eos=True, sampling=sampling,
                                       stop_ids=frozenset(req.stop_ids)):
            if batch.stop[0]:
                return
            batch.tokens.put((0, token))


__all__ = ["LlamaCppEngine", "LlamaCppModel"]

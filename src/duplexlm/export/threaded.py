"""The engine's interface over another library's blocking generation calls (CTranslate2's
``generate_batch``, llama.cpp's ``generate``), so that ``duplex serve`` serves an export as it serves a
model directory: requests, stop strings, streamed text, abort.

Each call runs in a thread of its own and reports its tokens through a queue, which :meth:`step` reads;
the requests' own bookkeeping (stop ids and strings, lengths, the text streamed so far) is the torch
engine's (:class:`~duplexlm.infer.engine.Engine`). A subclass says which waiting requests share a call
(:meth:`ThreadedEngine._group`) and makes it (:meth:`ThreadedEngine._call`): static batches, so a
request that arrives while a call runs waits for it to end."""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import AnyConfig
from ..errors import ConfigError
from ..infer.engine import Engine, Request, RequestOutput, SamplingParams, end_token_ids

log = logging.getLogger("duplexlm.serve")


@dataclass
class _Runner:
    """What the server reads of the engine's runner: the context and the source room."""

    context: int
    max_source_len: int

    def move_rows(self, *_: Any) -> None:  # rows are the library's own
        pass


@dataclass
class Batch:
    """One call in flight: its requests (batch index = row), their stop flags, which the call reads
    between tokens, and the tokens it reports as (row, token id), which :meth:`ThreadedEngine.step` reads."""

    reqs: list[Request]
    stop: list[bool]
    tokens: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    results: list[Any] | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


class ExportedModel:
    """Stands for an export where a server reads a model: its ``config`` (the model it came from)."""

    exported = True

    def __init__(self, config: AnyConfig, path: Path) -> None:
        self.config = config
        self.path = path


class ThreadedEngine(Engine):
    """The base of :class:`~duplexlm.export.ct2.CT2Engine` and
    :class:`~duplexlm.export.llama_cpp.LlamaCppEngine` (see the module's docstring)."""

    library = "the engine"  # named in logs and thread names

    def _setup(self, config: AnyConfig, path: str | Path, tokenizer: Any, max_batch_size: int, max_len: int | None,
               max_source_len: int) -> None:
        if max_batch_size < 1:
            raise ConfigError(f"max_batch_size: expected an integer >= 1, found {max_batch_size}")
        self.model = ExportedModel(config, Path(path))  # type: ignore[assignment]
        self.tokenizer = tokenizer
        self.family = config.family
        self.device = torch.device("cpu")
        context = min(config.max_seq_len, 2048) if config.family == "decoder" else 512
        self.runner = _Runner(context if max_len is None else max_len, max_source_len)  # type: ignore[assignment]
        self.max_batch_size = max_batch_size
        self.vocab_size = config.vocab_size
        self.eos_token_ids = end_token_ids(config, tokenizer)
        self._init_requests()
        self._batch: Batch | None = None
        self._thread: threading.Thread | None = None

    def _check_stop_ids(self, p: SamplingParams) -> None:
        bad = [i for i in p.stop_token_ids if i >= self.vocab_size]
        if bad:
            raise ConfigError(f"stop_token_ids: {bad} lie outside the vocabulary of {self.vocab_size} tokens")

    def close(self) -> None:
        """Stop the running call (at its next token) and wait for its thread."""
        batch, thread = self._batch, self._thread
        if batch is not None:
            batch.stop[:] = [True] * len(batch.stop)
        if thread is not None:
            thread.join(timeout=10)

    # -- the step --------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Start a call when none runs, then hand over the tokens it has made since the last step
        (waiting briefly for one) → the outputs of the requests that changed."""
        outputs: list[RequestOutput] = []
        self._take_inbox(outputs)
        if self._batch is None and self._waiting:
            self._launch()
        batch = self._batch
        if batch is None:
            return outputs
        items = []
        try:
            items.append(batch.tokens.get(timeout=0.05))
            while True:
                items.append(batch.tokens.get_nowait())
        except queue.Empty:
            pass
        self.stepped = bool(items)  # an empty poll decoded nothing: the server's step metrics skip it
        for row, token in items:
            req = batch.reqs[row]
            if req.finished:
                continue
            out = self._advance(req, {row: token})  # type: ignore[arg-type]
            if out is not None:
                outputs.append(out)
            if req.finished:
                batch.stop[row] = True
        if batch.done.is_set() and batch.tokens.empty():
            outputs += self._end_batch(batch)
        self._release()
        return outputs

    def _take_inbox(self, outputs: list[RequestOutput]) -> None:
        super()._take_inbox(outputs)
        if self._batch is not None:
            for row, req in enumerate(self._batch.reqs):
                if req.finished:
                    self._batch.stop[row] = True

    def _release(self) -> None:
        self._running = [r for r in self._running if not r.finished]

    def _group(self, first: Request) -> list[Request]:
        """The waiting requests that share a call with ``first`` (itself included, first)."""
        return [first]

    def _launch(self) -> None:
        reqs = self._group(self._waiting[0])
        for row, req in enumerate(reqs):
            self._waiting.remove(req)
            req.row = row
        self._running.extend(reqs)
        batch = self._batch = Batch(reqs, [False] * len(reqs))
        self._thread = threading.Thread(target=self._run, args=(batch,), name=f"duplex-{self.library}", daemon=True)
        self._thread.start()

    def _run(self, batch: Batch) -> None:
        try:
            self._call(batch)
        except BaseException as e:  # reported by step(), which ends the batch's requests
            batch.error = e
        finally:
            batch.done.set()

    def _call(self, batch: Batch) -> None:
        """Decode ``batch`` (in the call's thread): put (row, token) on ``batch.tokens`` as they come and
        stop a row when ``batch.stop[row]`` is set; beam results go to ``batch.results``."""
        raise NotImplementedError

    def _beam_output(self, batch: Batch, row: int, req: Request) -> RequestOutput:
        raise NotImplementedError

    def _end_batch(self, batch: Batch) -> list[RequestOutput]:
        """The call has returned: beam results become their requests' outputs; any request still open
        (the library stopped it) finishes by length."""
        self._batch = None
        if batch.error is not None:  # the call failed: its requests end, the engine goes on
            log.error("a %s call failed: %r", self.library, batch.error)
            return [self._finish(req, "abort") for req in batch.reqs if not req.finished]
        outputs = []
        for row, req in enumerate(batch.reqs):
            if req.finished:
                continue
            if req.params.num_beams > 1 and batch.results is not None:
                outputs.append(self._beam_output(batch, row, req))
            else:
                outputs.append(self._finish(req, "length"))
        return outputs


__all__ = ["Batch", "ExportedModel", "ThreadedEngine"]

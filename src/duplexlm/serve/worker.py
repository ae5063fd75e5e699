"""The engine's own thread, and the asyncio side of it: how HTTP handlers submit and await generations.

The :class:`~duplexlm.infer.engine.Engine` is stepped by one thread (:class:`EngineWorker`), which
sleeps while nothing is queued. A handler calls :meth:`EngineWorker.submit` and awaits the
:class:`Submission`'s queue of :class:`~duplexlm.infer.engine.RequestOutput` deltas; the worker puts
each step's outputs into the right queue on the handler's event loop (``call_soon_threadsafe``), so
the engine never waits for a slow reader and a reader never blocks the engine. A handler whose client
left calls :meth:`EngineWorker.abort`: the request leaves the batch at the next step boundary and its
rows are free again.

Admission is bounded: at most ``max_pending`` requests may be in the worker (running or waiting for a
row) — one more is refused with :class:`QueueFull`, which the server answers with HTTP 429.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..infer.engine import Engine, Prompt, RequestOutput, SamplingParams

log = logging.getLogger("duplexlm.serve")


class QueueFull(Exception):
    """The worker holds ``max_pending`` requests already."""


@dataclass
class Submission:
    """One request in the worker: its id, and the queue its outputs arrive on (in order; the last has
    ``finished=True``)."""

    request_id: str
    queue: asyncio.Queue[RequestOutput]
    prompt_tokens: int
    submitted: float = field(default_factory=time.perf_counter)
    # the most requests decoded in one engine step while this one ran, itself included (1: it ran
    # alone); the worker thread sets it before it hands over the step's outputs
    peak_batch: int = 0


class EngineWorker:
    """Steps ``engine`` in a daemon thread while it has work; see the module docstring.

    ``on_step(outputs, seconds, batch)``, when given, is called from the worker thread after every
    step with its outputs, its duration and the number of requests it decoded (the server counts
    steps, tokens and batch sizes with it)."""

    def __init__(self, engine: Engine, *, max_pending: int = 64,
                 on_step: Callable[[list[RequestOutput], float, int], None] | None = None) -> None:
        self.engine = engine
        self.max_pending = max_pending
        self._on_step = on_step
        self._lock = threading.Lock()
        self._subs: dict[str, tuple[asyncio.AbstractEventLoop, Submission]] = {}
        self._wake = threading.Event()
        self._stop = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="duplex-engine", daemon=True)
        self._thread.start()

    # -- handler side ------------------------------------------------------------------------------
    def submit(self, prompt: Prompt, params: SamplingParams) -> Submission:
        """Queue a request; raises :class:`QueueFull` when the worker is full and ConfigError (from
        the engine) for a prompt or parameters it cannot take. Call from the event loop's thread."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._error is not None:
                raise RuntimeError(f"the engine thread failed: {self._error!r}")
            if len(self._subs) >= self.max_pending:
                raise QueueFull(f"{len(self._subs)} requests are in the engine already (the limit is "
                                f"{self.max_pending}); try again later")
            req = self.engine._add(prompt, params, None)  # ids, checks; it joins at the next step
            sub = Submission(req.request_id, asyncio.Queue(), len(req.prompt_ids))
            self._subs[req.request_id] = (loop, sub)
        self._wake.set()
        return sub

    def abort(self, request_id: str) -> None:
        """Stop a request at the next step (its last output says ``finish_reason='abort'``)."""
        if self.engine.abort(request_id):
            self._wake.set()

    @property
    def pending(self) -> int:
        """Requests in the worker (running, waiting for rows, or finished but not yet collected)."""
        with self._lock:
            return len(self._subs)

    @property
    def running(self) -> int:
        return self.engine.num_running

    @property
    def waiting(self) -> int:
        return self.engine.num_waiting

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=5)
        close = getattr(self.engine, "close", None)  # an engine with threads of its own (CTranslate2's)
        if close is not None:
            close()

    # -- the thread ----------------------------------------------------------------------------------
    def _run(self) -> None:
        engine = self.engine
        while not self._stop:
            if not engine.has_unfinished():
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                continue
            start = time.perf_counter()
            try:
                outputs = engine.step()
            except BaseException as e:  # a bug: fail every waiting request rather than hang them
                log.exception("engine step failed")
                self._fail_all(e)
                return
            seconds = time.perf_counter() - start
            batch = self._count_batch(outputs)
            self._deliver(outputs)
            if self._on_step is not None and getattr(engine, "stepped", True):  # not a poll that found nothing
                self._on_step(outputs, seconds, batch)

    def _count_batch(self, outputs: list[RequestOutput]) -> int:
        """The requests the step just run decoded (each produced a token: those still running, and
        those that finished on it; not the aborted ones it only dropped) → their number, recorded in
        each one's :class:`Submission`."""
        ids = {out.request_id for out in outputs if out.token_ids}
        ids.update(req.request_id for req in self.engine._running)  # beam requests say nothing until done
        with self._lock:
            for rid in ids:
                entry = self._subs.get(rid)
                if entry is not None:
                    entry[1].peak_batch = max(entry[1].peak_batch, len(ids))
        return len(ids)

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        """Hand a step's outputs to their handlers: one wake-up per event loop per step, not one per
        request (with 16 streams, waking the loop 16 times a step cost the engine thread more than the
        loop's own work)."""
        batches: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue[RequestOutput], RequestOutput]]] = {}
        with self._lock:
            for out in outputs:
                entry = self._subs.get(out.request_id)
                if entry is None:
                    continue
                if out.finished:
                    del self._subs[out.request_id]
                loop, sub = entry
                batches.setdefault(loop, []).append((sub.queue, out))
        for loop, items in batches.items():
            with contextlib.suppress(RuntimeError):  # the handler's loop is gone (server shutting down)
                loop.call_soon_threadsafe(_put_all, items)

    def _fail_all(self, error: BaseException) -> None:
        with self._lock:
            self._error = error
            subs, self._subs = list(self._subs.values()), {}
        for loop, sub in subs:
            out = RequestOutput(sub.request_id, [], "", finished=True, finish_reason="abort")
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(sub.queue.put_nowait, out)


def _put_all(items: list[tuple[asyncio.Queue[RequestOutput], RequestOutput]]) -> None:
    for queue, out in items:
        queue.put_nowait(out)


__all__ = ["EngineWorker", "QueueFull", "Submission"]

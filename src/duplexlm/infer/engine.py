"""The decoding engine: continuous batching over a preallocated cache, for decoders and encoder-decoders.

A request (prompt ids or text, :class:`SamplingParams`) joins the engine with :meth:`Engine.add_request`;
each :meth:`Engine.step` gives every running request one token — the new ones get theirs from their
prompt (prefill), the others from one batched decoding call — and returns what changed as
:class:`RequestOutput` deltas (token ids and text that never ends in half a character). Requests join
and leave the batch only between steps, so a long generation never holds up a short one, and a server
can drive the engine from one loop: add requests as they come, :meth:`Engine.abort` those whose
client left, call ``step()`` while :meth:`Engine.has_unfinished`. :meth:`Engine.generate` and
:meth:`Engine.stream` are that loop for one caller.

How the batch is kept (why it is fast and exact):

- **One preallocated cache** (``model.new_cache``), rows ``0..n-1`` for the ``n`` running sequences,
  each row at its own length. A decoding step writes each row's new key at that row's own position
  (one scatter) and masks the keys past it; nothing is reallocated or padded per token. A request
  that finishes frees its rows, and the rows after it move down (one copy per finished request, not
  per token), so the running rows stay one slice of the cache.
- **Prompts of different lengths** are prefilled together, right-padded: causality alone keeps the
  padding out of every real token's view, and each row's logits come from its own last token.
- **Per-request randomness**: a request's sampling draws one uniform number per step from its own
  generator (seeded by ``seed``), and its filters (temperature, top-k, top-p, min-p, repetition
  penalty) are its own, so it samples the same tokens whatever else shares the batch.
- **Encoder-decoders** (T5): a source is encoded once when its request joins; each decoder layer's
  cross-attention keys and values are projected once into the request's rows; decoding reuses them.
  Beam search (``num_beams > 1``) keeps a request's beams in adjacent rows and reorders them in
  place; it follows transformers' beam search step for step (length penalty, early stopping).

The model knows nothing of this: it takes a cache view (:meth:`~duplexlm.models.layers.KVCache.rows`).

>>> from duplexlm.config import DecoderConfig
>>> from duplexlm.models import build_model
>>> model = build_model(DecoderConfig(vocab_size=64, max_seq_len=32, d_model=32, n_layer=1, n_head=2))
>>> engine = Engine(model, max_batch_size=4)
>>> outs = engine.generate([[1, 2, 3], [4, 5]], SamplingParams(max_new_tokens=5, temperature=0))
>>> [len(o.token_ids) for o in outs], outs[0].finish_reason
([5, 5], 'length')
"""

from __future__ import annotations

import contextlib
import itertools
import math
import random
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .packed import pack_linears, packed_for_decoding
from .sampling import apply_repetition_penalty, process_logits, sample_from_probs
from .stream import TextStream

FinishReason = Literal["stop", "length", "abort"]
Prompt = str | Sequence[int]


# ----------------------------------------------------------------------------------------------------
# What a caller asks for, and what it gets back


@dataclass(frozen=True)
class SamplingParams:
    """How one request decodes. Every field is checked when the object is made; a bad value raises a
    :class:`~duplexlm.errors.ConfigError` naming the field.

    - ``temperature`` 0 is greedy; ``top_k`` 0, ``top_p`` 1, ``min_p`` 0 and ``repetition_penalty``
      1 switch those filters off.
    - Generation stops at ``max_new_tokens``, at the model's end-of-sequence token (unless
      ``ignore_eos``), at any of ``stop_token_ids`` (the stop token is kept in the token ids, not in
      the text), or when the text contains one of the ``stop`` strings (the text is cut before it).
    - ``seed``: the request's own generator; the same seed gives the same tokens in any batch.
    - ``num_beams`` > 1: beam search (deterministic; the sampling filters do not apply), with
      transformers' ``length_penalty`` and ``early_stopping`` (True, False or ``"never"``).

    >>> SamplingParams(temperature=-1)
    Traceback (most recent call last):
    ...
    duplexlm.errors.ConfigError: temperature: expected a number >= 0, found -1
    """

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    seed: int | None = None
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    skip_special_tokens: bool = True

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> ConfigError:
            return ConfigError(f"{name}: expected {expected}, found {getattr(self, name)!r}")

        def number(name: str) -> float:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
                raise bad(name, "a number")
            return float(value)

        def integer(name: str) -> int:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad(name, "an integer")
            return value

        if integer("max_new_tokens") < 1:
            raise bad("max_new_tokens", "an integer >= 1")
        if not 0 <= number("temperature") < math.inf:
            raise bad("temperature", "a number >= 0")
        if integer("top_k") < 0:
            raise bad("top_k", "an integer >= 0 (0: no top-k filter)")
        if not 0 < number("top_p") <= 1:
            raise bad("top_p", "a number in (0, 1]")
        if not 0 <= number("min_p") <= 1:
            raise bad("min_p", "a number in [0, 1]")
        if not 0 < number("repetition_penalty") < math.inf:
            raise bad("repetition_penalty", "a number > 0 (1: no penalty)")
        if integer("num_beams") < 1:
            raise bad("num_beams", "an integer >= 1")
        if not math.isfinite(number("length_penalty")):
            raise bad("length_penalty", "a finite number")
        if self.early_stopping not in (True, False, "never"):
            raise bad("early_stopping", "True, False or 'never'")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise bad("seed", "an integer or None")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if not all(isinstance(s, str) and s for s in stop):
            raise bad("stop", "non-empty strings")
        object.__setattr__(self, "stop", stop)
        ids = tuple(self.stop_token_ids)
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
            raise bad("stop_token_ids", "token ids (integers >= 0)")
        object.__setattr__(self, "stop_token_ids", ids)
        if self.num_beams > 1 and stop:
            raise ConfigError("stop: stop strings do not apply to beam search (num_beams > 1); use stop_token_ids")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 and self.num_beams == 1

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> SamplingParams:
        """Like the constructor, but an unknown name is a ConfigError that suggests the nearest ones."""
        from ..errors import did_you_mean

        names = [f.name for f in fields(cls)]
        for key in kwargs:
            if key not in names:
                raise ConfigError(f"{key}: not a sampling parameter{did_you_mean(key, names)}")
        return cls(**kwargs)


@dataclass
class RequestOutput:
    """What one step changed for one request: the new token ids and text (possibly empty while a
    character or a possible stop string is incomplete), and at the end, why it finished."""

    request_id: str
    token_ids: list[int]
    text: str
    finished: bool = False
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Completion:
    """A finished request: all its generated token ids and text (beam search: the best beam, with
    its length-penalised ``score``)."""

    request_id: str
    prompt_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: FinishReason
    score: float | None = None


# ----------------------------------------------------------------------------------------------------
# One request's state inside the engine


@dataclass
class _Beams:
    """transformers' beam search state for one request (its ``_beam_search``, batch of one)."""

    k: int
    eos: list[int]
    running: list[list[int]]  # k running hypotheses (generated tokens)
    running_scores: Tensor  # (k,) summed log-probabilities; all but the first start at -1e9
    finished: list[list[int]]  # k best finished hypotheses so far (placeholders at -1e9)
    finished_scores: Tensor  # (k,) length-penalised
    finished_flags: Tensor  # (k,) bool
    improvable: bool = True
    done: bool = False

    @classmethod
    def start(cls, k: int, eos: list[int]) -> _Beams:
        running_scores = torch.zeros(k)
        running_scores[1:] = -1e9  # the k beams are one prompt: only the first one's continuations count
        return cls(k, eos, [[] for _ in range(k)], running_scores, [[] for _ in range(k)],
                   torch.full((k,), -1e9), torch.zeros(k, dtype=torch.bool))


@dataclass
class Request:
    """A request as the engine tracks it (read its fields; the engine changes them)."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    max_new_tokens: int  # params.max_new_tokens, cut to what the context leaves
    stop_ids: frozenset[int]
    output_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: FinishReason | None = None
    score: float | None = None
    row: int = -1  # first cache row, while running
    rng: random.Random | None = None
    stream: TextStream | None = None
    beams: _Beams | None = None

    @property
    def n_rows(self) -> int:
        return self.params.num_beams

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


# ----------------------------------------------------------------------------------------------------
# Runners: the model-family-specific part (prefill, one decoding step, moving rows)


class _DecoderRunner:
    """Decoder-only models: the prompt is the sequence's beginning."""

    def __init__(self, model: nn.Module, max_batch: int, max_len: int) -> None:
        self.model = model
        self.cache = model.new_cache(max_batch, max_len)
        self.context = max_len
        self.vocab_size = model.config.vocab_size

    def first_length(self, req: Request) -> int:
        return len(req.prompt_ids)  # positions a row holds after its prefill

    def seen_ids(self, req: Request) -> list[int]:
        return req.prompt_ids  # what a repetition penalty counts from the start

    def prefill(self, start: int, reqs: list[Request], device: torch.device) -> Tensor:
        """Every new row's prompt at once, right-padded → each row's next-token logits (n, V)."""
        prompts = [r.prompt_ids for r in reqs for _ in range(r.n_rows)]
        n, T = len(prompts), max(len(p) for p in prompts)
        ids = torch.zeros(n, T, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, :len(p)] = torch.tensor(p, dtype=torch.long)
        ids = ids.to(device)
        last = torch.tensor([len(p) - 1 for p in prompts], device=device)
        positions = torch.arange(T, device=device)[None].expand(n, T)
        # right padding: causality alone keeps padding out of every real token's view
        view = self.cache.rows(start, positions, span=T, mask=None, offset=0)
        return self.model(ids, kv_cache=view, logits_at=last).logits[:, -1]

    def decode(self, tokens: Tensor, positions: Tensor, span: int, mask: Tensor | None,
               offset: int | None) -> Tensor:
        """One token for rows 0..n-1 → logits (n, V)."""
        view = self.cache.rows(0, positions, span, mask, offset)
        return self.model(tokens, kv_cache=view).logits[:, -1]

    def move_rows(self, src: int, dst: int, n: int, length: int) -> None:
        self.cache.move_rows(src, dst, n, length)

    def reorder(self, start: int, index: Tensor, length: int) -> None:
        self.cache.gather_rows(start, index, length)


class _Seq2SeqRunner:
    """Encoder-decoders: the prompt is the source, encoded once; the decoder starts from its start token."""

    def __init__(self, model: nn.Module, max_batch: int, max_len: int, max_source_len: int) -> None:
        self.model = model
        self.cache = model.new_cache(max_batch, max_len, max_source_len=max_source_len)
        self.context = max_len
        self.max_source_len = max_source_len
        self.vocab_size = model.config.vocab_size
        self.start_token = model.config.decoder_start_token_id
        self.source_lens = [0] * max_batch  # per row, to know how much of the source rows to move and read

    def first_length(self, req: Request) -> int:
        return 1  # the decoder start token

    def seen_ids(self, req: Request) -> list[int]:
        return [self.start_token]  # transformers penalises the decoder's own ids

    def prefill(self, start: int, reqs: list[Request], device: torch.device) -> Tensor:
        """Encode the new sources (one per request), store their cross-attention keys and values in
        every row of the request, and run the decoder start token → logits (n, V)."""
        sources = [r.prompt_ids for r in reqs]
        S = max(len(s) for s in sources)
        ids = torch.zeros(len(sources), S, dtype=torch.long)
        keep = torch.zeros(len(sources), S, dtype=torch.long)
        for i, s in enumerate(sources):
            ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
            keep[i, :len(s)] = 1
        ids, keep = ids.to(device), keep.to(device)
        mask = None if bool(keep.all()) else keep
        encoded = self.model.encode(ids, mask).last_hidden_state  # (k, S, C)
        per_row = torch.tensor([i for i, r in enumerate(reqs) for _ in range(r.n_rows)], device=device)
        cross = [block.cross_kv(encoded) for block in self.model.decoder.blocks]
        cross = [(k.index_select(0, per_row), v.index_select(0, per_row)) for k, v in cross]
        self.cache.set_source(start, cross, keep.index_select(0, per_row))
        n = per_row.shape[0]
        row_lens = [len(r.prompt_ids) for r in reqs for _ in range(r.n_rows)]
        self.source_lens[start:start + n] = row_lens
        tokens = torch.full((n, 1), self.start_token, dtype=torch.long, device=device)
        positions = torch.zeros(n, 1, dtype=torch.long, device=device)
        view = self.cache.rows(start, positions, span=1, mask=None, source_span=S,
                               source_padded=min(row_lens) < S, offset=0)
        return self.model(decoder_input_ids=tokens, kv_cache=view).logits[:, -1]

    def decode(self, tokens: Tensor, positions: Tensor, span: int, mask: Tensor | None,
               offset: int | None) -> Tensor:
        n = tokens.shape[0]
        lens = self.source_lens[:n]
        source_span = max(lens)
        view = self.cache.rows(0, positions, span, mask, source_span=source_span,
                               source_padded=min(lens) < source_span, offset=offset)
        return self.model(decoder_input_ids=tokens, kv_cache=view).logits[:, -1]

    def move_rows(self, src: int, dst: int, n: int, length: int) -> None:
        source_length = max(self.source_lens[src:src + n])
        self.cache.move_rows(src, dst, n, length, source_length)
        self.source_lens[dst:dst + n] = self.source_lens[src:src + n]

    def reorder(self, start: int, index: Tensor, length: int) -> None:
        self.cache.self_attn.gather_rows(start, index, length)  # a request's beams share their source


# ----------------------------------------------------------------------------------------------------
# The engine


def end_token_ids(config: Any, tokenizer: Any) -> frozenset[int]:
    """The ids that end a generation by default: the config's eos and the tokenizer's."""
    eos = {config.eos_token_id} if getattr(config, "eos_token_id", None) is not None else set()
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        eos.add(tokenizer.eos_token_id)
    return frozenset(eos)


class Engine:
    """Continuous-batching generation for a decoder or an encoder-decoder (see the module's docstring).

    ``max_batch_size`` rows are preallocated (a beam-search request takes ``num_beams`` rows), each of
    ``max_len`` positions (default: the model's context, at most 2048); encoder-decoders also keep
    ``max_source_len`` source positions per row. ``tokenizer`` (optional) turns text prompts into ids
    and ids into text; without it the engine works on ids alone. ``compile=True`` runs the decoding
    step through ``torch.compile`` (for GPUs; on a 2-core CPU it compiled for 45 s and did not run
    faster). ``cpu_layout`` (default on a CPU): keep a copy of each Linear weight packed for oneDNN,
    and the weights themselves column-major (:func:`~duplexlm.infer.packed.pack_linears`: the same
    parameters and values, plus one more copy of the Linear weights in memory), which makes the
    matrix products of a decoding step of 4 to 16 rows about 2x faster there than MKL's on the plain
    weights; it changes the model's Linear modules in place (they still train as before). The model
    is put in eval mode.

    Thread safety: :meth:`add_request` and :meth:`abort` may be called from any thread; :meth:`step`
    from one thread at a time.
    """

    def __init__(self, model: nn.Module, tokenizer: Any = None, *, max_batch_size: int = 16,
                 max_len: int | None = None, max_source_len: int = 512, compile: bool = False,
                 cpu_layout: bool = True) -> None:
        c = model.config
        if c.family not in ("decoder", "seq2seq"):
            raise ConfigError(f"model: the engine generates with a decoder or an encoder-decoder, found a {c.family}")
        if getattr(c, "head", "lm") != "lm":
            raise ConfigError(f"model: generation needs an LM head, found head={c.head!r}")
        if max_batch_size < 1:
            raise ConfigError(f"max_batch_size: expected an integer >= 1, found {max_batch_size}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.family = c.family
        self.device = next(model.parameters()).device
        if cpu_layout and self.device.type == "cpu" and not compile:  # a compiled step wants F.linear
            pack_linears(model)
        if c.family == "decoder":
            limit = min(c.max_seq_len, 2048) if max_len is None else max_len
            if not 1 < limit <= c.max_seq_len:
                raise ConfigError(f"max_len: expected an integer in [2, {c.max_seq_len}] (the model's context), "
                                  f"found {limit}")
            self.runner: _DecoderRunner | _Seq2SeqRunner = _DecoderRunner(model, max_batch_size, limit)
        else:
            limit = 512 if max_len is None else max_len
            if limit < 2 or max_source_len < 1:
                raise ConfigError(f"max_len, max_source_len: expected at least 2 and 1, found {limit} and "
                                  f"{max_source_len}")
            self.runner = _Seq2SeqRunner(model, max_batch_size, limit, max_source_len)
        self.max_batch_size = max_batch_size
        self.vocab_size = c.vocab_size
        self.eos_token_ids = end_token_ids(c, tokenizer)
        self._decode_fn = torch.compile(self.runner.decode, dynamic=True) if compile else self.runner.decode
        self._init_requests()
        n = max_batch_size
        self._tokens = torch.zeros(n, dtype=torch.long, device=self.device)  # each row's last token
        self._pos = torch.zeros(n, dtype=torch.long, device=self.device)  # each row's length = next position
        self._lens = [0] * n  # the same lengths, on the host
        self._seen: Tensor | None = None  # (rows, V) bool, made when a request uses a repetition penalty
        self._params_key: tuple[Any, ...] | None = None
        self._params: dict[str, Tensor] = {}

    def _init_requests(self) -> None:
        """The request queues and their lock (an engine over another backend keeps the same ones)."""
        self._lock = threading.Lock()
        self._inbox: list[Request] = []
        self._aborts: set[str] = set()
        self._waiting: deque[Request] = deque()
        self._running: list[Request] = []  # in row order
        self._ids: set[str] = set()
        self._counter = itertools.count()

    # -- requests ----------------------------------------------------------------------------------
    def add_request(self, prompt: Prompt, params: SamplingParams | None = None, *,
                    request_id: str | None = None) -> str:
        """Queue a request (text when the engine has a tokenizer, or token ids) → its id. It joins the
        batch at the next step with free rows. Raises ConfigError for a prompt that does not fit."""
        return self._add(prompt, params, request_id).request_id

    def _add(self, prompt: Prompt, params: SamplingParams | None, request_id: str | None) -> Request:
        params = params or SamplingParams()
        ids = self._prompt_ids(prompt)
        if params.num_beams > self.max_batch_size:
            raise ConfigError(f"num_beams: {params.num_beams} beams need as many rows, but the engine has "
                              f"max_batch_size={self.max_batch_size}")
        if params.stop and self.tokenizer is None:
            raise ConfigError("stop: stop strings need the engine to have a tokenizer (or use stop_token_ids)")
        if self.family == "decoder":
            room = self.runner.context - len(ids)
            if room < 1:
                raise ConfigError(f"prompt: {len(ids)} tokens leave no room in the context of "
                                  f"{self.runner.context} positions; expected at most {self.runner.context - 1}")
        else:
            if len(ids) > self.runner.max_source_len:
                raise ConfigError(f"prompt: {len(ids)} source tokens, but the engine holds at most "
                                  f"max_source_len={self.runner.max_source_len}")
            room = self.runner.context - 1
        stop_ids = frozenset(params.stop_token_ids) | (frozenset() if params.ignore_eos else self.eos_token_ids)
        req = Request(request_id="", prompt_ids=ids, params=params,
                      max_new_tokens=min(params.max_new_tokens, room), stop_ids=stop_ids)
        if params.num_beams > 1:
            req.beams = _Beams.start(params.num_beams, sorted(stop_ids))
        else:
            seed = params.seed if params.seed is not None else int(torch.randint(0, 2**62, ()).item())
            req.rng = random.Random(seed)
            if self.tokenizer is not None:
                req.stream = TextStream(self.tokenizer, params.stop, params.skip_special_tokens)
        with self._lock:
            if request_id is None:
                request_id = f"req-{next(self._counter)}"
                while request_id in self._ids:
                    request_id = f"req-{next(self._counter)}"
            elif request_id in self._ids:
                raise ConfigError(f"request_id: {request_id!r} is already in the engine")
            req.request_id = request_id
            self._ids.add(request_id)
            self._inbox.append(req)
        return req

    def abort(self, request_id: str) -> bool:
        """Stop a request at the next step boundary (its rows are freed; its last output says
        ``finish_reason='abort'``). False if the engine does not hold it."""
        with self._lock:
            if request_id not in self._ids:
                return False
            self._aborts.add(request_id)
            return True

    def has_unfinished(self) -> bool:
        with self._lock:
            return bool(self._inbox or self._waiting or self._running)

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        with self._lock:
            return len(self._waiting) + len(self._inbox)

    def _prompt_ids(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ConfigError("prompt: a text prompt needs the engine to have a tokenizer; pass token ids")
            ids = self.tokenizer.encode(prompt)
        else:
            ids = [int(i) for i in (prompt.tolist() if isinstance(prompt, Tensor) else prompt)]
        if not ids:
            raise ConfigError("prompt: expected at least one token, found none")
        if min(ids) < 0 or max(ids) >= self.vocab_size:
            raise ConfigError(f"prompt: token ids must lie in [0, {self.vocab_size}), found min {min(ids)}, "
                              f"max {max(ids)}")
        return ids

    # -- the step ------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self) -> list[RequestOutput]:
        """One decoding step for every running request (new ones are admitted first, as rows free up)
        → the outputs of the requests that changed."""
        outputs: list[RequestOutput] = []
        self._take_inbox(outputs)
        n_old = self._n_rows()
        admitted = self._admit(n_old)
        if n_old == 0 and not admitted:
            return outputs
        parts = []
        if n_old:
            parts.append(self._decode(n_old))
        if admitted:
            parts.append(self._prefill(n_old, admitted))
        logits = parts[0] if len(parts) == 1 else torch.cat(parts)
        n = logits.shape[0]
        self._running.extend(admitted)

        tokens = self._choose(logits)  # (n,) on the device; beam requests already reordered
        self._tokens[:n] = tokens
        if self._seen is not None:
            self._seen[torch.arange(n, device=self.device), tokens] = True
        host = tokens.tolist()  # the one wait for the device per step
        for req in self._running:
            out = self._advance(req, host)
            if out is not None:
                outputs.append(out)
        self._release()
        return outputs

    def _n_rows(self) -> int:
        return sum(r.n_rows for r in self._running)

    def _take_inbox(self, outputs: list[RequestOutput]) -> None:
        with self._lock:
            self._waiting.extend(self._inbox)
            self._inbox.clear()
            aborts, self._aborts = self._aborts, set()
        if not aborts:
            return
        for req in [r for r in self._waiting if r.request_id in aborts]:
            self._waiting.remove(req)
            outputs.append(self._finish(req, "abort"))
        for req in self._running:
            if req.request_id in aborts:
                outputs.append(self._finish(req, "abort"))
        self._release()

    def _admit(self, n_old: int) -> list[Request]:
        """Waiting requests that fit in the free rows, in arrival order (first come, first served:
        a request that needs more rows than are free waits, and those behind it wait too)."""
        free = self.max_batch_size - n_old
        admitted, row = [], n_old
        while self._waiting and self._waiting[0].n_rows <= free:
            req = self._waiting.popleft()
            req.row, row = row, row + req.n_rows
            free -= req.n_rows
            admitted.append(req)
        return admitted

    def _prefill(self, start: int, reqs: list[Request]) -> Tensor:
        logits = self.runner.prefill(start, reqs, self.device)
        row = start
        for req in reqs:
            length = self.runner.first_length(req)
            k = req.n_rows
            self._lens[row:row + k] = [length] * k
            self._pos[row:row + k] = length
            if req.params.repetition_penalty != 1.0 or self._seen is not None:
                seen = self._seen_rows()
                seen[row:row + k] = False
                seen[row:row + k, self.runner.seen_ids(req)] = True
            row += k
        return logits

    def _seen_rows(self) -> Tensor:
        if self._seen is None:  # first use of a repetition penalty: start tracking every row
            self._seen = torch.zeros(self.max_batch_size, self.vocab_size, dtype=torch.bool, device=self.device)
            for req in self._running:
                ids = torch.tensor(self.runner.seen_ids(req) + req.output_ids, dtype=torch.long)
                self._seen[req.row:req.row + req.n_rows, ids.to(self.device)] = True
        return self._seen

    def _decode(self, n: int) -> Tensor:
        lens = self._lens[:n]
        span = max(lens) + 1
        positions = self._pos[:n, None]
        if min(lens) == span - 1:  # every row at the same length: nothing to mask, a slice to write
            mask, offset = None, span - 1
        else:  # row b sees its keys 0..lens[b] (its new one included)
            mask = (torch.arange(span, device=self.device)[None] <= positions)[:, None, None, :]
            offset = None
        logits = self._decode_fn(self._tokens[:n, None], positions, span, mask, offset)
        self._pos[:n] += 1
        self._lens[:n] = [x + 1 for x in lens]
        return logits

    # -- choosing tokens -------------------------------------------------------------------------
    def _row_params(self, n: int) -> dict[str, Tensor]:
        """Per-row parameter tensors, rebuilt only when the batch changes."""
        key = tuple((r.request_id, r.row) for r in self._running)
        if key != self._params_key:
            rows = [r.params for r in self._running for _ in range(r.n_rows)]
            dev = self.device
            self._params = {
                "temperature": torch.tensor([max(p.temperature, 1e-5) for p in rows], device=dev),
                "top_k": torch.tensor([p.top_k for p in rows], device=dev),
                "top_p": torch.tensor([p.top_p for p in rows], device=dev),
                "min_p": torch.tensor([p.min_p for p in rows], device=dev),
                "penalty": torch.tensor([p.repetition_penalty for p in rows], device=dev),
            }
            self._params_key = key
        return self._params

    def _choose(self, logits: Tensor) -> Tensor:
        """The next token of every row (n,): argmax, a seeded draw, or beam search's choice."""
        reqs = self._running
        if all(r.params.greedy and r.params.repetition_penalty == 1.0 for r in reqs):
            return logits.argmax(-1)  # the common fast path: no float copy, no per-row work
        n = logits.shape[0]
        p = self._row_params(n)
        raw = logits = logits.float()
        if self._seen is not None and any(r.params.repetition_penalty != 1.0 for r in reqs):
            logits = apply_repetition_penalty(logits, self._seen[:n], p["penalty"])
        tokens = logits.argmax(-1)
        sampled = [r for r in reqs if r.rng is not None and r.params.temperature > 0]
        if sampled:
            rows = torch.tensor([r.row for r in sampled], device=self.device)
            filtered = process_logits(logits[rows], p["temperature"][rows], p["top_k"][rows], p["top_p"][rows],
                                      p["min_p"][rows])
            u = torch.tensor([r.rng.random() for r in sampled])
            tokens[rows] = sample_from_probs(filtered.softmax(-1), u)
        for r in reqs:
            if r.beams is not None:
                tokens[r.row:r.row + r.n_rows] = self._beam_step(r, raw[r.row:r.row + r.n_rows])
        return tokens

    def _beam_step(self, req: Request, logits: Tensor) -> Tensor:
        """One step of transformers' beam search for one request (its ``_beam_search`` with a batch of
        one: top 2k continuations, finished ones scored with the length penalty, the best k unfinished
        ones continue) → the k running beams' new tokens; their cache rows are reordered to match."""
        b = req.beams
        k, V, params = b.k, logits.shape[-1], req.params
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        if params.repetition_penalty != 1.0:  # transformers applies it to the log-probabilities here
            log_probs = apply_repetition_penalty(log_probs, self._seen[req.row:req.row + k], params.repetition_penalty)
        log_probs = log_probs.cpu() + b.running_scores[:, None]
        keep = max(2, 1 + len(b.eos)) * k
        top_scores, top_index = torch.topk(log_probs.reshape(-1), keep)
        parents, tokens = (top_index // V).tolist(), (top_index % V).tolist()
        candidates = [b.running[p] + [t] for p, t in zip(parents, tokens)]
        generated = len(req.output_ids) + 1  # tokens per hypothesis after this step
        hits = torch.tensor([t in b.eos or generated >= req.max_new_tokens for t in tokens])
        # the k best unfinished continuations run on
        running_scores = top_scores + hits.float() * -1e9
        order = torch.topk(running_scores, k).indices.tolist()
        b.running = [candidates[i] for i in order]
        b.running_scores = running_scores[order]
        # finished ones among the top k enter the k best finished, length-penalised
        just_finished = hits & (torch.arange(keep) < k)
        scores = top_scores / (generated ** params.length_penalty)
        if bool(b.finished_flags.all()) and params.early_stopping is True:
            scores = scores - 1e9
        if not b.improvable:
            scores = scores - 1e9
        scores = scores + (~just_finished).float() * -1e9
        merged = b.finished + candidates
        merged_scores = torch.cat([b.finished_scores, scores])
        merged_flags = torch.cat([b.finished_flags, just_finished])
        best = torch.topk(merged_scores, k).indices
        b.finished = [merged[i] for i in best.tolist()]
        b.finished_scores, b.finished_flags = merged_scores[best], merged_flags[best]
        # can a running beam still beat the worst finished one? (transformers' heuristic)
        length = req.max_new_tokens if params.early_stopping == "never" and params.length_penalty > 0 else generated
        best_possible = b.running_scores[0] / (length ** params.length_penalty)
        worst = b.finished_scores.min() if bool(b.finished_flags.all()) else torch.tensor(-1e9)
        b.improvable = b.improvable and bool(best_possible > worst)
        b.done = (not b.improvable) or (bool(b.finished_flags.all()) and params.early_stopping is True) \
            or bool(hits.all())
        index = torch.tensor([parents[i] for i in order], device=self.device)
        self.runner.reorder(req.row, index, self._lens[req.row])
        if self._seen is not None:
            self._seen[req.row:req.row + k] = self._seen[req.row + index]
        return torch.tensor([tokens[i] for i in order], device=self.device)

    # -- after the step ----------------------------------------------------------------------------
    def _advance(self, req: Request, host: list[int]) -> RequestOutput | None:
        """Record this step's token of ``req``, check its stop conditions → its output delta."""
        if req.beams is not None:
            req.output_ids.append(host[req.row])  # counts the steps; the text comes at the end
            if req.beams.done:
                return self._finish_beam(req, list(req.beams.finished[0]), float(req.beams.finished_scores[0]))
            return None
        token = host[req.row]
        req.output_ids.append(token)
        piece = ""
        if token in req.stop_ids:
            reason = "stop"
        else:
            if req.stream is not None:
                piece, stopped = req.stream.push(token)
                req.text += piece
                if stopped:
                    return self._finish(req, "stop", piece, [token])
            if len(req.output_ids) < req.max_new_tokens:
                return RequestOutput(req.request_id, [token], piece, prompt_tokens=len(req.prompt_ids),
                                     completion_tokens=len(req.output_ids))
            reason = "length"
        return self._finish(req, reason, piece, [token])

    def _finish_beam(self, req: Request, best: list[int], score: float | None) -> RequestOutput:
        """A beam request's end: its best hypothesis as the whole output, text and score."""
        req.output_ids = best
        req.score = score
        reason: FinishReason = "stop" if best and best[-1] in req.stop_ids else "length"
        if self.tokenizer is not None:
            req.text = self.tokenizer.decode(best, skip_special_tokens=req.params.skip_special_tokens)
        out = self._finish(req, reason)
        out.token_ids, out.text = list(best), req.text
        return out

    def _finish(self, req: Request, reason: FinishReason, piece: str = "",
                token_ids: list[int] | None = None) -> RequestOutput:
        if req.stream is not None:
            tail = req.stream.finish()
            req.text += tail
            piece += tail
        req.finish_reason = reason
        with self._lock:
            self._ids.discard(req.request_id)
        return RequestOutput(req.request_id, token_ids or [], piece, True, reason,
                             prompt_tokens=len(req.prompt_ids), completion_tokens=len(req.output_ids))

    def _release(self) -> None:
        """Drop finished requests; move the rows after each gap down so the running rows stay 0..n-1."""
        if not any(r.finished for r in self._running):
            return
        keep, row = [], 0
        for req in self._running:
            if req.finished:
                continue
            if req.row != row:
                k, length = req.n_rows, self._lens[req.row]
                self.runner.move_rows(req.row, row, k, length)
                self._tokens[row:row + k] = self._tokens[req.row:req.row + k].clone()
                self._pos[row:row + k] = self._pos[req.row:req.row + k].clone()
                self._lens[row:row + k] = self._lens[req.row:req.row + k]
                if self._seen is not None:
                    self._seen[row:row + k] = self._seen[req.row:req.row + k].clone()
                req.row = row
            keep.append(req)
            row += req.n_rows
        self._running = keep

    # -- convenience -------------------------------------------------------------------------------
    def generate(self, prompts: Prompt | Sequence[Prompt], params: SamplingParams | Sequence[SamplingParams] | None = None,
                 **kwargs: Any) -> Any:
        """Run prompts to the end → a :class:`Completion` per prompt (one, for one prompt given
        alone: a string or a list of ids). ``params``: one for all, or one per prompt; or give the
        fields as keyword arguments (``max_new_tokens=20, temperature=0``).

        It drives the engine itself (calls :meth:`step` until its prompts finish); requests added by
        others advance meanwhile, but their outputs of those steps are not returned to anyone — a
        server calls :meth:`step` in its own loop instead."""
        single = _is_one_prompt(prompts)
        batch = [prompts] if single else list(prompts)  # type: ignore[list-item]
        plist = self._params_list(params, kwargs, len(batch))
        reqs = [self._add(p, sp, None) for p, sp in zip(batch, plist)]
        try:
            while not all(r.finished for r in reqs):
                self.step()
        except BaseException:
            for r in reqs:
                if not r.finished:
                    self.abort(r.request_id)
            raise
        done = [Completion(r.request_id, r.prompt_ids, r.output_ids, r.text, r.finish_reason or "abort", r.score)
                for r in reqs]
        return done[0] if single else done

    def stream(self, prompt: Prompt, params: SamplingParams | None = None, **kwargs: Any) -> Iterator[str]:
        """Text pieces of one request as they come (never half a character; joined, the completion's
        text). Like :meth:`generate` it drives the engine itself. Leaving the loop early aborts the
        request."""
        sp = self._params_list(params, kwargs, 1)[0]
        rid = self.add_request(prompt, sp)
        finished = False
        try:
            while not finished:
                for out in self.step():
                    if out.request_id == rid:
                        if out.text:
                            yield out.text
                        finished = out.finished
        finally:
            if not finished:
                self.abort(rid)  # its rows free up at the next step

    def _params_list(self, params: Any, kwargs: dict[str, Any], n: int) -> list[SamplingParams]:
        if params is not None and kwargs:
            raise ConfigError("params: give a SamplingParams or keyword arguments, not both")
        if params is None:
            params = SamplingParams.from_kwargs(**kwargs)
        if isinstance(params, SamplingParams):
            return [params] * n
        params = list(params)
        if len(params) != n:
            raise ConfigError(f"params: expected one SamplingParams per prompt ({n}), found {len(params)}")
        return params


@torch.no_grad()
def generate(model: nn.Module, input_ids: Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, eos_token_id: int | None = None,
             generator: torch.Generator | None = None) -> Tensor:
    """Continue each prompt row of ``input_ids`` (B, T) by up to ``max_new_tokens`` tokens, as a tensor:
    rows that produced ``eos_token_id`` keep emitting it; at most up to the model's context.
    Returns (B, T + new). A thin layer over :class:`Engine`, which also
    streams, stops on strings, batches prompts of different lengths and runs encoder-decoders. On a CPU
    a model in eval mode is left in the engine's layout (packed weights, as ``Engine(model)`` leaves
    it: one more copy of the Linear weights in memory), so that later calls decode at the engine's
    speed; a model in training mode gets its layout back after the call.

    >>> from duplexlm.config import DecoderConfig
    >>> from duplexlm.models import build_model
    >>> model = build_model(DecoderConfig(vocab_size=40, max_seq_len=16, d_model=16, n_layer=1, n_head=2))
    >>> generate(model, torch.tensor([[1, 2, 3]]), max_new_tokens=4, temperature=0).shape
    torch.Size([1, 7])
    """
    if input_ids.dim() != 2:
        raise ConfigError(f"input_ids: expected shape (batch, seq_len), found {tuple(input_ids.shape)}")
    B, T = input_ids.shape
    limit = getattr(model.config, "max_seq_len", T + max_new_tokens)
    max_new_tokens = min(max_new_tokens, limit - T)
    if max_new_tokens <= 0:
        return input_ids
    # one seed per row from the caller's generator: the same generator state gives the same tokens
    seeds = torch.randint(0, 2**62, (B,), generator=generator).tolist()
    params = [SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k or 0,
                             top_p=1.0 if top_p is None else top_p, seed=s, ignore_eos=True,
                             stop_token_ids=() if eos_token_id is None else (eos_token_id,)) for s in seeds]
    was_training = model.training
    # the engine's CPU layout (packed weights): a model in eval mode keeps it, as an Engine's does, so
    # that the next call decodes at once; a model in training mode (a caller mid-training) gets back
    # its layout and its mode after the call
    with packed_for_decoding(model) if was_training else contextlib.nullcontext():
        try:
            engine = Engine(model, max_batch_size=B, max_len=T + max_new_tokens, cpu_layout=not was_training)
            outs = engine.generate([row.tolist() for row in input_ids], params)
        finally:
            model.train(was_training)
    width = max(len(o.token_ids) for o in outs)
    fill = eos_token_id if eos_token_id is not None else 0
    new = torch.full((B, width), fill, dtype=input_ids.dtype)
    for i, o in enumerate(outs):
        new[i, :len(o.token_ids)] = torch.tensor(o.token_ids, dtype=input_ids.dtype)
    return torch.cat([input_ids, new.to(input_ids.device)], dim=1)


def _is_one_prompt(prompts: Any) -> bool:
    """A text, or one list (or 1-D tensor) of token ids, is one prompt; a list of those is a batch."""
    if isinstance(prompts, str):
        return True
    if isinstance(prompts, Tensor):
        return prompts.dim() == 1
    return len(prompts) > 0 and isinstance(prompts[0], int)


__all__ = ["Completion", "Engine", "Request", "RequestOutput", "SamplingParams", "end_token_ids", "generate"]

"""The HTTP server: OpenAI-compatible routes over the decoding engine, duplexlm's own routes for
classifiers, taggers and attention maps, Prometheus metrics and a web page.

Routes (``/v1/*`` and ``/metrics`` need the API key when one is set; ``/health`` and the page's
static files never do — they hold no model output):

- ``GET /health`` — 200 ``{"status": "ok"}``, or 503 while the model loads (or failed to).
- ``GET /v1/models`` — the one model served, with its ``capabilities``.
- ``POST /v1/completions``, ``POST /v1/chat/completions`` — decoders (and completions for
  encoder-decoders); ``stream: true`` answers with server-sent events ending in ``data: [DONE]``.
- ``POST /v1/embeddings`` — encoders and encoder-decoders: mean-pooled, L2-normalised states.
- ``POST /v1/classify`` — classifiers, regressors and taggers (``task`` picks a multi-task head).
- ``POST /v1/attention`` — one layer's attention map of a text (a head, or the mean over heads).
- ``GET /metrics`` — Prometheus text; ``GET /`` — the web page.

Limits (:class:`ServerSettings`): request body size (413), ``max_tokens``, prompt tokens and ``n``
(400), requests held at once (429), a per-request timeout (408, or an error event in a stream). A
client that disconnects stops its generation at the next step and frees its batch rows. A POST body
must be JSON (415 for another ``Content-Type``; one without is read as JSON). A request refused before
its body is read (401, 503, 413) has the body read and dropped first (up to 64 MiB), so that a client
still sending it reads the answer rather than a connection reset.

Every error is a JSON body in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, and
``/openapi.json`` declares each route's answers: its statuses, their bodies' schemas, ``text/plain``
for ``/metrics`` and ``text/event-stream`` for streamed generations.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ConfigError
from ..infer.engine import Engine, RequestOutput, SamplingParams
from .bodies import DRAIN_BYTES, discard, is_json, media_type, refuse, replay, send_error, too_large
from .metrics import Metrics
from .protocol import (
    APIError,
    AttentionRequest,
    AttentionResponse,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ClassifyRequest,
    ClassifyResponse,
    CompletionChunk,
    CompletionRequest,
    CompletionResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    ErrorResponse,
    HealthNotReady,
    HealthReady,
    ModelList,
)
from .worker import EngineWorker, QueueFull, Submission

log = logging.getLogger("duplexlm.serve")
STATIC = Path(__file__).parent / "static"
_ENDPOINTS = ("/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions",
              "/v1/embeddings", "/v1/classify", "/v1/attention")
_POST_ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/classify", "/v1/attention")
BATCH_PEAK_HEADER = "X-Duplex-Batch-Peak"


@dataclass
class ServerSettings:
    """What the server serves and the limits it keeps (the ``duplex serve`` flags)."""

    model_dir: str | None = None
    model_name: str | None = None  # the id clients send as "model"; default: the directory's name
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    max_batch_size: int = 16  # engine rows decoded together
    max_queue: int = 64  # requests held beyond the running batch before 429
    max_tokens: int = 1024  # the most tokens one choice may ask for
    max_prompt_tokens: int | None = None  # None: what the model's context leaves room for
    max_n: int = 4
    max_inputs: int = 64  # texts in one embeddings/classify request
    max_body_bytes: int = 1 << 20
    request_timeout: float = 300.0
    device: str | None = None
    compile: bool = False
    packed_weights: bool = True  # a oneDNN-packed copy of the Linear weights on a CPU (Engine's cpu_layout)

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_queue", "max_tokens", "max_n", "max_inputs", "max_body_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name == "max_queue" else 1):
                raise ConfigError(f"{name}: expected an integer >= {0 if name == 'max_queue' else 1}, found {value!r}")
        if not self.request_timeout > 0:
            raise ConfigError(f"request_timeout: expected a number of seconds > 0, found {self.request_timeout!r}")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise ConfigError(f"max_prompt_tokens: expected an integer >= 1, found {self.max_prompt_tokens!r}")


def capabilities(model: torch.nn.Module) -> list[str]:
    """What a model can answer: ``completions``, ``chat``, ``embeddings``, ``classify``, ``attention``."""
    c = model.config
    if getattr(model, "exported", False):  # an engine's export: CTranslate2 and llama.cpp generate, ONNX classifies
        if c.family == "encoder":
            return ["classify"]
        return ["completions", "chat"] if c.family == "decoder" else ["completions"]
    caps: list[str] = []
    head = getattr(c, "head", "none")
    if c.family == "decoder" and head == "lm":
        caps += ["completions", "chat"]
    if c.family == "seq2seq":
        caps += ["completions", "embeddings"]
    if c.family == "encoder":
        caps.append("embeddings")
    if getattr(c, "tasks", None) or head in ("classify", "tag"):
        caps.append("classify")
    if c.family != "rnn" or getattr(c, "pooling", None) == "attention":
        caps.append("attention")
    return caps


@dataclass
class _State:
    settings: ServerSettings
    status: str = "loading"  # loading | ready | failed
    error: str | None = None
    model: Any = None
    tokenizer: Any = None
    name: str = "model"
    caps: list[str] = field(default_factory=list)
    worker: EngineWorker | None = None
    metrics: Metrics = field(default_factory=Metrics)
    created: int = field(default_factory=lambda: int(time.time()))
    model_lock: asyncio.Lock | None = None  # one non-generation forward pass at a time
    model_waiting: int = 0

    def ready(self, model: Any, tokenizer: Any, engine: Engine | None = None) -> None:
        s = self.settings
        if tokenizer is None:
            raise ConfigError(f"--model: {s.model_dir} has no tokenizer.json; the server needs one")
        self.caps = capabilities(model)
        if "completions" in self.caps:
            engine = engine or Engine(model, tokenizer, max_batch_size=s.max_batch_size, compile=s.compile,
                                      cpu_layout=s.packed_weights)
            self.worker = EngineWorker(engine, max_pending=s.max_batch_size + s.max_queue,
                                       on_step=self._stepped)
        self.model, self.tokenizer = model, tokenizer
        self.status = "ready"

    def _stepped(self, outputs: list[RequestOutput], seconds: float, batch: int) -> None:
        self.metrics.step(seconds, batch)
        self.metrics.tokens(generated=sum(len(o.token_ids) for o in outputs))


def _load_in_background(state: _State) -> None:
    from ..export import read_manifest
    from ..io import load
    from ..tokenizer import Tokenizer

    s = state.settings
    try:
        exported = read_manifest(s.model_dir)
        if exported is not None and exported.get("format") in ("ct2", "gguf"):  # CTranslate2 or llama.cpp decodes
            from ..export.ct2 import CT2Engine
            from ..export.llama_cpp import LlamaCppEngine

            tokenizer = Tokenizer.from_dir(s.model_dir)
            kind = CT2Engine if exported["format"] == "ct2" else LlamaCppEngine
            engine = kind(s.model_dir, tokenizer, max_batch_size=s.max_batch_size)
            state.ready(engine.model, tokenizer, engine)
            log.info("serving the %s export %s as %r: %s", engine.library, s.model_dir, state.name,
                     ", ".join(state.caps))
            return
        device = s.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, tokenizer = load(s.model_dir, device=device)
        state.ready(model, tokenizer)
        log.info("serving %s (%s) as %r: %s", s.model_dir, model.config.family, state.name, ", ".join(state.caps))
    except Exception as e:  # shown by /health and every route's 503
        state.status, state.error = "failed", f"{type(e).__name__}: {e}"
        log.error("loading %s failed: %s", s.model_dir, state.error)


# ----------------------------------------------------------------------------------------------------
# What /openapi.json declares each route answers

_ERROR_TEXT = {
    400: "A parameter is wrong (the message names it and what was expected), the body is not valid JSON, or "
         "the model cannot answer this route.",
    401: "The API key is missing or wrong.",
    404: "The model asked for is not the one this server serves.",
    408: "The request took longer than the server's timeout.",
    413: "The request body is larger than the server's limit.",
    415: "The body is not JSON: send it with 'Content-Type: application/json'.",
    429: "The server holds as many requests as it takes; try again later.",
    503: "The model is loading (then with Retry-After) or failed to load.",
}
_ON_MODEL = (400, 401, 404, 408, 413, 415, 429, 503)  # what every POST route may answer besides 200


def _responses(ok: dict[str, Any], *errors: int) -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {200: ok}
    for status in errors:  # JSON whatever the route's own media type (/metrics: text/plain)
        out[status] = {"description": _ERROR_TEXT[status],
                       "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
        if status == 503:
            out[status]["headers"] = {"Retry-After": {"description": "Seconds to wait; sent while the model loads.",
                                                      "schema": {"type": "integer"}}}
    return out


def _generation_ok(model: type, chunk: type, what: str) -> dict[str, Any]:
    """A generation route's 200: JSON, or with ``stream: true`` server-sent events (Open API 3.1 has
    the ``text/event-stream`` schema describe one event)."""
    ref = f"#/components/schemas/{chunk.__name__}"
    event = {
        "type": "object", "required": ["data"],
        "properties": {
            "event": {"type": "string"},
            "data": {"description": f"A {chunk.__name__} as JSON (an error body if the request timed out "
                                    "mid-stream); '[DONE]' last.",
                     "anyOf": [{"type": "string", "contentMediaType": "application/json",
                                "contentSchema": {"anyOf": [{"$ref": ref},
                                                            {"$ref": "#/components/schemas/ErrorResponse"}]}},
                               {"const": "[DONE]"}]},
        },
    }
    return {"model": model, "description": f"The {what} (stream: false), or its server-sent events (stream: true).",
            "headers": {BATCH_PEAK_HEADER: {"description": "stream: false only: the most generation requests "
                                                           "decoded together in one step while this one ran, "
                                                           "itself included (1: it ran alone).",
                                            "schema": {"type": "integer", "minimum": 1}}},
            "content": {"text/event-stream": {"schema": event}}}


def _finish_openapi(doc: dict[str, Any], settings: ServerSettings, model_name: str) -> dict[str, Any]:
    """FastAPI's document, corrected: no 422 (validation errors are 400s), the schemas of the error body
    and of the stream chunks, the API key as a bearer scheme on the routes it guards (no 401 anywhere
    without one), and the served model's id as the example of every request's ``model``."""
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for schema in schemas.values():
        if schema.get("title", "").endswith("Request") and "model" in schema.get("properties", {}):
            schema["properties"]["model"]["examples"] = [model_name]
    for model in (ErrorResponse, CompletionChunk, ChatCompletionChunk):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    if settings.api_key is not None:
        doc["components"]["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer",
                                                           "description": "'Authorization: Bearer <key>'"}}
    for path, item in doc.get("paths", {}).items():
        for operation in item.values():
            responses = operation.get("responses", {})
            responses.pop("422", None)
            if settings.api_key is None:
                responses.pop("401", None)
            elif path.startswith("/v1/") or path == "/metrics":
                operation["security"] = [{"apiKey": []}]
    return doc


# ----------------------------------------------------------------------------------------------------
# The app


def create_app(settings: ServerSettings | None = None, *, model: Any = None, tokenizer: Any = None) -> FastAPI:
    """The ASGI app. Give ``settings.model_dir`` (loaded in a background thread: the routes answer
    503 until it is ready) or an already loaded ``model`` and ``tokenizer``."""
    settings = settings or ServerSettings()
    state = _State(settings)
    if settings.model_name:
        state.name = settings.model_name
    elif settings.model_dir:
        state.name = Path(settings.model_dir).resolve().name
    if model is not None:
        state.ready(model, tokenizer)
    elif settings.model_dir is None:
        raise ConfigError("model_dir: expected a model directory (or pass model= and tokenizer=)")

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.model_lock = asyncio.Lock()
        if state.status == "loading":
            threading.Thread(target=_load_in_background, args=(state,), name="duplex-load", daemon=True).start()
        yield
        if state.worker is not None:
            state.worker.close()

    app = FastAPI(title="duplexlm", version=_version(), lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.duplex = state

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            doc = get_openapi(title=app.title, version=app.version, description=__doc__.split("\n\n")[0],
                              routes=app.routes)
            app.openapi_schema = _finish_openapi(doc, settings, state.name)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Routing's own errors (no such route, a method the route does not answer) in OpenAI's shape."""
        if exc.status_code == 404:
            message, code = (f"{request.url.path}: no such route (/openapi.json lists them)", "route_not_found")
        elif exc.status_code == 405:
            allow = (exc.headers or {}).get("Allow") or (exc.headers or {}).get("allow", "")
            message, code = (f"{request.url.path}: does not answer {request.method}; it answers {allow}",
                             "method_not_allowed")
        else:
            message, code = str(exc.detail), None
        return JSONResponse(APIError(exc.status_code, message, code=code).body(), status_code=exc.status_code,
                            headers=exc.headers)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        if first.get("type") == "json_invalid":  # its loc is the position in the text, not a parameter
            param = None
            message = f"the body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}"
        elif first.get("type") == "extra_forbidden":
            message = f"{param}: not a parameter of this endpoint"
        else:
            message = f"{param or 'body'}: {first.get('msg', 'invalid')}"
            if "input" in first and first.get("type") != "missing":
                message += f", found {_short(first['input'])}"
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
        return JSONResponse(APIError(400, message, param=param).body(), status_code=400)

    @app.exception_handler(ConfigError)
    async def _config_error(request: Request, exc: ConfigError) -> JSONResponse:
        message = str(exc)
        param = message.split(":", 1)[0] if ":" in message else None
        param = {"max_new_tokens": "max_tokens"}.get(param, param) if param else None
        if param and " " in param:
            param = None
        return JSONResponse(APIError(400, message, param=param).body(), status_code=400)

    # -- routes ------------------------------------------------------------------------------------
    @app.get("/health", response_model=None,
             responses={200: {"model": HealthReady, "description": "The model is loaded."},
                        503: {"model": HealthNotReady, "description": "The model is loading or failed to load."}})
    async def health() -> JSONResponse:
        if state.status == "ready":
            return JSONResponse({"status": "ok", "model": state.name})
        return JSONResponse({"status": state.status, "error": state.error}, status_code=503)

    @app.get("/metrics", response_class=PlainTextResponse,
             responses=_responses({"description": "Prometheus' text exposition format (version 0.0.4).",
                                   "content": {"text/plain": {"schema": {"type": "string"}}}}, 401))
    async def metrics() -> PlainTextResponse:
        w = state.worker
        gauges = {
            "duplex_queue_depth": ("Generation requests waiting for a batch row.", w.waiting if w else 0),
            "duplex_running_requests": ("Generation requests in the running batch.", w.running if w else 0),
            "duplex_pending_requests": ("Generation requests held (running, waiting or finishing).",
                                        w.pending if w else 0),
            "duplex_model_waiting": ("Embedding, classify and attention requests waiting for the model.",
                                     state.model_waiting),
            "duplex_model_ready": ("1 once the model is loaded.", int(state.status == "ready")),
        }
        return PlainTextResponse(state.metrics.render(gauges), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models", response_model=None,
             responses=_responses({"model": ModelList, "description": "The one model served."}, 401, 503))
    async def models() -> dict[str, Any]:
        c = state.model.config
        card: dict[str, Any] = {"id": state.name, "object": "model", "created": state.created,
                                "owned_by": "duplexlm", "family": c.family, "capabilities": state.caps,
                                "max_context": _context(state), "max_tokens": settings.max_tokens,
                                "max_n": settings.max_n}
        if "classify" in state.caps:
            card["tasks"] = _tasks(state.model)
        return {"object": "list", "data": [card]}

    @app.post("/v1/completions", response_model=None,
              responses=_responses(_generation_ok(CompletionResponse, CompletionChunk, "completion"), *_ON_MODEL))
    async def completions(body: CompletionRequest, request: Request) -> Response:
        _check(state, body.model, "completions", "/v1/completions")
        prompts = _prompt_list(body.prompt)
        params = _params(state, body, body.max_tokens, num_beams=body.num_beams,
                         length_penalty=body.length_penalty)
        ids = [_prompt_ids(state, p, "prompt" if len(prompts) == 1 else f"prompt[{i}]")
               for i, p in enumerate(prompts)]
        return await _generate(state, request, body, ids, params, chat=False)

    @app.post("/v1/chat/completions", response_model=None,
              responses=_responses(_generation_ok(ChatCompletionResponse, ChatCompletionChunk, "chat completion"),
                                   *_ON_MODEL))
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        from ..infer.chat import chat_prompt

        _check(state, body.model, "chat", "/v1/chat/completions")
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in body.messages]
        prompt = chat_prompt(state.tokenizer, messages)
        params = _params(state, body, body.max_completion_tokens or body.max_tokens,
                         extra_stop=prompt.stop, extra_stop_ids=prompt.stop_token_ids)
        ids = [_prompt_ids(state, prompt.text, "messages")]
        return await _generate(state, request, body, ids, params, chat=True)

    @app.post("/v1/embeddings", response_model=None,
              responses=_responses({"model": EmbeddingResponse, "description": "One vector per input."},
                                   *_ON_MODEL))
    async def embeddings(body: EmbeddingRequest) -> dict[str, Any]:
        from ..infer.embed import embed

        _check(state, body.model, "embeddings", "/v1/embeddings")
        texts, n_tokens = _texts(state, body.input)
        if body.dimensions is not None:
            raise APIError(400, "dimensions: this model's embeddings have one size; leave dimensions out",
                           param="dimensions")
        vectors = await _on_model(state, lambda: embed(state.model, state.tokenizer, texts))
        data = []
        for i, v in enumerate(vectors):
            if body.encoding_format == "base64":
                value: Any = base64.b64encode(v.numpy().astype("<f4").tobytes()).decode("ascii")
            else:
                value = v.tolist()
            data.append({"object": "embedding", "index": i, "embedding": value})
        return {"object": "list", "data": data, "model": state.name,
                "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}

    @app.post("/v1/classify", response_model=None,
              responses=_responses({"model": ClassifyResponse, "description": "One answer per input."},
                                   *_ON_MODEL))
    async def classify(body: ClassifyRequest) -> dict[str, Any]:
        from ..infer.predict import classify as classify_texts
        from ..infer.predict import tag, task_of

        _check(state, body.model, "classify", "/v1/classify")
        texts, _ = _texts(state, body.input)
        try:
            kind = task_of(state.model, body.task)
        except ConfigError as e:
            raise APIError(400, str(e).replace("--task", "task").replace("--model", "model"), param="task") from e
        fn = tag if kind == "tag" else classify_texts
        results = await _on_model(state, lambda: fn(state.model, state.tokenizer, texts, task=body.task))
        return {"object": "list", "model": state.name, "task": body.task, "kind": kind,
                "data": [{"index": i, "input": t, **r} for i, (t, r) in enumerate(zip(texts, results))]}

    @app.post("/v1/attention", response_model=None,
              responses=_responses({"model": AttentionResponse, "description": "One layer's attention map."},
                                   *_ON_MODEL))
    async def attention(body: AttentionRequest) -> dict[str, Any]:
        from ..infer.attention import attention_maps

        _check(state, body.model, "attention", "/v1/attention")
        _prompt_ids(state, body.input, "input")  # the length cap
        maps = await _on_model(state, lambda: attention_maps(state.model, state.tokenizer, body.input,
                                                             target=body.target))
        n_layer, n_head = maps.n_layer, maps.n_head
        if not -n_layer <= body.layer < n_layer:
            raise APIError(400, f"layer: expected an index in [{-n_layer}, {n_layer}), found {body.layer}",
                           param="layer")
        if body.head is not None and not -n_head <= body.head < n_head:
            raise APIError(400, f"head: expected an index in [{-n_head}, {n_head}) or null (the mean), "
                                f"found {body.head}", param="head")
        layer = maps.layers[body.layer]
        weights = layer.mean(0) if body.head is None else layer[body.head]
        return {"object": "attention", "model": state.name, "kind": maps.kind, "family": maps.family,
                "n_layer": n_layer, "n_head": n_head, "layer": body.layer % n_layer,
                "head": None if body.head is None else body.head % n_head,
                "tokens": maps.tokens, "key_tokens": maps.key_tokens,
                "weights": [[round(float(x), 5) for x in row] for row in weights]}

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    if settings.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_credentials=False,
                           allow_methods=["GET", "POST", "OPTIONS"], allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(_GuardMiddleware, state=state)
    return app


def _version() -> str:
    from ..version import __version__

    return __version__


def _short(value: Any) -> str:
    if isinstance(value, bytes | bytearray):  # a body FastAPI did not read as JSON
        return f"{len(value)} bytes that are not JSON"
    text = json.dumps(value, ensure_ascii=False, default=repr) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ----------------------------------------------------------------------------------------------------
# Checks shared by the routes


def _check(state: _State, model: str | None, capability: str, route: str) -> None:
    if model is not None and model != state.name:
        raise APIError(404, f"model: {model!r} is not served here; this server serves {state.name!r}",
                       param="model", code="model_not_found")
    if capability not in state.caps:
        offered = ", ".join(state.caps) or "nothing"
        raise APIError(400, f"model: {state.name!r} is a {state.model.config.family} that cannot answer {route} "
                            f"(it offers: {offered})", param="model", code="unsupported_endpoint")


def _context(state: _State) -> int:
    c = state.model.config
    return int(getattr(c, "max_seq_len", None) or (state.worker.engine.runner.max_source_len
                                                    if state.worker else 512))


def _tasks(model: Any) -> dict[str, Any]:
    from ..infer.predict import task_of

    c = model.config
    if getattr(c, "tasks", None):
        return {name: {"kind": task_of(model, name), "labels": spec.get("label_names")}
                for name, spec in c.tasks.items()}
    return {"": {"kind": task_of(model), "labels": getattr(c, "label_names", None)}}


def _texts(state: _State, value: str | list[str]) -> tuple[list[str], int]:
    """The texts of an ``input`` field, each within the prompt cap → (texts, their tokens in all)."""
    texts = [value] if isinstance(value, str) else list(value)
    if not texts:
        raise APIError(400, "input: expected a text or a non-empty list of texts, found []", param="input")
    if len(texts) > state.settings.max_inputs:
        raise APIError(400, f"input: {len(texts)} texts; this server takes at most {state.settings.max_inputs} "
                            "per request", param="input")
    n_tokens = 0
    for i, t in enumerate(texts):
        if not t.strip():
            raise APIError(400, f"input[{i}]: expected a non-empty text", param="input")
        n_tokens += len(_prompt_ids(state, t, "input" if len(texts) == 1 else f"input[{i}]"))
    return texts, n_tokens


def _prompt_list(prompt: Any) -> list[Any]:
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise APIError(400, "prompt: expected a text, a list of texts or token ids, found []", param="prompt")
    if isinstance(prompt[0], int):
        return [prompt]
    return list(prompt)


def _prompt_ids(state: _State, prompt: str | list[int], name: str) -> list[int]:
    """Token ids of a prompt, within the prompt-length cap."""
    if isinstance(prompt, str):
        ids = state.tokenizer.encode(prompt)
    else:
        ids = list(prompt)
        vocab = state.model.config.vocab_size
        if any(not 0 <= i < vocab for i in ids):
            raise APIError(400, f"{name}: token ids must lie in [0, {vocab})", param="prompt")
    if not ids:
        raise APIError(400, f"{name}: expected at least one token, found an empty prompt", param=name.split("[")[0])
    s = state.settings
    limit = s.max_prompt_tokens
    if state.worker is not None:
        engine = state.worker.engine
        room = engine.runner.context - 1 if engine.family == "decoder" else engine.runner.max_source_len
        limit = min(limit or room, room)
    elif limit is None:
        limit = int(getattr(state.model.config, "max_seq_len", 0) or 10**9)
    if len(ids) > limit:
        raise APIError(400, f"{name}: {len(ids)} tokens; this server takes at most {limit}",
                       param=name.split("[")[0], code="context_length_exceeded")
    return ids


def _params(state: _State, body: Any, max_tokens: int | None, *, extra_stop: tuple[str, ...] = (),
            extra_stop_ids: tuple[int, ...] = (), **extra: Any) -> SamplingParams:
    s = state.settings
    bad = body.unsupported()
    if bad:
        raise APIError(400, f"{bad[0]}: not supported by this server; leave it out (or at its default)",
                       param=bad[0])
    if not 1 <= body.n <= s.max_n:
        raise APIError(400, f"n: expected an integer in [1, {s.max_n}], found {body.n}", param="n")
    if max_tokens is None:
        max_tokens = s.max_tokens
    if not 1 <= max_tokens <= s.max_tokens:
        raise APIError(400, f"max_tokens: expected an integer in [1, {s.max_tokens}], found {max_tokens}",
                       param="max_tokens")
    if body.stream_options is not None and not body.stream:
        raise APIError(400, "stream_options: only with stream: true", param="stream_options")
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    if len(stop) > 4:
        raise APIError(400, f"stop: at most 4 stop strings, found {len(stop)}", param="stop")
    kwargs: dict[str, Any] = {
        "max_new_tokens": max_tokens,
        "temperature": 1.0 if body.temperature is None else body.temperature,
        "top_p": 1.0 if body.top_p is None else body.top_p,
        "top_k": body.top_k or 0,
        "min_p": body.min_p or 0.0,
        "repetition_penalty": 1.0 if body.repetition_penalty is None else body.repetition_penalty,
        "stop": stop + tuple(extra_stop),
        "stop_token_ids": tuple(body.stop_token_ids or ()) + tuple(extra_stop_ids),
        "ignore_eos": body.ignore_eos,
        "seed": body.seed,
        **extra,
    }
    if kwargs["temperature"] > 2:
        raise APIError(400, f"temperature: expected a number in [0, 2], found {kwargs['temperature']}",
                       param="temperature")
    if kwargs.get("num_beams", 1) > 1:
        if body.n > kwargs["num_beams"]:
            raise APIError(400, "n: beam search returns the best beam; ask for n=1", param="n")
        kwargs["temperature"] = 0.0
    return SamplingParams(**kwargs)


# ----------------------------------------------------------------------------------------------------
# Generation: submit, then stream or collect


class _Gone(Exception):
    """The client disconnected."""


class _TimedOut(Exception):
    pass


async def _next(queue: asyncio.Queue[Any], request: Request, deadline: float) -> Any:
    """The queue's next item; raises _Gone when the client left (checked every 0.25 s while waiting),
    _TimedOut past the deadline."""
    if not queue.empty() and time.monotonic() < deadline:  # the common case while a stream runs
        return queue.get_nowait()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _TimedOut()
        try:
            async with asyncio.timeout(min(left, 0.25)):  # no task per item, as wait_for makes one
                return await queue.get()
        except TimeoutError:
            if await request.is_disconnected():
                raise _Gone() from None


def _timeout_error(settings: ServerSettings) -> APIError:
    return APIError(408, f"the request took longer than the server's timeout of {settings.request_timeout:g} s",
                    code="timeout")


def _choice_params(params: SamplingParams, index: int) -> SamplingParams:
    """Choice ``index`` of ``n``: its own seed, so n samples differ but stay reproducible."""
    if params.seed is None or index == 0:
        return params
    from dataclasses import replace

    return replace(params, seed=params.seed + index)


async def _generate(state: _State, request: Request, body: Any, prompts: list[list[int]], params: SamplingParams,
                    *, chat: bool) -> Response:
    worker = state.worker
    assert worker is not None
    n = body.n
    subs: list[Submission] = []
    try:
        for ids in prompts:
            for j in range(n):
                subs.append(worker.submit(ids, _choice_params(params, j)))
    except QueueFull as e:
        for sub in subs:
            worker.abort(sub.request_id)
        raise APIError(429, f"the server is busy: {e}", code="queue_full") from None
    except ConfigError:
        for sub in subs:
            worker.abort(sub.request_id)
        raise
    state.metrics.tokens(prompt=sum(s.prompt_tokens for s in subs))
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    created = int(time.time())
    deadline = time.monotonic() + state.settings.request_timeout
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return _SSEResponse(_stream(state, request, subs, n, rid, created, deadline, chat, include_usage),
                            media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    try:
        outs = await asyncio.gather(*(_collect(state, request, sub, deadline) for sub in subs))
    except (_Gone, _TimedOut, asyncio.CancelledError) as e:
        for sub in subs:
            worker.abort(sub.request_id)
        state.metrics.abort()
        if isinstance(e, _TimedOut):
            raise _timeout_error(state.settings) from None
        if isinstance(e, asyncio.CancelledError):
            raise
        return Response(status_code=499)  # nobody reads it
    choices = []
    for i, (text, _count, reason) in enumerate(outs):
        if chat:
            choices.append({"index": i, "message": {"role": "assistant", "content": text},
                            "logprobs": None, "finish_reason": reason})
        else:
            choices.append({"index": i, "text": text, "logprobs": None, "finish_reason": reason})
    prompt_tokens = sum(s.prompt_tokens for s in subs[::n])
    completion_tokens = sum(count for _, count, _ in outs)
    peak = max(sub.peak_batch for sub in subs)
    return JSONResponse({
        "id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
        "model": state.name, "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }, headers={BATCH_PEAK_HEADER: str(peak)} if peak else None)


# characters that JSON leaves as they are but that split a line for readers that break lines as
# str.splitlines does (httpx's aiter_lines, the openai client): NEL and the Unicode line and paragraph
# separators, which a byte-level model can write
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def sse_event(payload: dict[str, Any]) -> str:
    """One server-sent event ``data: {json}`` on a single line whatever the text holds (Chinese kept
    readable; NEL, U+2028 and U+2029 escaped)."""
    return f"data: {json.dumps(payload, ensure_ascii=False).translate(_LINE_BREAKS)}\n\n"


def _finish_reason(reason: str | None) -> str:
    return "length" if reason in ("length", "abort") else "stop"


async def _collect(state: _State, request: Request, sub: Submission, deadline: float) -> tuple[str, int, str]:
    pieces: list[str] = []
    count = 0
    while True:
        out = await _next(sub.queue, request, deadline)
        if out.token_ids and count == 0:
            state.metrics.first_token(time.perf_counter() - sub.submitted)
        pieces.append(out.text)
        count = out.completion_tokens or count + len(out.token_ids)
        if out.finished:
            return "".join(pieces), count, _finish_reason(out.finish_reason)


async def _stream(state: _State, request: Request, subs: list[Submission], n: int, rid: str, created: int,
                  deadline: float, chat: bool, include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events: the choices' text as it comes (interleaved when n > 1), each choice's
    ``finish_reason`` in its last chunk, the usage chunk when asked for, then ``[DONE]``."""
    worker = state.worker
    assert worker is not None
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(index: int, text: str | None, reason: str | None, *, role: bool = False) -> str:
        if chat:
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice: dict[str, Any] = {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}
        else:
            choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": reason}
        payload: dict[str, Any] = {"id": rid, "object": kind, "created": created, "model": state.name,
                                   "choices": [choice]}
        if include_usage:
            payload["usage"] = None
        return sse_event(payload)

    open_subs = {i: sub for i, sub in enumerate(subs)}
    counts = [0] * len(subs)
    merged: asyncio.Queue[tuple[int, RequestOutput]] = asyncio.Queue()

    async def pump(i: int, sub: Submission) -> None:
        while True:
            out = await sub.queue.get()
            await merged.put((i, out))
            if out.finished:
                return

    single = len(subs) == 1  # the common case: read its queue directly, no merging task
    tasks = [] if single else [asyncio.create_task(pump(i, sub)) for i, sub in open_subs.items()]
    finished = False
    try:
        if chat:
            for i in range(len(subs)):
                yield chunk(i, "", None, role=True)
        while open_subs:
            i, out = (0, await _next(subs[0].queue, request, deadline)) if single else \
                await _next(merged, request, deadline)
            if out.token_ids and counts[i] == 0:
                state.metrics.first_token(time.perf_counter() - subs[i].submitted)
            counts[i] = out.completion_tokens or counts[i] + len(out.token_ids)
            if out.finished:
                del open_subs[i]
                if out.text:
                    yield chunk(i, out.text, None)
                yield chunk(i, None if chat else "", _finish_reason(out.finish_reason))
            elif out.text:
                yield chunk(i, out.text, None)
        if include_usage:
            prompt_tokens = sum(s.prompt_tokens for s in subs[::n])
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": sum(counts),
                     "total_tokens": prompt_tokens + sum(counts)}
            yield sse_event({"id": rid, "object": kind, "created": created, "model": state.name,
                             "choices": [], "usage": usage})
        yield "data: [DONE]\n\n"
        finished = True
    except _TimedOut:
        yield sse_event(_timeout_error(state.settings).body())
        yield "data: [DONE]\n\n"
    finally:
        for t in tasks:
            t.cancel()
        if not finished:
            for i in open_subs:
                worker.abort(subs[i].request_id)
            if open_subs:
                state.metrics.abort()


class _SSEResponse(StreamingResponse):
    """A streaming response that always closes its generator, so a stream whose client vanished
    aborts its generation (the generator's ``finally``) at once, not when garbage is collected."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[union-attr]


# ----------------------------------------------------------------------------------------------------
# Non-generation work on the model, one at a time, in a thread


async def _on_model(state: _State, fn: Callable[[], Any]) -> Any:
    s = state.settings
    if state.model_waiting > s.max_queue:
        raise APIError(429, f"the server is busy: {state.model_waiting} requests wait for the model (the "
                            f"limit is {s.max_queue + 1}); try again later", code="queue_full")
    assert state.model_lock is not None
    state.model_waiting += 1
    try:
        await state.model_lock.acquire()
    finally:
        state.model_waiting -= 1
    try:
        return await asyncio.wait_for(asyncio.to_thread(_no_grad, fn), timeout=s.request_timeout)
    except TimeoutError:
        raise _timeout_error(s) from None
    finally:
        state.model_lock.release()


def _no_grad(fn: Callable[[], Any]) -> Any:
    with torch.inference_mode():
        return fn()


# ----------------------------------------------------------------------------------------------------
# Key, body size, loading state and metrics: one ASGI middleware in front of every route


class _GuardMiddleware:
    """Before any route: the API key, the loading state, the body-size cap and a POST body's content
    type; after: the metrics. A request refused before its body was read has it read and dropped
    first (see :func:`refuse`)."""

    def __init__(self, app: Any, state: _State) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state, s = self.state, self.state.settings
        path: str = scope["path"]
        start = time.perf_counter()
        endpoint = path if path in _ENDPOINTS else ("/" if path == "/" or path.startswith("/static/") else "other")
        status_box = [500]

        async def send_counted(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status_box[0] = message["status"]
            await send(message)

        try:
            guarded = path.startswith("/v1/") or path == "/metrics"
            if guarded and s.api_key is not None and scope["method"] != "OPTIONS":
                header = dict(scope.get("headers") or ()).get(b"authorization", b"").decode("latin-1")
                if header != f"Bearer {s.api_key}":
                    message = ("missing API key: send the header 'Authorization: Bearer <key>'" if not header else
                               "wrong API key")
                    await refuse(scope, receive, send_counted, APIError(401, message, code="invalid_api_key"))
                    return
            if path.startswith("/v1/") and state.status != "ready":
                what = "is loading" if state.status == "loading" else f"failed to load ({state.error})"
                await refuse(scope, receive, send_counted, APIError(503, f"the model {what}; try again shortly",
                                                                     code="model_not_ready"),
                              retry_after=state.status == "loading")
                return
            if scope["method"] in ("POST", "PUT", "PATCH"):
                headers = dict(scope.get("headers") or ())
                declared = headers.get(b"content-length")
                if declared is not None and declared.isdigit() and int(declared) > s.max_body_bytes:
                    await refuse(scope, receive, send_counted, too_large(s.max_body_bytes, int(declared)))
                    return
                body, more = bytearray(), True
                while more:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    body += message.get("body", b"")
                    more = message.get("more_body", False)
                    if len(body) > s.max_body_bytes:
                        rest = await discard(receive, DRAIN_BYTES) if more else 0
                        found = None if rest is None else len(body) + rest
                        await send_error(send_counted, too_large(s.max_body_bytes, found))
                        return
                media = media_type(headers.get(b"content-type"))
                if scope["method"] == "POST" and path in _POST_ENDPOINTS:
                    if media is None:  # no Content-Type: read the body as the JSON it must be
                        scope = {**scope, "headers": [*scope["headers"], (b"content-type", b"application/json")]}
                    elif not is_json(media):
                        await send_error(send_counted, APIError(
                            415, f"Content-Type: expected application/json, found {media!r}; send the body as "
                                 "JSON with the header 'Content-Type: application/json'",
                            code="unsupported_media_type"))
                        return
                receive = replay(bytes(body), receive)
            await self.app(scope, receive, send_counted)
        finally:
            state.metrics.request(endpoint, status_box[0], time.perf_counter() - start)


def serve(settings: ServerSettings, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info") -> None:
    """Run the server until interrupted (``duplex serve``)."""
    import uvicorn

    app = create_app(settings)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)


__all__ = ["ServerSettings", "capabilities", "create_app", "serve"]

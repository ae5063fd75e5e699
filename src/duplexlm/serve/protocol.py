"""Request bodies of the HTTP API (OpenAI's shapes, plus duplexlm's own routes) and OpenAI-shaped errors.

Every body is a pydantic model that refuses unknown fields, so a misspelt parameter is a 400 naming
it rather than silently ignored. OpenAI parameters that this server does not implement (log
probabilities, presence and frequency penalties, logit bias, echo) are accepted at their neutral
value and refused with a 400 naming them otherwise. The extra sampling parameters vLLM accepts
(``top_k``, ``min_p``, ``repetition_penalty``, ``ignore_eos``, ``stop_token_ids``) are accepted too;
the openai client sends them through ``extra_body``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field


class APIError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    TYPES: ClassVar[dict[int, str]] = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
             405: "invalid_request_error", 408: "timeout_error", 413: "invalid_request_error",
             415: "invalid_request_error", 429: "rate_limit_error", 500: "server_error",
             503: "service_unavailable_error"}

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


class _Body(BaseModel):
    # strict: a JSON type other than the declared one is refused (false is not 0, 1.0 not 1), as the
    # schema says; Python's json reads NaN and Infinity, which no parameter takes
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    """The sampling fields completions and chat completions share."""

    model: str
    temperature: float | None = None
    top_p: float | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = 0.0
    frequency_penalty: float | None = 0.0
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # vLLM's extras
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None

    def unsupported(self) -> list[str]:
        """Names of the OpenAI parameters asked for that this server does not implement."""
        out = []
        if self.presence_penalty not in (None, 0):
            out.append("presence_penalty")
        if self.frequency_penalty not in (None, 0):
            out.append("frequency_penalty")
        if self.logit_bias:
            out.append("logit_bias")
        return out


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None
    num_beams: int = 1  # beam search (encoder-decoders and decoders alike); deterministic
    length_penalty: float = 1.0

    def unsupported(self) -> list[str]:
        out = super().unsupported()
        out += [name for name, bad in (("echo", self.echo), ("logprobs", self.logprobs is not None),
                                       ("best_of", self.best_of not in (None, 1)), ("suffix", bool(self.suffix)))
                if bad]
        return out


class ContentPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")  # clients send name, tool_calls: None, ...

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = None

    def unsupported(self) -> list[str]:
        out = super().unsupported()
        if self.logprobs:
            out.append("logprobs")
        if self.top_logprobs:
            out.append("top_logprobs")
        return out


class EmbeddingRequest(_Body):
    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class ClassifyRequest(_Body):
    model: str | None = None
    input: str | list[str]
    task: str | None = None  # a multi-task model's head


class AttentionRequest(_Body):
    model: str | None = None
    input: str = Field(min_length=1)
    target: str | None = None  # encoder-decoders: the decoder's text
    layer: int = -1
    head: int | None = None  # None: the mean over heads


# ----------------------------------------------------------------------------------------------------
# Response bodies: what /openapi.json declares each route answers (the handlers build plain dicts; the
# server's tests check the answers against these schemas)

FinishReason = Literal["stop", "length"]


class ErrorDetail(BaseModel):
    message: str = Field(description="What was wrong and what was expected.")
    type: str = Field(description="invalid_request_error, authentication_error, not_found_error, timeout_error, "
                                  "rate_limit_error or service_unavailable_error.")
    param: str | None = Field(description="The request parameter at fault, if one is.")
    code: str | None = Field(description="A machine-readable reason, e.g. model_not_found, "
                                         "context_length_exceeded, request_too_large, queue_full.")


class ErrorResponse(BaseModel):
    """Every error the server answers, in OpenAI's shape."""

    error: ErrorDetail


class HealthReady(BaseModel):
    status: Literal["ok"]
    model: str


class HealthNotReady(BaseModel):
    status: Literal["loading", "failed"]
    error: str | None = Field(description="Why loading failed (null while it loads).")


class TaskInfo(BaseModel):
    kind: Literal["classify", "regress", "tag"]
    labels: list[str] | None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    family: str
    capabilities: list[Literal["completions", "chat", "embeddings", "classify", "attention"]]
    max_context: int
    max_tokens: int
    max_n: int
    tasks: dict[str, TaskInfo] | None = Field(None, description="Classifiers and taggers only: their heads "
                                                                "('' for a single-task model).")


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: None
    finish_reason: FinishReason


class CompletionResponse(BaseModel):
    """A completion (``stream: false``); with ``stream: true`` the route answers ``text/event-stream``
    instead: ``data: {chunk}`` events, each chunk shaped like this body with one choice (and the
    usage chunk, when asked for, with none), ending in ``data: [DONE]``."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None
    finish_reason: FinishReason


class ChatCompletionResponse(BaseModel):
    """A chat completion (``stream: false``); with ``stream: true`` the route answers
    ``text/event-stream``: ``chat.completion.chunk`` events with a ``delta`` per choice, ending in
    ``data: [DONE]``."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChunkChoice(BaseModel):
    index: int
    text: str
    logprobs: None
    finish_reason: FinishReason | None


class CompletionChunk(BaseModel):
    """One event of a streamed completion: a piece of one choice's text (its ``finish_reason`` in its
    last), or with ``stream_options.include_usage``, the usage last, with no choices."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChunkChoice]
    usage: Usage | None = Field(None, description="With stream_options.include_usage: null but in the last chunk.")


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: None
    finish_reason: FinishReason | None


class ChatCompletionChunk(BaseModel):
    """One event of a streamed chat completion: the role first, then pieces of content, each choice's
    ``finish_reason`` in its last; with ``stream_options.include_usage``, the usage last."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = Field(None, description="With stream_options.include_usage: null but in the last chunk.")


class Embedding(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str = Field(description="Floats, or base64 of little-endian float32 when asked for.")


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class Entity(BaseModel):
    type: str
    text: str
    start: int
    end: int


class ClassifyResult(BaseModel):
    """One input's answer: a classifier's ``label``, ``score`` and ``probs``; a regressor's ``values``;
    a tagger's ``words``, ``tags`` and ``entities``."""

    index: int
    input: str
    label: str | None = None
    score: float | None = None
    probs: dict[str, float] | None = None
    values: list[float] | None = None
    words: list[str] | None = None
    tags: list[str] | None = None
    entities: list[Entity] | None = None


class ClassifyResponse(BaseModel):
    object: Literal["list"]
    model: str
    task: str | None
    kind: Literal["classify", "regress", "tag"]
    data: list[ClassifyResult]


class AttentionResponse(BaseModel):
    object: Literal["attention"]
    model: str
    kind: Literal["self", "cross", "pooling"]
    family: str
    n_layer: int
    n_head: int
    layer: int
    head: int | None
    tokens: list[str]
    key_tokens: list[str]
    weights: list[list[float]] = Field(description="One row per token: its attention over key_tokens.")


__all__ = ["APIError", "AttentionRequest", "AttentionResponse", "ChatCompletionChunk", "ChatCompletionRequest",
           "ChatCompletionResponse", "ClassifyRequest", "ClassifyResponse", "CompletionChunk", "CompletionRequest",
           "CompletionResponse", "EmbeddingRequest", "EmbeddingResponse", "ErrorResponse", "HealthNotReady",
           "HealthReady", "ModelList"]

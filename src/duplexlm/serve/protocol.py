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
             408: "timeout_error", 413: "invalid_request_error", 429: "rate_limit_error",
             500: "server_error", 503: "service_unavailable_error"}

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
    model_config = ConfigDict(extra="forbid")


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


__all__ = ["APIError", "AttentionRequest", "ChatCompletionRequest", "ClassifyRequest", "CompletionRequest",
           "EmbeddingRequest"]

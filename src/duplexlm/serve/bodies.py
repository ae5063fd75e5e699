"""Request bodies at the edge of the server, below the routes: how much is read, how a body that is
refused early is drained so that the client sees the answer (not a reset), and the error replies
the guard sends before FastAPI sees the request."""

from __future__ import annotations

import json
from typing import Any

from .protocol import APIError

DRAIN_BYTES = 64 << 20  # the most body bytes read and dropped before answering a request refused early


def too_large(limit: int, size: int | None) -> APIError:
    """The 413 for a body over ``limit`` bytes (``size`` when known)."""
    found = f"{size} bytes" if size is not None else f"more than {limit + DRAIN_BYTES} bytes"
    return APIError(413, f"the request body is too large: the limit is {limit} bytes, found {found}",
                    code="request_too_large")


def media_type(value: bytes | None) -> str | None:
    """``type/subtype`` of a Content-Type header, lower-cased; None when there is none."""
    media = (value or b"").decode("latin-1").split(";", 1)[0].strip().lower()
    return media or None


def is_json(media: str) -> bool:
    """Whether a media type is JSON (``application/json`` or ``application/*+json``)."""
    kind, _, sub = media.partition("/")
    return kind == "application" and (sub == "json" or sub.endswith("+json"))


async def discard(receive: Any, limit: int) -> int | None:
    """Read and drop the rest of the request body → its size, or None past ``limit`` bytes (or when
    the client left)."""
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            return size
        if size > limit:
            return None


async def refuse(scope: Any, receive: Any, send: Any, err: APIError, *, retry_after: bool = False) -> None:
    """Answer ``err`` to a request whose body nobody read yet. The body is read and dropped first (up to
    ``DRAIN_BYTES``; a larger one is answered at once): a server that answers and closes while the
    client still sends makes the client's system reset the connection, and the client never reads the
    answer. A client that sent ``Expect: 100-continue`` waits to be asked for its body: it is answered
    at once, and the connection closed after the answer (the body it did not send cannot be read)."""
    headers = dict(scope.get("headers") or ())
    declared = headers.get(b"content-length", b"")
    size = int(declared) if declared.isdigit() else 0
    if size > 0 or b"transfer-encoding" in headers:
        if headers.get(b"expect", b"").lower() == b"100-continue":
            await send_error(send, err, retry_after=retry_after, close=True)
            return
        if size <= DRAIN_BYTES:
            await discard(receive, DRAIN_BYTES)
    await send_error(send, err, retry_after=retry_after)


def replay(body: bytes, receive: Any) -> Any:
    sent = False

    async def replayed() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def send_error(send: Any, err: APIError, *, retry_after: bool = False, close: bool = False) -> None:
    payload = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if retry_after:
        headers.append((b"retry-after", b"1"))
    if close:  # the body was not all read: the connection cannot carry another request
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})

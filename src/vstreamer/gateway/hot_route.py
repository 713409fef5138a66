"""``POST /v1/chat/completions`` served straight from ASGI, before the framework.

Every chat request used to pass FastAPI's middleware, routing, dependency and body handling: about a tenth of a
request's CPU and ~0.1 ms of its time to first token. This route reads the body, validates it with the same pydantic
model, authenticates with the same authenticator and starts the reply with the same :func:`chat.open_reply`.

What it does not take on is replayed, body and all, to the FastAPI route, so every error message, CORS and the
OpenAPI schema stay in one place: a body the model rejects, a content type other than JSON, a cross-origin call
when CORS is configured. The one answer it gives a cross-origin call itself, a body too large to replay (413), goes
through the same CORS middleware, so the browser can read it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vstreamer.gateway.chat import open_reply
from vstreamer.gateway.errors import APIError, error_response
from vstreamer.gateway.metrics import StatusSend, count_request
from vstreamer.gateway.schemas import ChatCompletionRequest
from vstreamer.gateway.state import GatewayState

MAX_BODY_BYTES = 16 * 1024 * 1024
"""A chat request's body is read whole; a bigger one is refused (413) before it is held in memory."""


class ChatRoute:
    """The ASGI app of the chat route; ``fallback`` is the whole FastAPI app (the same route, the slow way); ``cors``
    wraps an app in the gateway's CORS middleware (``None``: CORS is not configured)."""

    def __init__(
        self,
        state: GatewayState,
        *,
        fallback: ASGIApp,
        route: object,
        cors: Callable[[ASGIApp], ASGIApp] | None,
    ) -> None:
        self.state = state
        self.fallback = fallback
        self.route = route
        self.cors = cors

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _read_body(receive)
        if body is None:
            return  # the client left before sending its request
        headers = _headers(scope)
        too_large = len(body) > MAX_BODY_BYTES
        request = None if too_large else self._parse(body, headers)
        if request is None and not too_large:
            await self.fallback(scope, _replay(body, receive), send)
            return
        scope["route"] = self.route  # the request counter labels by it, as after FastAPI's routing

        async def answer(scope: Scope, receive: Receive, send: StatusSend) -> None:
            try:
                if request is None:
                    raise APIError(413, f"the request body is larger than {MAX_BODY_BYTES // 2**20} MiB",
                                   code="request_too_large")  # fmt: skip
                owner = await self.state.auth(headers)
                reply = await open_reply(self.state, request, headers, owner)
                await reply(scope, receive, send)
            except Exception as exc:
                if send.status is not None:
                    raise  # mid-response: nothing left to do but drop the connection (as FastAPI's route would)
                # Before the response: every failure becomes an error in OpenAI's schema, the unexpected ones logged.
                await error_response(exc)(scope, receive, send)

        if self.cors is not None and "origin" in headers:
            # Only a body too large to replay gets here cross-origin (the rest fell back): its 413 gets CORS headers.
            await self.cors(partial(count_request, answer, metrics=self.state.metrics))(scope, receive, send)
            return
        await count_request(answer, scope, receive, send, self.state.metrics)

    def _parse(self, body: bytes, headers: dict[str, str]) -> ChatCompletionRequest | None:
        """The request, or ``None`` for the FastAPI route to handle (and to word the error)."""
        if self.cors is not None and "origin" in headers:
            return None
        # A body without a JSON media type goes to FastAPI, which refuses it (one without any type too: a web page
        # may send that without a CORS preflight), so that both routes answer it alike.
        kind = headers.get("content-type", "").partition(";")[0].strip().lower()
        if kind != "application/json" and not (kind.startswith("application/") and kind.endswith("+json")):
            return None
        try:
            return ChatCompletionRequest.model_validate_json(body)
        except ValidationError:
            return None


def _headers(scope: Scope) -> dict[str, str]:
    """The request's headers by lower-case name, the first of a repeated one as Starlette's ``Headers.get`` gives
    it: one dict, where each ``Headers`` look-up walks and decodes the whole list again."""
    return {
        name.lower().decode("latin-1"): value.decode("latin-1") for name, value in reversed(scope["headers"])
    }


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body (reading stops past the limit), or ``None`` if the client disconnected."""
    message = await receive()
    if message["type"] != "http.request":
        return None
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body  # the usual case: one message
    parts = [body]
    size = len(body)
    while size <= MAX_BODY_BYTES:
        message = await receive()
        if message["type"] != "http.request":
            return None
        parts.append(chunk := message.get("body", b""))
        size += len(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(parts)


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` for the fallback: the body already read, then the connection's own messages."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay

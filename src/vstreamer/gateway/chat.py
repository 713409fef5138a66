"""``POST /v1/chat/completions``: the persona answers, streamed (SSE) or whole, OpenAI-compatible.

The route validates the request and finds the conversation; :class:`ChatReply` (a raw ASGI response) then runs the
engine and writes the reply. It reads up to the first text before answering, so failures before it become proper
HTTP errors; one watcher task per request notices the client leaving (and cancels the reply, which stops the
generation upstream) and sends SSE keep-alive comments while the stream is idle; it starts a few milliseconds in, so
a reply that is over by then never has one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
from collections.abc import AsyncGenerator, Mapping

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

from vstreamer.engine import Conversation, EngineEvent, ReplyDelta, ReplyFinished, SamplingOverrides, Turn
from vstreamer.errors import VStreamerError
from vstreamer.gateway.errors import SESSION_HEADER, APIError, InSession, error_response, status_for
from vstreamer.gateway.schemas import ChatCompletionRequest, error_body
from vstreamer.gateway.state import GatewayState, gateway_state, principal
from vstreamer.persona import Persona
from vstreamer.store import SessionRecord, Store

logger = logging.getLogger(__name__)
router = APIRouter()
VIEWER_HEADER = "X-Viewer-Id"
SESSION_HEADER_KEY, VIEWER_HEADER_KEY = SESSION_HEADER.lower(), VIEWER_HEADER.lower()
"""The names to look up: ``headers`` are a plain dict of lower-case names on the hot route."""
API_PLATFORM = "api"
CLIENT_CLOSED = 499


SESSION_ID_RULE = "1-64 letters, digits or . _ : @ + = -"
_SESSION_ID = re.compile(r"[A-Za-z0-9._:@+=-]{1,64}")


def explicit_session_id(headers: Mapping[str, str]) -> str | None:
    """The ``X-Session-Id`` header (``None``: none sent): the client's own id for its conversation, used as it is. It
    must be a plain id: it is echoed in the response's headers and is part of REST paths."""
    header = headers.get(SESSION_HEADER_KEY)
    if not header:
        return None
    if not _SESSION_ID.fullmatch(header):
        raise APIError(400, f"{SESSION_HEADER} must be {SESSION_ID_RULE}", param=SESSION_HEADER,
                       code="invalid_session_id")  # fmt: skip
    return header


def end_user_id(user: str) -> str:
    """The end user the ``user`` field names, as a plain id: the field itself if it is one, else ``user-`` and a hash
    of it (OpenAI clients put any string there). The viewer whose facts the persona remembers when no
    ``X-Viewer-Id`` is sent, one person to every persona; also the id ``user`` named its session by before sessions
    were per key and persona (see :func:`_user_session`)."""
    if _SESSION_ID.fullmatch(user):
        return user
    return "user-" + hashlib.blake2b(user.encode(), digest_size=16).hexdigest()


def user_session_id(owner: str, persona_id: str, user: str) -> str:
    """The session the ``user`` field names: one per API key, persona and end user. ``user`` says who is talking (as
    OpenAI documents it), not which conversation: one end user talks to each persona apart, and two keys' "alice"
    are two people, neither able to reach or block the other's session. Derived, not stored, so that every gateway
    instance finds it; the response's ``X-Session-Id`` tells the client which it is."""
    named = orjson.dumps([owner, persona_id, user])  # a list: no two triples give the same bytes
    return "user-" + hashlib.blake2b(named, digest_size=16).hexdigest()


def names_session(headers: Mapping[str, str], user: str | None) -> bool:
    """Whether the request continues a session (an ``X-Session-Id`` header, checked, or a ``user``) rather than
    sending its whole history for a new one."""
    return explicit_session_id(headers) is not None or bool(user)


VIEWER_ID_RULE = "1-100 characters of UTF-8 text, without / or control characters"
MAX_VIEWER_ID = 100


def viewer_id_of(headers: Mapping[str, str]) -> str | None:
    """The viewer an ``X-Viewer-Id`` header names (``None``: none sent). It is a platform's user name, any script,
    read as UTF-8 (headers arrive as Latin-1 text); it is one segment of the memory routes' paths, so a "/" (which
    no path could name) or a control character is refused, and so is a longer one (cut, two viewers would be one)."""
    raw = headers.get(VIEWER_HEADER_KEY)
    if raw is None:
        return None
    try:
        viewer = raw.encode("latin-1").decode("utf-8").strip()
    except UnicodeError:
        viewer = "\x00"  # refused below
    if len(viewer) > MAX_VIEWER_ID or "/" in viewer or any(c < " " or "\x7f" <= c < "\xa0" for c in viewer):
        raise APIError(400, f"{VIEWER_HEADER} must be {VIEWER_ID_RULE}", param=VIEWER_HEADER,
                       code="invalid_viewer_id")  # fmt: skip
    return viewer or None


def api_viewer_id(owner: str, viewer: str) -> str:
    """Viewers of the API are scoped to the API key: two keys' "alice" are two people."""
    return f"{owner}:{viewer}"


CHAT_PATH = "/v1/chat/completions"


@router.post(CHAT_PATH, response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, owner: str = Depends(principal)
) -> Response:
    """Reached for what :mod:`vstreamer.gateway.hot_route` hands over (cross-origin calls, odd bodies)."""
    return await open_reply(gateway_state(request), body, request.headers, owner)


async def open_reply(
    state: GatewayState, body: ChatCompletionRequest, headers: Mapping[str, str], owner: str
) -> ChatReply:
    """Check the request against the persona and the session, and start the reply (run when the response is)."""
    persona = await state.catalog.model(body.model)
    user_text = body.messages[-1].text
    _check_lengths(state, body, headers)
    conversation = await _conversation(state, body, headers, persona, owner)
    overrides = SamplingOverrides(
        temperature=body.temperature, top_p=body.top_p, max_tokens=body.max_tokens,
        seed=body.seed, stop=(body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ()) or None,
        presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
    )  # fmt: skip
    include_usage = bool(body.stream and body.stream_options and body.stream_options.include_usage)
    # Not streamed, the reply is sent whole once it has ended: one cut off before (the client timed out) was never
    # read, and the engine keeps it out of later prompts (the SDK's retry then reads the message once).
    events = state.runtime.engine.reply(
        conversation, persona, user_text, overrides=overrides, source="api",
        delivery="streamed" if body.stream else "whole",
    )  # fmt: skip
    return ChatReply(
        state, events, persona.id, conversation.id, stream=body.stream, include_usage=include_usage
    )


MAX_REPLY_CHARS = 4 * 32768
"""The longest assistant message a sent history may hold: a reply of the most tokens a request may ask for (32,768) at
four characters a token. A stateless client sends the persona's replies back, and they may be longer than a viewer's
message may be."""


def _check_lengths(state: GatewayState, body: ChatCompletionRequest, headers: Mapping[str, str]) -> None:
    """Every message that will be stored is held to a limit: the new one and, without a session, the history sent
    along (stored as the session's turns, before the reply: checked first, so a refusal stores none). A viewer's
    message to ``max_input_chars``; a reply to :data:`MAX_REPLY_CHARS` (or ``max_input_chars`` if that is more)."""
    limit = state.settings.max_input_chars
    reply_limit = max(limit, MAX_REPLY_CHARS)
    stored = body.messages[-1:] if names_session(headers, body.user) else body.messages
    for index, message in enumerate(stored, start=len(body.messages) - len(stored)):
        most = limit if message.role == "user" else reply_limit if message.role == "assistant" else None
        if most is not None and len(message.text) > most:
            which = "the message" if index == len(body.messages) - 1 else f"message {index}"
            raise APIError(400, f"{which} is longer than {most} characters", param="messages",
                           code="context_length_exceeded")  # fmt: skip


async def _conversation(
    state: GatewayState, body: ChatCompletionRequest, headers: Mapping[str, str], persona: Persona, owner: str
) -> Conversation:
    explicit = explicit_session_id(headers)
    named = viewer_id_of(headers)
    viewer_header = named or explicit or (end_user_id(body.user) if body.user else None)
    viewer = api_viewer_id(owner, viewer_header) if viewer_header else None
    if explicit:
        found = await state.store.open_conversation(explicit)
        return await _named_session(state, explicit, found, persona, owner, SESSION_HEADER, viewer, named)
    if body.user:
        session_id, found = await _user_session(state.store, owner, persona.id, body.user)
        return await _named_session(state, session_id, found, persona, owner, "user", viewer, named)
    # Stateless, OpenAI-style: the client sends the history; it is stored as a new session all the same.
    store = state.store
    record = await store.create_session(
        persona.id, owner=owner, platform=API_PLATFORM, user_name=state.settings.user_name, viewer_id=viewer
    )
    try:
        conversation = await store.load_conversation(record.id)
        for message in body.messages[:-1]:
            if message.role in ("user", "assistant") and message.text.strip():
                turn = Turn(message.role, message.text)
                conversation.add(turn)
                await store.save_turn(conversation, turn)
    except Exception as exc:
        raise InSession(exc, record.id) from exc  # what was stored of the history is the client's to delete
    return conversation


Found = tuple[SessionRecord, Conversation] | None
"""A session as :meth:`Store.open_conversation` finds it (``None``: not stored yet)."""


async def _user_session(store: Store, owner: str, persona_id: str, user: str) -> tuple[str, Found]:
    """The session the ``user`` field names (:func:`user_session_id`), and what is stored of it.

    One made before sessions were per key and persona, named by :func:`end_user_id` alone, is continued while it is
    this key's and this persona's, so that an upgrade orphans no conversation; any other (another key's "alice",
    or this one's with another persona) is left alone. It is looked for only when the new one is not stored yet: a
    session made since costs no extra read."""
    session_id = user_session_id(owner, persona_id, user)
    found = await store.open_conversation(session_id)
    if found is not None:
        return session_id, found
    earlier_id = end_user_id(user)
    earlier = await store.open_conversation(earlier_id)
    if earlier is not None and earlier[0].owner == owner and earlier[0].persona_id == persona_id:
        return earlier_id, earlier
    return session_id, None


async def _named_session(
    state: GatewayState, session_id: str, found: Found, persona: Persona, owner: str, param: str,
    viewer: str | None, named: str | None,
) -> Conversation:  # fmt: skip
    """The session ``session_id`` (named by ``param``: the header or ``user``), made if it is not ``found``;
    ``viewer`` is the request's, ``named`` when an ``X-Viewer-Id`` header named it."""
    store = state.store
    if found is None:
        record = await store.create_session(persona.id, owner=owner, platform=API_PLATFORM, session_id=session_id,
                                            user_name=state.settings.user_name, viewer_id=viewer)  # fmt: skip
        _check_session(record, owner, persona, param)
        conversation = await store.load_conversation(session_id)
    else:
        record, conversation = found
        _check_session(record, owner, persona, param)
    if conversation.viewer_id is None and viewer is not None:
        # A session stored without a viewer (a stateless request's) takes this one on, in the database: the
        # refusal below and "forget me" must hold after a restart too, and a concurrent request may win it first.
        conversation.viewer_id = await store.take_viewer(session_id, viewer)
    if named and conversation.viewer_id and conversation.viewer_id != viewer:
        # What the persona remembers is the session's viewer's: taking another's message as theirs would mix
        # two people's memories (recall and learning both go by the session's viewer).
        mismatch = APIError(409, f"session {session_id!r} is another viewer's; use a session of its own for "
                            f"{VIEWER_HEADER} {named!r}", param=VIEWER_HEADER, code="session_viewer_mismatch")  # fmt: skip
        raise InSession(mismatch, session_id)
    return conversation


def _check_session(record: SessionRecord, owner: str, persona: Persona, param: str) -> None:
    """A session the client names must be its key's and the persona's (a ``user`` one is, unless another key made
    one under its id with ``X-Session-Id``)."""
    if record.owner != owner:
        raise APIError(
            404, f"no session {record.id!r} for this API key", param=param, code="session_not_found"
        )
    if record.persona_id != persona.id:
        raise APIError(400, f"session {record.id!r} belongs to persona {record.persona_id!r}", param="model")


class _ClientGone(Exception):
    """The client disconnected; the reply was cancelled."""


class ChatReply(Response):
    """Runs one reply and writes it as SSE chunks (``stream``) or as one chat completion (raw ASGI)."""

    media_type = "text/event-stream"

    def __init__(
        self,
        state: GatewayState,
        events: AsyncGenerator[EngineEvent, None],
        model: str,
        session_id: str,
        *,
        stream: bool,
        include_usage: bool,
    ) -> None:
        self.state = state
        self.events = events
        self.model = model
        self.session_id = session_id
        self.stream = stream
        self.include_usage = include_usage
        self.started = time.perf_counter()
        self.created = int(time.time())
        self.first_token: float | None = None
        self.status_code = 200
        self.background = None
        self._prefix = b""
        self._counted = False
        self.client_gone = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watcher = Watcher(self, receive, send)
        try:
            try:
                head = await self._read_head()
            except _ClientGone:
                await _client_closed(scope, receive, send)
                return
            # A bug too: answered here, naming the session (the routes' own handlers would not).
            except Exception as exc:
                await self._fail(exc, watcher, scope, receive, send)
                return
            if self.stream:
                await self._stream(head, send, watcher)
            else:
                await self._whole(head, scope, receive, send, watcher)
        except asyncio.CancelledError:
            # The watcher saw the client leave just as the reply ended (the reply is stored): nobody to tell.
            if not self._took_back_cancel():
                raise
        finally:
            watcher.stop()

    # --- phases -----------------------------------------------------------------------------------------

    async def _read_head(self) -> list[EngineEvent]:
        """Events up to the first text (or the end): errors here still become an HTTP status."""
        head: list[EngineEvent] = []
        try:
            async for event in self.events:
                head.append(event)
                if event.kind != "started":
                    break
        except asyncio.CancelledError:
            await self._cancelled()
        except BaseException:
            await self.events.aclose()
            raise
        return head

    async def _stream(self, head: list[EngineEvent], send: Send, watcher: Watcher) -> None:
        metrics = self.state.metrics
        metrics.active_streams.inc()
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
            (b"x-session-id", self.session_id.encode()),
        ]  # fmt: skip
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            watcher.streaming = True
            pending = b""
            try:
                await watcher.write(
                    b"".join(self._sse(event) for event in head)
                )  # the first text goes out now
                async for event in self.events:
                    if isinstance(event, ReplyFinished) or isinstance(event, ReplyDelta) and event.last:
                        pending += self._sse(event)  # the reply's last text and chunk go out with [DONE]
                    else:
                        await watcher.write(self._sse(event))
            except asyncio.CancelledError:
                await self._cancelled()
            except VStreamerError as exc:
                # Mid-stream failure: the partial reply is stored as failed already; tell the client, end cleanly.
                self._count_failure(exc)
                _, type_ = status_for(exc)
                pending += b"data: " + orjson.dumps(error_body(str(exc), type_, code=exc.code)) + b"\n\n"
            except Exception as exc:  # noqa: BLE001 - a bug: logged, and the stream still ends as the API says
                logger.exception("unexpected error in a streamed reply", exc_info=exc)
                self.state.metrics.errors.labels("internal_error").inc()
                self._count_reply("failed")
                pending += (
                    b"data: " + orjson.dumps(error_body("internal server error", "server_error")) + b"\n\n"
                )
            watcher.stop()
            await send(
                {"type": "http.response.body", "body": pending + b"data: [DONE]\n\n", "more_body": False}
            )
        except (_ClientGone, OSError):
            self._count_reply("interrupted")  # the client left (an OSError: between two writes); closed below
        finally:
            watcher.stop()
            await self.events.aclose()
            metrics.active_streams.dec()

    async def _whole(
        self, head: list[EngineEvent], scope: Scope, receive: Receive, send: Send, watcher: Watcher
    ) -> None:
        parts: list[str] = []
        finished: Turn | None = None
        reply_id = ""
        if any(isinstance(event, ReplyDelta) for event in head):
            self._observe_delta()  # the first text is here now: the reply's end is not its first token's time
        try:
            async for event in self.events:
                head.append(event)
        except asyncio.CancelledError:
            try:
                await self._cancelled()
            except _ClientGone:
                # Nobody reads it: it is the request's status, for the metrics.
                await _client_closed(scope, receive, send)
                return
        except Exception as exc:  # noqa: BLE001 - a bug too: answered in OpenAI's schema (logged), with the session
            await self._fail(exc, watcher, scope, receive, send)
            return
        finally:
            watcher.stop()
            await self.events.aclose()
        for event in head:
            if event.kind == "started":
                reply_id = f"chatcmpl-{event.turn.id}"
            elif isinstance(event, ReplyDelta):
                self._observe_delta()
                parts.append(event.text)
            elif isinstance(event, ReplyFinished):
                finished = event.turn
        assert finished is not None
        self._finish(finished)
        body = {
            "id": reply_id, "object": "chat.completion", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(parts)},
                         "finish_reason": finished.finish_reason or "stop"}],
            "usage": _usage(finished),
        }  # fmt: skip
        payload = orjson.dumps(body)
        headers = [
            (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
            (b"x-session-id", self.session_id.encode()),
        ]  # fmt: skip
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    # --- pieces -----------------------------------------------------------------------------------------

    async def _cancelled(self) -> None:
        """The watcher cancelled us because the client left: unwind the reply (which stops the upstream)."""
        self._count_reply("interrupted")
        await self.events.aclose()
        if self._took_back_cancel():
            raise _ClientGone
        raise asyncio.CancelledError

    def _took_back_cancel(self) -> bool:
        """Whether the task's cancellation is the watcher's, for a client that left; if so, it is taken back."""
        task = asyncio.current_task()
        if task is None or not self.client_gone or not task.cancelling():
            return False
        task.uncancel()
        return True

    def _sse(self, event: EngineEvent) -> bytes:
        if event.kind == "started":
            reply_id = f"chatcmpl-{event.turn.id}"
            self._prefix = (
                b'data: {"id":' + orjson.dumps(reply_id) + b',"object":"chat.completion.chunk","created":'
                + str(self.created).encode() + b',"model":' + orjson.dumps(self.model)
                + b',"choices":[{"index":0,"delta":'
            )  # fmt: skip
            return self._prefix + b'{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
        if isinstance(event, ReplyDelta):
            self._observe_delta()
            return self._prefix + orjson.dumps({"content": event.text}) + b',"finish_reason":null}]}\n\n'
        turn = event.turn
        self._finish(turn)
        reason = orjson.dumps(turn.finish_reason or "stop")
        out = self._prefix + b'{},"finish_reason":' + reason + b"}]}\n\n"
        usage = _usage(turn)
        if self.include_usage and usage is not None:
            body = {"id": f"chatcmpl-{turn.id}", "object": "chat.completion.chunk", "created": self.created,
                    "model": self.model, "choices": [], "usage": usage}  # fmt: skip
            out += b"data: " + orjson.dumps(body) + b"\n\n"
        return out

    def _observe_delta(self) -> None:
        if self.first_token is None:
            self.first_token = time.perf_counter()
            # Observed on the loop's next turn: the histogram's locks and buckets are not on the first text's way out.
            asyncio.get_running_loop().call_soon(
                self.state.metrics.ttft.observe, self.first_token - self.started
            )

    def _finish(self, turn: Turn) -> None:
        metrics = self.state.metrics
        ended = time.perf_counter()
        metrics.upstream.observe(ended - self.started)
        self._count_reply(turn.status)
        tokens = turn.usage.completion_tokens if turn.usage else 0
        if self.first_token is not None and tokens > 1 and ended > self.first_token:
            metrics.tokens_per_second.observe(tokens / (ended - self.first_token))

    def _count_failure(self, exc: Exception) -> None:
        self.state.metrics.errors.labels(
            exc.code if isinstance(exc, VStreamerError) else "internal_error"
        ).inc()
        self._count_reply("failed")

    def _count_reply(self, status: str) -> None:
        """Count the reply by how it ended, once (the engine stores it so: failed, interrupted, or as it finished)."""
        if not self._counted:
            self._counted = True
            metrics = self.state.metrics
            metrics.replies.labels(status).inc()
            # Here too, not only when /metrics is read: with several workers, it reads the others' last values.
            metrics.drift_events.set(self.state.runtime.engine.stats.drift_events)

    async def _fail(
        self, exc: Exception, watcher: Watcher, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """A failure before the response started: an HTTP error in OpenAI's schema, naming the session (a stateless
        request's history is stored by then: the client may read or delete it)."""
        watcher.stop()
        self._count_failure(exc)
        await error_response(exc, self.session_id)(scope, receive, send)


async def _client_closed(scope: Scope, receive: Receive, send: Send) -> None:
    """The answer to a client that left before its reply began (499, as nginx logs it)."""
    gone = error_body("client closed the request", "invalid_request_error")
    with contextlib.suppress(OSError):
        await JSONResponse(gone, CLIENT_CLOSED)(scope, receive, send)


WATCH_AFTER_S = 0.005
"""The watcher starts this long after the request: a reply that ends sooner (a refusal, an error, a burst) never
needs the task, and one that takes longer still has its client's leaving noticed within a few milliseconds (uvicorn
drops what is sent to a closed connection meanwhile)."""


class Watcher:
    """One task per request (from :data:`WATCH_AFTER_S` on): notices the client leaving (cancelling the reply) and
    keeps an idle stream alive."""

    def __init__(self, reply: ChatReply, receive: Receive, send: Send) -> None:
        self.reply = reply
        self.receive = receive
        self.send = send
        self.streaming = False
        self.sending = False
        self.last_send = time.monotonic()
        self.main = asyncio.current_task()
        self.task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            WATCH_AFTER_S, self._start
        )

    def _start(self) -> None:
        self._timer = None
        self.task = asyncio.get_running_loop().create_task(self._watch())

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.task is not None:
            self.task.cancel()
            self.task = None

    async def _watch(self) -> None:
        interval = self.reply.state.settings.sse_keepalive_s
        while True:
            # Woken when the stream has been idle for an interval (not an interval after the last wake-up, which let
            # an idle stream go nearly two without a comment), and no more often than a tenth of one.
            wait = (
                max(interval - (time.monotonic() - self.last_send), interval / 10)
                if self.streaming
                else interval
            )
            try:
                async with asyncio.timeout(wait):
                    message: Message = await self.receive()
            except TimeoutError:
                await self._keep_alive(interval)
                continue
            if message["type"] == "http.disconnect":
                self.reply.client_gone = True
                if self.main is not None:
                    self.main.cancel()
                return

    async def write(self, data: bytes) -> None:
        """Send a piece of the streamed body (the keep-alive counts its idle time from here)."""
        self.sending = True
        try:
            await self.send({"type": "http.response.body", "body": data, "more_body": True})
        finally:
            self.sending = False
            self.last_send = time.monotonic()

    async def _keep_alive(self, interval: float) -> None:
        if not self.streaming or self.sending or time.monotonic() - self.last_send < interval * 0.9:
            return
        self.last_send = time.monotonic()
        with contextlib.suppress(OSError):
            await self.send({"type": "http.response.body", "body": b": keep-alive\n\n", "more_body": True})


def _usage(turn: Turn) -> dict[str, int] | None:
    if turn.usage is None:
        return None
    u = turn.usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
    }

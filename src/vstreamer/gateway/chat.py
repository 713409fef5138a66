"""``POST /v1/chat/completions``: the persona answers, streamed (SSE) or whole, OpenAI-compatible."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from vstreamer.engine import Conversation, EngineEvent, ReplyDelta, ReplyFinished, SamplingOverrides, Turn
from vstreamer.errors import BackendError, VStreamerError
from vstreamer.gateway.errors import APIError, status_for
from vstreamer.gateway.schemas import ChatCompletionRequest, error_body
from vstreamer.gateway.state import GatewayState, gateway_state, principal
from vstreamer.persona import Persona

router = APIRouter()
SESSION_HEADER = "X-Session-Id"
VIEWER_HEADER = "X-Viewer-Id"
API_PLATFORM = "api"


def api_viewer_id(owner: str, viewer: str) -> str:
    """Viewers of the API are scoped to the API key: two keys' "alice" are two people."""
    return f"{owner}:{viewer}"


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, owner: str = Depends(principal)
) -> JSONResponse | StreamingResponse:
    state = gateway_state(request)
    persona = await state.catalog.get(body.model)
    user_text = body.messages[-1].text
    if len(user_text) > state.settings.max_input_chars:
        raise APIError(400, f"the message is longer than {state.settings.max_input_chars} characters",
                       param="messages", code="context_length_exceeded")  # fmt: skip
    conversation = await _conversation(state, body, request, persona, owner)
    overrides = SamplingOverrides(
        temperature=body.temperature, top_p=body.top_p, max_tokens=body.max_tokens or body.max_completion_tokens,
        seed=body.seed,
    )  # fmt: skip
    started = time.perf_counter()
    events = state.runtime.engine.reply(conversation, persona, user_text, overrides=overrides, source="api")
    # Read up to the first text before answering, so failures before it become proper HTTP errors;
    # a client that leaves meanwhile (its request queued upstream, say) cancels the generation at once.
    head: list[EngineEvent] = []
    reading = asyncio.ensure_future(_read_head(events, head))
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait({reading, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        client_left = not reading.done()
        if client_left:
            reading.cancel()
            await asyncio.wait({reading})
            await events.aclose()
    if client_left:
        return JSONResponse(error_body("client closed the request", "invalid_request_error"), 499)
    try:
        reading.result()
    except VStreamerError as exc:
        await events.aclose()
        _count_failure(state, exc)
        raise
    headers = {SESSION_HEADER: conversation.id}
    reply = ReplyMeta(persona.id, started)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        stream = _sse(state, events, head, reply, include_usage)
        return StreamingResponse(
            stream, media_type="text/event-stream", headers=headers | {"Cache-Control": "no-cache"}
        )
    return JSONResponse(await _whole(state, events, head, reply), headers=headers)


async def _read_head(events: AsyncGenerator[EngineEvent, None], head: list[EngineEvent]) -> None:
    async for event in events:
        head.append(event)
        if event.kind != "started":
            return


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the request body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class ReplyMeta:
    """Identity and timing of one reply."""

    def __init__(self, model: str, started: float) -> None:
        self.model = model
        self.started = started
        self.created = int(time.time())
        self.id = ""
        self.first_token: float | None = None

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> str:
        payload = {
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }  # fmt: skip
        return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def _conversation(
    state: GatewayState, body: ChatCompletionRequest, request: Request, persona: Persona, owner: str
) -> Conversation:
    session_id = request.headers.get(SESSION_HEADER) or body.user
    viewer_header = request.headers.get(VIEWER_HEADER, "").strip()[:100] or session_id
    viewer = api_viewer_id(owner, viewer_header) if viewer_header else None
    store = state.store
    if session_id:
        record = await store.get_session(session_id)
        if record is None:
            await store.create_session(persona.id, owner=owner, platform=API_PLATFORM, session_id=session_id,
                                       user_name=state.settings.user_name, viewer_id=viewer)  # fmt: skip
        elif record.owner != owner:
            raise APIError(
                404, f"no session {session_id!r} for this API key", param="user", code="session_not_found"
            )
        elif record.persona_id != persona.id:
            raise APIError(
                400, f"session {session_id!r} belongs to persona {record.persona_id!r}", param="model"
            )
        conversation = await store.load_conversation(session_id)
        conversation.viewer_id = conversation.viewer_id or viewer
        return conversation
    # Stateless, OpenAI-style: the client sends the history; it is stored as a new session all the same.
    record = await store.create_session(
        persona.id, owner=owner, platform=API_PLATFORM, user_name=state.settings.user_name, viewer_id=viewer
    )
    conversation = await store.load_conversation(record.id)
    for message in body.messages[:-1]:
        if message.role in ("user", "assistant") and message.text.strip():
            turn = Turn(message.role, message.text)
            conversation.turns.append(turn)
            await store.save_turn(conversation, turn)
    return conversation


async def _events(
    head: list[EngineEvent], events: AsyncGenerator[EngineEvent, None]
) -> AsyncGenerator[EngineEvent, None]:
    for event in head:
        yield event
    async for event in events:
        yield event


def _observe_delta(state: GatewayState, reply: ReplyMeta) -> None:
    if reply.first_token is None:
        reply.first_token = time.perf_counter()
        state.metrics.ttft.observe(reply.first_token - reply.started)


def _finish(state: GatewayState, reply: ReplyMeta, turn: Turn) -> None:
    ended = time.perf_counter()
    state.metrics.upstream.observe(ended - reply.started)
    state.metrics.replies.labels(turn.status).inc()
    tokens = turn.usage.completion_tokens if turn.usage else 0
    if reply.first_token is not None and tokens > 1 and ended > reply.first_token:
        state.metrics.tokens_per_second.observe(tokens / (ended - reply.first_token))


def _count_failure(state: GatewayState, exc: VStreamerError) -> None:
    state.metrics.errors.labels(exc.code).inc()


def _usage(turn: Turn) -> dict[str, int] | None:
    if turn.usage is None:
        return None
    u = turn.usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
    }


async def _whole(
    state: GatewayState, events: AsyncGenerator[EngineEvent, None], head: list[EngineEvent], reply: ReplyMeta
) -> dict[str, Any]:
    parts: list[str] = []
    finished: Turn | None = None
    try:
        async for event in _events(head, events):
            if event.kind == "started":
                reply.id = f"chatcmpl-{event.turn.id}"
            elif isinstance(event, ReplyDelta):
                _observe_delta(state, reply)
                parts.append(event.text)
            elif isinstance(event, ReplyFinished):
                finished = event.turn
    except VStreamerError as exc:
        _count_failure(state, exc)
        raise
    finally:
        await events.aclose()
    assert finished is not None
    _finish(state, reply, finished)
    return {
        "id": reply.id, "object": "chat.completion", "created": reply.created, "model": reply.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(parts)},
                     "finish_reason": finished.finish_reason or "stop"}],
        "usage": _usage(finished),
    }  # fmt: skip


async def _sse(
    state: GatewayState,
    events: AsyncGenerator[EngineEvent, None],
    head: list[EngineEvent],
    reply: ReplyMeta,
    include_usage: bool,
) -> AsyncIterator[str]:
    state.metrics.active_streams.inc()
    source = _events(head, events)
    pending: asyncio.Future[EngineEvent] | None = None
    try:
        while True:
            pending = pending or asyncio.ensure_future(anext(source))
            done, _ = await asyncio.wait({pending}, timeout=state.settings.sse_keepalive_s)
            if not done:
                yield ": keep-alive\n\n"
                continue
            try:
                event = pending.result()
            except StopAsyncIteration:
                break
            pending = None
            if event.kind == "started":
                reply.id = f"chatcmpl-{event.turn.id}"
                yield reply.chunk({"role": "assistant", "content": ""})
            elif isinstance(event, ReplyDelta):
                _observe_delta(state, reply)
                yield reply.chunk({"content": event.text})
            elif isinstance(event, ReplyFinished):
                _finish(state, reply, event.turn)
                yield reply.chunk({}, event.turn.finish_reason or "stop")
                usage = _usage(event.turn)
                if include_usage and usage is not None:
                    payload = {"id": reply.id, "object": "chat.completion.chunk", "created": reply.created,
                               "model": reply.model, "choices": [], "usage": usage}  # fmt: skip
                    yield f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"
    except BackendError as exc:
        # Mid-stream failure: the partial reply is already stored as failed; tell the client and end cleanly.
        _count_failure(state, exc)
        _, type_ = status_for(exc)
        yield f"data: {json.dumps(error_body(str(exc), type_, code=exc.code), ensure_ascii=False)}\n\n"
    finally:
        if pending is not None and not pending.done():
            # Client gone: cancelling the pending read unwinds the engine, which closes the upstream stream.
            pending.cancel()
            await asyncio.wait({pending})
        await source.aclose()
        await events.aclose()
        state.metrics.active_streams.dec()
    yield "data: [DONE]\n\n"

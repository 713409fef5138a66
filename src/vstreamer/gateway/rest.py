"""Product REST routes: models, personas, sessions, health, metrics."""

from __future__ import annotations

from typing import Annotated, Any, TypeAlias

from fastapi import APIRouter, Depends, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from vstreamer.engine import Fact, Turn, ViewerKey
from vstreamer.errors import StoreError
from vstreamer.gateway.chat import API_PLATFORM, api_viewer_id
from vstreamer.gateway.errors import APIError
from vstreamer.gateway.readiness import public
from vstreamer.gateway.schemas import PlatformName, Text
from vstreamer.gateway.state import gateway_state, principal
from vstreamer.persona import Persona
from vstreamer.persona.limits import MAX_FILE_BYTES
from vstreamer.store import SessionRecord

router = APIRouter()
StoredId: TypeAlias = Text
"""An id or name from a path or a query: text the database can hold (a NUL in it is a 400, not a database error)."""


def _persona_summary(persona: Persona) -> dict[str, Any]:
    return {
        "id": persona.id, "name": persona.name, "language": persona.language, "tags": persona.tags,
        "description": persona.render(persona.description, "{{user}}")[:500], "greetings": persona.greetings(),
        "has_avatar": persona.avatar_png is not None, "source_format": persona.source_format,
    }  # fmt: skip


def _session(record: SessionRecord) -> dict[str, Any]:
    return {
        "id": record.id, "persona_id": record.persona_id, "platform": record.platform, "title": record.title,
        "created_at": record.created_at.isoformat(), "updated_at": record.updated_at.isoformat(),
    }  # fmt: skip


def _message(turn: Turn) -> dict[str, Any]:
    return {
        "id": turn.id, "role": turn.role, "content": turn.content, "status": turn.status,
        # Why it failed or stopped (resent, undelivered, backend_unavailable...); not the message: it may quote the
        # upstream.
        "error_code": turn.error_code, "created_at": turn.created_at, "first_token_ms": turn.first_token_ms,
        "duration_ms": turn.duration_ms,
        "usage": None if turn.usage is None else {"prompt_tokens": turn.usage.prompt_tokens,
                                                   "completion_tokens": turn.usage.completion_tokens},
    }  # fmt: skip


def _model(persona: Persona) -> dict[str, Any]:
    return {"id": persona.id, "object": "model", "created": 0, "owned_by": "vstreamer", "name": persona.name}


@router.get("/v1/models")
async def list_models(request: Request, _: str = Depends(principal)) -> dict[str, Any]:
    return {"object": "list", "data": [_model(p) for p in await gateway_state(request).catalog.list()]}


@router.get("/v1/models/{model_id}")
async def retrieve_model(model_id: StoredId, request: Request, _: str = Depends(principal)) -> dict[str, Any]:
    """One entry of ``/v1/models`` (OpenAI's ``client.models.retrieve``); a persona's name finds it as in chat."""
    return _model(await gateway_state(request).catalog.model(model_id))


@router.get("/api/personas")
async def list_personas(request: Request, _: str = Depends(principal)) -> dict[str, Any]:
    return {"data": [_persona_summary(p) for p in await gateway_state(request).catalog.list()]}


@router.get("/api/personas/{persona_id}")
async def get_persona(persona_id: str, request: Request, _: str = Depends(principal)) -> dict[str, Any]:
    return _persona_summary(await gateway_state(request).catalog.get(persona_id))


@router.post("/api/personas", status_code=201)
async def import_persona(
    request: Request,
    filename: str = Query(..., min_length=1, max_length=200, description="original file name, e.g. card.png"),
    replace: bool = False,
    owner: str = Depends(principal),
) -> dict[str, Any]:
    """Import a persona file sent as the raw request body (YAML/TOML/JSON card, PNG card, CHARX)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_FILE_BYTES:
        raise APIError(413, f"persona files are limited to {MAX_FILE_BYTES // 2**20} MiB")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_FILE_BYTES:
            raise APIError(413, f"persona files are limited to {MAX_FILE_BYTES // 2**20} MiB")
        chunks.append(chunk)
    persona = await gateway_state(request).catalog.import_bytes(b"".join(chunks), filename, owner=owner,
                                                                 replace=replace)  # fmt: skip
    return _persona_summary(persona)


@router.delete("/api/personas/{persona_id}", status_code=204)
async def delete_persona(persona_id: str, request: Request, owner: str = Depends(principal)) -> Response:
    await gateway_state(request).catalog.delete(persona_id, owner=owner)
    return Response(status_code=204)


@router.get("/api/sessions")
async def list_sessions(
    request: Request,
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=1_000_000),
    owner: str = Depends(principal),
) -> dict[str, Any]:
    records = await gateway_state(request).store.list_sessions(owner=owner, limit=limit, offset=offset)
    return {"data": [_session(r) for r in records]}


@router.get("/api/sessions/{session_id}/messages")
async def session_messages(
    session_id: StoredId,
    request: Request,
    limit: int = Query(1000, ge=1, le=5000),
    offset: int = Query(0, ge=0, le=10_000_000),
    owner: str = Depends(principal),
) -> dict[str, Any]:
    store = gateway_state(request).store
    if await store.get_session(session_id, owner=owner) is None:
        raise APIError(404, f"no session {session_id!r}", code="session_not_found")
    return {"data": [_message(t) for t in await store.list_messages(session_id, limit=limit, offset=offset)]}


@router.delete("/api/sessions/{session_id}", status_code=204)
async def delete_session(session_id: StoredId, request: Request, owner: str = Depends(principal)) -> Response:
    if not await gateway_state(request).store.delete_session(session_id, owner=owner):
        raise APIError(404, f"no session {session_id!r}", code="session_not_found")
    return Response(status_code=204)


def _viewer(platform: str, user_id: str, owner: str) -> ViewerKey:
    """API viewers live under their key (see ``api_viewer_id``); live-platform viewers are the operator's."""
    if platform == API_PLATFORM:
        return ViewerKey(platform, api_viewer_id(owner, user_id))
    return ViewerKey(platform, user_id)


def _fact(fact: Fact, owner: str) -> dict[str, Any]:
    user_id = fact.viewer.user_id
    if fact.viewer.platform == API_PLATFORM:
        user_id = user_id.removeprefix(f"{owner}:")
    return {
        "id": fact.id, "platform": fact.viewer.platform, "user_id": user_id, "fact": fact.text,
        "created_at": fact.created_at, "session_id": fact.session_id, "turn_id": fact.turn_id,
    }  # fmt: skip


@router.get("/api/viewers/{platform}/{user_id}/memory")
async def viewer_memory(
    platform: StoredId, user_id: StoredId, request: Request, owner: str = Depends(principal)
) -> dict[str, Any]:
    """What is remembered about one viewer, newest first."""
    facts = await gateway_state(request).store.viewer_facts(_viewer(platform, user_id, owner), limit=1000)
    return {"data": [_fact(f, owner) for f in facts]}


@router.delete("/api/viewers/{platform}/{user_id}/memory")
async def forget_viewer(
    platform: StoredId, user_id: StoredId, request: Request, owner: str = Depends(principal)
) -> dict[str, Any]:
    """Forget everything about the viewer ("forget me"): the facts remembered about them (``deleted``, as before)
    and their conversations, which no later prompt or read may hold again: their sessions with every message and
    running summary (counted in ``sessions``, ``messages``, ``summaries``)."""
    state, viewer = gateway_state(request), _viewer(platform, user_id, owner)
    memory = state.runtime.engine.memory
    if memory is not None:  # first: an extraction in flight must not store facts after the delete
        memory.forget(viewer)
    erased = await state.store.delete_viewer_sessions(viewer)
    deleted = await state.store.delete_facts(viewer)
    return {"deleted": deleted, "sessions": erased.sessions, "messages": erased.messages,
            "summaries": erased.summaries}  # fmt: skip


@router.delete("/api/viewers/{platform}/{user_id}/memory/{fact_id}")
async def forget_fact(
    platform: StoredId,
    user_id: StoredId,
    fact_id: StoredId,
    request: Request,
    owner: str = Depends(principal),
) -> dict[str, Any]:
    deleted = await gateway_state(request).store.delete_facts(
        _viewer(platform, user_id, owner), fact_id=fact_id
    )
    if not deleted:
        raise APIError(404, f"no remembered fact {fact_id!r} for this viewer", code="fact_not_found")
    return {"deleted": deleted}


@router.get("/api/memory/export")
async def export_memory(
    request: Request,
    platform: Annotated[PlatformName | None, Query()] = None,
    owner: str = Depends(principal),
) -> dict[str, Any]:
    """Every remembered fact (live-platform viewers, and this key's API viewers), for operators."""
    facts = await gateway_state(request).store.export_facts(platform=platform)
    mine = [f for f in facts if f.viewer.platform != API_PLATFORM or f.viewer.user_id.startswith(f"{owner}:")]
    return {"data": [_fact(f, owner) for f in mine]}


# HEAD too: uptime monitors and load balancers probe with it (undocumented: it is GET without the body).
@router.get("/healthz")
@router.head("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz")
@router.head("/readyz", include_in_schema=False)
async def readyz(request: Request, response: Response) -> dict[str, Any]:
    """Readiness: the database answers and the LLM backend is healthy (details for a caller with an API key)."""
    state = gateway_state(request)
    checks = await state.readiness.checks()
    ready = all(c["ok"] for c in checks.values())
    response.status_code = 200 if ready else 503
    try:
        await state.auth(request.headers)
    except (APIError, StoreError):  # no key, a wrong one, or none that can be checked with the database down
        checks = public(checks)
    return {"status": "ready" if ready else "not ready", "checks": checks}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    state = gateway_state(request)
    state.metrics.drift_events.set(state.runtime.engine.stats.drift_events)
    return Response(generate_latest(state.metrics.exposed()), media_type=CONTENT_TYPE_LATEST)

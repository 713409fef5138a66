"""The FastAPI application: OpenAI-compatible chat completions plus the product's REST API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from vstreamer.engine import drift
from vstreamer.gateway import chat, errors, rest
from vstreamer.gateway.auth import Authenticator
from vstreamer.gateway.catalog import PersonaCatalog
from vstreamer.gateway.chat import CHAT_PATH
from vstreamer.gateway.hot_route import ChatRoute
from vstreamer.gateway.local_only import LocalOnly
from vstreamer.gateway.metrics import GatewayMetrics, count_request
from vstreamer.gateway.readiness import Readiness
from vstreamer.gateway.state import GatewayState
from vstreamer.runtime import Runtime
from vstreamer.safety import stream_guard


class RequestCounter:
    """Counts requests by route and status (plain ASGI: no buffering of streamed bodies)."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await count_request(self.app, scope, receive, send, self.metrics)


class GatewayApp(FastAPI):
    """The FastAPI app, with its busiest route (``POST /v1/chat/completions``) served before the framework.

    Middleware belongs in :func:`create_app`, which knows the route: one added to the returned app later would not
    see chat requests. ``local_only`` (set with auth off) refuses other sites' pages and other host names before
    either route sees the request, counted as other answers are."""

    hot_route: ASGIApp | None = None
    local_only: LocalOnly | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.local_only is not None and scope["type"] == "http":
            refusal = self.local_only.refusal(scope)
            if refusal is not None:
                await self._refuse(refusal, scope, receive, send)
                return
        hot = self.hot_route
        if (
            hot is not None
            and scope["type"] == "http"
            and scope["path"] == CHAT_PATH
            and scope["method"] == "POST"
        ):
            await hot(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    async def _refuse(self, refusal: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer with ``refusal``, counted as the request counter (which it never reaches) counts every other
        answer, so that a page or a rebound name calling in shows on ``/metrics``: by its status, under the route
        ``unmatched`` (it was refused before any routing; its path, the caller's to choose, is no label)."""
        state: GatewayState = self.state.gateway
        await count_request(refusal, scope, receive, send, state.metrics)


def create_app(runtime: Runtime, *, close_runtime: bool = False) -> GatewayApp:
    """Build the app over an opened runtime (its store is required)."""
    if runtime.store is None:
        raise ValueError("the gateway needs a runtime with a store (use open_runtime)")
    settings = runtime.settings
    state = GatewayState(
        runtime=runtime,
        store=runtime.store,
        catalog=PersonaCatalog(runtime.personas, runtime.store),
        metrics=GatewayMetrics(),
        auth=Authenticator(runtime.store, enabled=settings.auth),
        readiness=Readiness(runtime.store, runtime.backend),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await state.catalog.load()
        await asyncio.to_thread(drift.warm_up)
        if runtime.engine.safety is not None:
            await asyncio.to_thread(stream_guard.warm_up, runtime.engine.safety.compiled)
        yield
        await state.catalog.aclose()
        if close_runtime:
            await runtime.aclose()

    app = GatewayApp(title="vstreamer", version="0.1.0", lifespan=lifespan,
                     summary="OpenAI-compatible persona gateway of the vstreamer virtual streamer")  # fmt: skip
    app.state.gateway = state
    errors.install(app)
    app.include_router(chat.router)
    app.include_router(rest.router)
    cors = None
    if settings.cors_origins:
        cors_options = {
            "allow_origins": settings.cors_origins, "allow_methods": ["*"], "allow_headers": ["*"],
            "expose_headers": [chat.SESSION_HEADER],
        }  # fmt: skip
        app.add_middleware(CORSMiddleware, **cors_options)
        cors = partial(CORSMiddleware, **cors_options)

    app.add_middleware(RequestCounter, metrics=state.metrics)
    route = next(r for r in chat.router.routes if getattr(r, "path", None) == CHAT_PATH)
    app.hot_route = ChatRoute(state, fallback=partial(FastAPI.__call__, app), route=route, cors=cors)
    if not settings.auth:
        app.local_only = LocalOnly(settings.cors_origins)
    return app

"""The FastAPI application: OpenAI-compatible chat completions plus the product's REST API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware

from vstreamer.gateway import chat, errors, rest
from vstreamer.gateway.auth import Authenticator
from vstreamer.gateway.catalog import PersonaCatalog
from vstreamer.gateway.metrics import GatewayMetrics
from vstreamer.gateway.state import GatewayState
from vstreamer.runtime import Runtime


def create_app(runtime: Runtime, *, close_runtime: bool = False) -> FastAPI:
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
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await state.catalog.load()
        yield
        if close_runtime:
            await runtime.aclose()

    app = FastAPI(title="vstreamer", version="0.1.0", lifespan=lifespan,
                  summary="OpenAI-compatible persona gateway of the vstreamer virtual streamer")  # fmt: skip
    app.state.gateway = state
    errors.install(app)
    app.include_router(chat.router)
    app.include_router(rest.router)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"], allow_headers=["*"],
            expose_headers=[chat.SESSION_HEADER],
        )  # fmt: skip

    @app.middleware("http")
    async def count_requests(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        state.metrics.requests.labels(path, str(response.status_code)).inc()
        return response

    return app

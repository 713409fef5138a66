"""Every error the gateway returns, in OpenAI's schema; the one place errors become HTTP statuses."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from vstreamer.errors import (
    BackendError,
    BackendResponseError,
    BackendTimeout,
    BackendUnavailable,
    ContextBudgetError,
    ModerationError,
    PersonaError,
    PersonaNotFound,
    StoreError,
    VStreamerError,
)
from vstreamer.gateway.schemas import error_body

logger = logging.getLogger(__name__)

_STATUS: list[tuple[type[VStreamerError], int, str]] = [
    (PersonaNotFound, 404, "invalid_request_error"),
    (PersonaError, 400, "invalid_request_error"),
    (ContextBudgetError, 400, "invalid_request_error"),
    (ModerationError, 400, "invalid_request_error"),
    (BackendTimeout, 504, "upstream_error"),
    (BackendUnavailable, 503, "upstream_error"),
    (BackendError, 502, "upstream_error"),
    (StoreError, 503, "server_error"),
]


class APIError(Exception):
    """An error raised by a route, already in API terms."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.type, self.param, self.code = status, type_, param, code


UPSTREAM_REFUSALS = frozenset({400, 413, 422})
"""What the LLM server says of a request it refuses as such (a ``max_tokens`` over its context, say): the client's
request is what to change, so it is told 400 with the server's reason, not a 502."""


def status_for(exc: VStreamerError) -> tuple[int, str]:
    if isinstance(exc, BackendResponseError) and exc.status_code in UPSTREAM_REFUSALS:
        return 400, "invalid_request_error"
    for kind, status, type_ in _STATUS:
        if isinstance(exc, kind):
            return status, type_
    return 500, "server_error"


def error_response(exc: BaseException) -> JSONResponse:
    if isinstance(exc, APIError):
        return JSONResponse(error_body(str(exc), exc.type, param=exc.param, code=exc.code), exc.status)
    if isinstance(exc, VStreamerError):
        status, type_ = status_for(exc)
        return JSONResponse(error_body(str(exc), type_, code=exc.code), status)
    logger.exception("unexpected error", exc_info=exc)
    return JSONResponse(error_body("internal server error", "server_error"), 500)


def _type_tag(part: object) -> bool:
    """A step of an error's location that names a union member (``str``, ``function-after[...]``), not a field."""
    return isinstance(part, str) and ("[" in part or part in {"str", "int", "float", "bool", "list", "dict"})


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(VStreamerError)
    async def _ours(_: Request, exc: VStreamerError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        # A value that fits no member of a union has an error per member: one of our own checks, if any failed,
        # says more than "should be a valid list".
        first = next(
            (e for e in errors if e.get("type") == "value_error"), errors[0] if errors else None
        ) or {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p != "body" and not _type_tag(p)]
        param = ".".join(loc) or None
        message = f"{param}: {first['msg']}" if param else str(first["msg"])
        if first.get("type") == "json_invalid":
            message = "the request body is not valid JSON"
        elif first.get("type") == "model_attributes_type" or (not loc and "dict" in str(first.get("msg"))):
            message = "the request body must be a JSON object"
        return JSONResponse(error_body(message, "invalid_request_error", param=param), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "authentication_error" if exc.status_code == 401 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), type_), exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)

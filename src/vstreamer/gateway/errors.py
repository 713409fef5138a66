"""Every error the gateway returns, in OpenAI's schema; the one place errors become HTTP statuses."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

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


def status_for(exc: VStreamerError) -> tuple[int, str]:
    # A request the LLM server refuses as such (a ``max_tokens`` over its context, say): the client's request is
    # what to change, so it is told 400 with the server's reason, not a 502.
    if isinstance(exc, BackendResponseError) and exc.refused:
        return 400, "invalid_request_error"
    for kind, status, type_ in _STATUS:
        if isinstance(exc, kind):
            return status, type_
    return 500, "server_error"


SESSION_HEADER = "X-Session-Id"
"""Names the session a chat request continued or made, in its answer: a reply's, and an error's once it had one."""


class InSession(Exception):
    """``error``, raised once the request had its session (``session_id``): its answer names the session as a reply's
    would, so that the client can find, or delete, what was stored before it (a stateless client's history)."""

    def __init__(self, error: Exception, session_id: str) -> None:
        super().__init__(str(error))
        self.error, self.session_id = error, session_id


def error_response(exc: BaseException, session_id: str | None = None) -> JSONResponse:
    """``exc`` in OpenAI's error schema, naming ``session_id`` (or an :class:`InSession`'s) in ``X-Session-Id``."""
    if isinstance(exc, InSession):
        return error_response(exc.error, exc.session_id)
    response = _error_response(exc)
    if session_id is not None:
        response.headers[SESSION_HEADER] = session_id
    return response


def _error_response(exc: BaseException) -> JSONResponse:
    if isinstance(exc, APIError):
        return JSONResponse(error_body(str(exc), exc.type, param=exc.param, code=exc.code), exc.status)
    if isinstance(exc, VStreamerError):
        status, type_ = status_for(exc)
        return JSONResponse(error_body(str(exc), type_, code=exc.code), status)
    logger.exception("unexpected error", exc_info=exc)
    return JSONResponse(error_body("internal server error", "server_error"), 500)


def _type_tag(part: object) -> bool:
    """A step of an error's location that names a union member (``str``, ``function-after[...]``), not a field."""
    return isinstance(part, str) and (
        "[" in part or part in {"str", "int", "float", "bool", "list", "dict", "constrained-str"}
    )


_SOURCES = frozenset({"body", "query", "path", "header", "cookie"})


def _field(error: Mapping[str, Any]) -> tuple[str, ...]:
    """The param an error names (``messages.0.content``, ``limit``): its location without where the value came from
    (a body, a query) and without the union members it was tried as."""
    loc = tuple(error.get("loc", ()))
    if loc and loc[0] in _SOURCES:
        loc = loc[1:]
    return tuple(str(p) for p in loc if not _type_tag(p))


def _of_union(error: Mapping[str, Any]) -> bool:
    return any(_type_tag(p) for p in error.get("loc", ()))


def _wrong_kind(error: Mapping[str, Any]) -> bool:
    """An error that says the value is not of a type (``string_type``, ``list_type``, ``model_attributes_type``)."""
    return str(error.get("type", "")).endswith("_type")


def _reported(errors: Sequence[Mapping[str, Any]]) -> tuple[Mapping[str, Any], str]:
    """The error to tell the client, with its message.

    One of our own checks, if any failed, says most. A value that fits no member of a union has an error per member:
    the member of the value's kind says what is wrong with it (a list of stops too long, not "should be a valid
    string"); a value of no member's kind is told every kind it could have been."""
    first = next((e for e in errors if e.get("type") == "value_error"), None) or errors[0]
    message = str(first["msg"]).removeprefix("Value error, ")
    if not (_of_union(first) and _wrong_kind(first)):
        return first, message
    field = _field(first)
    within = [e for e in errors if _of_union(e) and _field(e)[: len(field)] == field]
    if (kind := next((e for e in within if not _wrong_kind(e)), None)) is not None:
        return kind, str(kind["msg"])
    others = [str(e["msg"]).removeprefix("Input should be ") for e in within[1:] if _field(e) == field]
    return first, " or ".join([message, *others])


def _json_type(kind: str) -> bool:
    """Whether FastAPI reads a body of that media type as JSON (``application/json``, ``application/...+json``)."""
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


def _body_error(error: Mapping[str, Any], request: Request) -> str | None:
    """What is wrong with the body as a whole, if that is what the error says (it then names no param)."""
    if error.get("type") == "json_invalid":
        reason = (error.get("ctx") or {}).get("error")
        return "the request body is not valid JSON" + (f" ({reason})" if reason else "")
    if _field(error):
        return None
    if error.get("type") == "missing":
        return "the request body is empty: send a JSON object"
    if error.get("type") == "model_attributes_type" or "dict" in str(error.get("msg")):
        kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if kind and not _json_type(
            kind
        ):  # FastAPI reads a body of another declared type as bytes, JSON or not
            return f"the request body must be a JSON object sent as Content-Type: application/json (not {kind[:60]!r})"
        if not kind and request.headers.get("content-length", "0") not in ("", "0"):
            return "the request body must be a JSON object sent as Content-Type: application/json (none was given)"
        return "the request body must be a JSON object"
    return None


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(InSession)
    async def _in_session(_: Request, exc: InSession) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(VStreamerError)
    async def _ours(_: Request, exc: VStreamerError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if not errors:
            return JSONResponse(error_body("invalid request", "invalid_request_error"), 400)
        error, message = _reported(errors)
        whole = _body_error(error, request)
        if whole is not None:
            return JSONResponse(error_body(whole, "invalid_request_error"), 400)
        param = ".".join(_field(error)) or None
        return JSONResponse(error_body(f"{param}: {message}" if param else message, "invalid_request_error",
                                       param=param), 400)  # fmt: skip

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "authentication_error" if exc.status_code == 401 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), type_), exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)

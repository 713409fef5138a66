"""Without API keys (``--no-auth``), the gateway answers this machine's own programs, not the web pages it shows.

A page the user visits may send the gateway a "simple" request (a POST of ``text/plain``, or of no content type),
which no CORS preflight precedes: it cannot read the answer, but the write is done (a persona replaced, a message
stored in someone's session). A page whose host name its attacker then points at 127.0.0.1 (DNS rebinding) reads
every answer too, being same-origin with itself. API keys stop both: a page has none, and an ``Authorization``
header forces a preflight. Without them, a request is refused when a browser marks it as another site's (an
``Origin`` that is neither listed in ``cors_origins`` nor the gateway's own) or when it is addressed to a host name
that is not a loopback one (``localhost``, ``localhost.``, ``127.0.0.1``, ``[::1]``), as a rebound name is.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from starlette.responses import JSONResponse
from starlette.types import Scope

from vstreamer.config import is_loopback
from vstreamer.gateway.schemas import error_body


class LocalOnly:
    """Checks a request's ``Host`` and ``Origin`` headers; ``cors_origins`` are the pages allowed to call (``*``:
    any page, as the CORS middleware reads it)."""

    def __init__(self, cors_origins: Iterable[str]) -> None:
        origins = set(cors_origins)
        self.any_origin = "*" in origins
        self.origins = frozenset(origin.encode("latin-1") for origin in origins)

    def refusal(self, scope: Scope) -> JSONResponse | None:
        """The answer to a request refused, or ``None`` for one to serve. Every ``Host`` and ``Origin`` is checked,
        so a repeated header cannot hide one behind another."""
        host = b""
        origins: list[bytes] = []
        for name, value in scope["headers"]:
            name = name.lower()
            if name == b"host":
                if not _loopback_host(value):
                    return _refused(400, _HOST_REFUSED.format(_shown(value)), "host_not_allowed")
                host = value
            elif name == b"origin":
                origins.append(value)
        for origin in origins:
            # Same-origin: a page the gateway itself serves (the API docs) names the host it was loaded from.
            if not (self.any_origin or origin in self.origins or _same_origin(origin, host)):
                # "null" is a page from a file, or any site's sandboxed frame: listing it would let those in too.
                why = _NULL_REFUSED if origin == b"null" else _ORIGIN_REFUSED.format(_shown(origin))
                return _refused(403, why, "origin_not_allowed")
        return None


_HOST_REFUSED = (
    "requests addressed to {} are refused: without API keys (--no-auth) the gateway answers only at a loopback "
    "address (localhost, 127.0.0.1 or [::1]); to serve it under another name, use API keys (vstreamer keys create)"
)
_ORIGIN_REFUSED = (
    "a request from the web page at {} is refused: without API keys (--no-auth) the gateway answers only the web "
    "pages listed in cors_origins (VSTREAMER_CORS_ORIGINS='[\"https://overlay.example\"]'); add the page's origin "
    "there, or use API keys (vstreamer keys create)"
)

_NULL_REFUSED = (
    "a request from a page with no origin (Origin: null: a page opened from a file, or a sandboxed frame of any site) "
    "is refused: without API keys (--no-auth) serve the page over http://localhost and list that origin in "
    "cors_origins, or use API keys (vstreamer keys create)"
)


def _refused(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse(error_body(message, "invalid_request_error", code=code), status)


def _shown(value: bytes) -> str:
    return repr(value[:100].decode("latin-1"))


def _same_origin(origin: bytes, host: bytes) -> bool:
    return bool(host) and origin in (b"http://" + host, b"https://" + host)


@lru_cache(maxsize=64)
def _loopback_host(host: bytes) -> bool:
    """Whether a ``Host`` header names this machine: a loopback name or address, with or without a port. Cached:
    a gateway is called under one or two names, and most requests would parse the same one.

    ``localhost.`` is ``localhost`` written fully qualified, which resolvers answer themselves (RFC 6761): no one can
    point it elsewhere. An address takes no such dot (``127.0.0.1.`` is a name, not an address)."""
    text = host.decode("latin-1").lower()
    if text.startswith("["):  # an IPv6 address: [::1]:8320
        name, bracket, port = text[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            return False
        port = port[1:]
    else:
        name, _, port = text.partition(":")
    if port and not (port.isascii() and port.isdigit()):
        return False
    return is_loopback(name) or name == "localhost."

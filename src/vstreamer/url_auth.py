"""Credentials for a server's requests: written into its URL (``http://user:pass@host/v1``, a proxy's basic auth), or
an API key for its ``Authorization`` header."""

from __future__ import annotations

from base64 import b64encode
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit


@dataclass(frozen=True, slots=True)
class UrlAuth:
    url: str
    """The URL without its credentials (what errors and logs may quote)."""
    header: str
    """The ``Authorization`` value they make (basic auth, as httpx would send it)."""
    password: str
    """The password, to hide from messages."""


def url_auth(url: str) -> UrlAuth | None:
    """The credentials of ``url`` as a header, and the URL without them; ``None`` if it has none."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return None
    user, password = unquote(parts.username or ""), unquote(parts.password or "")
    return UrlAuth(
        urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])),
        "Basic " + b64encode(f"{user}:{password}".encode()).decode(),
        password,
    )


def header_key(key: str) -> str | None:
    """An API key as an HTTP header can carry it: surrounding blanks removed (a key read from a file often ends with
    a line break); ``None`` if any other character is outside visible ASCII (in a header it is illegal, or splits it:
    injection). The one rule for every user of a key: the settings, the LLM client built without them."""
    key = key.strip()
    return key if all("!" <= c <= "~" for c in key) else None

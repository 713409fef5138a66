"""The one exception tree of vstreamer.

Every error the package raises on purpose derives from :class:`VStreamerError`::

    VStreamerError
    ├── ConfigError                 bad settings (URL, backend name, budgets...)
    ├── PersonaError                unreadable, malformed, hostile or oversized persona files
    │   └── PersonaNotFound         no persona by that id or name
    ├── BackendError                anything that went wrong talking to an LLM backend
    │   ├── BackendUnavailable      cannot connect / server down / circuit open
    │   ├── BackendTimeout          connect, first-token or stall timeout
    │   ├── BackendResponseError    the server answered with an HTTP error or a malformed body
    │   └── BackendNotInstalled     an optional dependency for this backend is missing
    ├── ContextBudgetError          the persona and the new message alone do not fit the context window
    ├── ModerationError             a message was blocked by the safety policy
    └── StoreError                  persistence failed

Adapters (HTTP gateway, UI, CLI) map these to status codes and user-facing text in one place each.
"""

from __future__ import annotations


class VStreamerError(Exception):
    """Base class of every vstreamer error."""

    #: short machine-readable code, used in API error bodies
    code: str = "vstreamer_error"


class ConfigError(VStreamerError):
    code = "invalid_config"


class PersonaError(VStreamerError):
    code = "invalid_persona"


class PersonaNotFound(PersonaError):
    code = "persona_not_found"


class BackendError(VStreamerError):
    code = "backend_error"


class BackendUnavailable(BackendError):
    code = "backend_unavailable"


class BackendTimeout(BackendError):
    code = "backend_timeout"


REFUSED_STATUS = frozenset({400, 413, 422})
"""What an LLM server answers a request it refuses as such (a prompt over its context, a parameter it does not take,
a content filter): the same request would be refused again, unlike a 5xx, a 429 or a wrong key."""


class BackendResponseError(BackendError):
    code = "backend_response_error"

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code

    @property
    def refused(self) -> bool:
        """Whether the server refused the request itself (:data:`REFUSED_STATUS`), not failed to answer it."""
        return self.status_code in REFUSED_STATUS


class BackendNotInstalled(BackendError):
    code = "backend_not_installed"


class ContextBudgetError(VStreamerError):
    code = "context_length_exceeded"


class ModerationError(VStreamerError):
    code = "content_blocked"


class StoreError(VStreamerError):
    code = "store_error"

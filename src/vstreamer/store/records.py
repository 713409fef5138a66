"""Plain records the store returns (the ORM rows never leave the store)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime


def utc_now() -> datetime:
    return datetime.now(UTC)


def aware(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A stored conversation's header."""

    id: str
    persona_id: str
    owner: str
    platform: str
    viewer_id: str | None
    user_name: str
    title: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """An API key's public facts (never the key itself)."""

    id: str
    name: str
    prefix: str
    created_at: datetime
    revoked: bool


@dataclass(frozen=True, slots=True)
class SummaryRecord:
    """One version of a session's running summary."""

    id: str
    session_id: str
    covers_until_turn_id: str | None
    """The newest turn folded into it."""
    text: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ErasedTalk:
    """What :meth:`~vstreamer.store.Store.delete_viewer_sessions` deleted of a viewer's conversations."""

    sessions: int
    messages: int
    """Every message of those sessions: the viewer's and the persona's replies to them (which may quote them)."""
    summaries: int
    """Versions of those sessions' running summaries (written from what the viewer said)."""

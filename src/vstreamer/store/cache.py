"""The store's in-process cache of live sessions: their header, their conversation, their viewer's facts.

Every chat turn needs the session header, its recent turns and what is remembered about the viewer; reading them
from the database on each turn cost ~7 ms on SQLite. Writes go through the store, which keeps the cached copies
current, so a hit is always what the database holds — as long as this process is the only writer of the session.
That holds for one instance (SQLite, the default); instances sharing a PostgreSQL database must route a session to
one instance (sticky sessions) or turn the cache off (``session_cache = 0``, the default for PostgreSQL).
"""

from __future__ import annotations

from dataclasses import dataclass

from vstreamer.engine.conversation import Conversation
from vstreamer.engine.facts import Fact, ViewerKey
from vstreamer.lru import LRU
from vstreamer.store.records import SessionRecord


@dataclass(slots=True)
class CachedSession:
    record: SessionRecord
    conversation: Conversation | None = None
    """``None`` until loaded (or after a write from another conversation object made it unsure)."""


class SessionCache:
    """Sessions and viewer facts kept between turns; ``size`` sessions (and as many viewers) at most."""

    def __init__(self, size: int, *, keep_turns: int = 200) -> None:
        self.sessions: LRU[str, CachedSession] = LRU(size)
        self.facts: LRU[tuple[ViewerKey, int], list[Fact]] = LRU(size)
        self.keep_turns = keep_turns

    @property
    def enabled(self) -> bool:
        return self.sessions.size > 0

    def conversation(self, session_id: str) -> tuple[SessionRecord, Conversation] | None:
        entry = self.sessions.get(session_id)
        if entry is None or entry.conversation is None:
            return None
        conversation = entry.conversation
        if len(conversation.turns) > 2 * self.keep_turns:
            # Long sessions: older turns live in the summary; keep the cached window bounded.
            del conversation.turns[: -self.keep_turns]
            conversation.summary_index = None
        return entry.record, conversation

    def forget_viewer(self, viewer: ViewerKey) -> None:
        for key in [k for k in self.facts if k[0] == viewer]:
            self.facts.pop(key)

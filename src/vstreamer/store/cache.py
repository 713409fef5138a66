"""The store's in-process cache of live sessions: their header, their conversation, their viewer's facts.

Every chat turn needs the session header, its recent turns and what is remembered about the viewer; reading them
from the database on each turn cost ~7 ms on SQLite. Writes go through the store, which keeps the cached copies
current, so a hit is always what the database holds — as long as this process is the only writer of the session.
That holds for one instance (SQLite, the default); instances sharing a PostgreSQL database must route a session to
one instance (sticky sessions) or turn the cache off (``session_cache = 0``, the default for PostgreSQL). The
gateway's worker processes (``--workers``) share change counters instead (:mod:`vstreamer.store.shared`): a hit that
another worker changed since it was read is read again.

A read that misses takes a :meth:`SessionCache.token` before it starts and keeps its result only if nothing changed
the session (or viewer) meanwhile: a delete, a failed write, a write around the cached object. Otherwise a read of
a just-deleted session would bring it back.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

from vstreamer.engine.conversation import Conversation
from vstreamer.engine.facts import Fact, ViewerKey
from vstreamer.lru import LRU
from vstreamer.store.records import SessionRecord
from vstreamer.store.shared import SharedVersions


@dataclass(slots=True)
class CachedSession:
    record: SessionRecord
    conversation: Conversation | None = None
    """``None`` until loaded (or after a write from another conversation object made it unsure)."""
    stamp: int = 0
    """The other workers' changes of the session when it was read (see :class:`SharedVersions`)."""


class SessionCache:
    """Sessions and viewer facts kept between turns; ``size`` sessions (and as many viewers) at most."""

    REMEMBERED_CHANGES = 1024
    """How many keys' latest change are remembered; a read older than the oldest forgotten one is not kept."""

    def __init__(self, size: int, *, keep_turns: int = 200, max_turns: int = 1000) -> None:
        self.sessions: LRU[str, CachedSession] = LRU(size)
        self.facts: LRU[tuple[ViewerKey, int], tuple[int, list[Fact]]] = LRU(size)
        """The facts of a viewer (newest first, so many at most), with the other workers' changes when read."""
        self.shared: SharedVersions | None = None
        """The counters of the gateway's workers, when it has several."""
        self.keep_turns = keep_turns
        self.max_turns = max_turns
        """Turns a cached conversation holds at most, summarised or not (a summariser that fails for good)."""
        self._clock = 0
        self._changed: OrderedDict[Hashable, int] = OrderedDict()
        """A session id or viewer → the clock at its latest change, oldest first."""
        self._forgotten = 0
        """The clock of the newest change dropped from ``_changed``."""

    @property
    def enabled(self) -> bool:
        return self.sessions.size > 0

    def session(self, session_id: str) -> CachedSession | None:
        """The cached session, unless another worker changed it since it was read (it is dropped then)."""
        entry = self.sessions.get(session_id)
        if entry is not None and self.shared is not None and entry.stamp != self.shared.stamp(session_id):
            self.sessions.pop(session_id)
            return None
        return entry

    def conversation(self, session_id: str) -> tuple[SessionRecord, Conversation] | None:
        entry = self.session(session_id)
        if entry is None or entry.conversation is None:
            return None
        conversation = entry.conversation
        if len(conversation.turns) > 2 * self.keep_turns and not conversation.replying.locked():
            self._trim(conversation)
        return entry.record, conversation

    def _trim(self, conversation: Conversation) -> None:
        """Long sessions: the turns the running summary holds go, down to ``keep_turns`` (not under a reply being
        made, whose prompt holds places in the list). Turns not summarised yet stay (the summary must still read
        them), up to ``max_turns``."""
        turns = conversation.turns
        cut = len(turns) - self.keep_turns
        covered = conversation.summarised_index()
        if covered is not None:
            cut = min(cut, covered)  # the summary's last turn stays: it marks where the summary ends
        elif len(turns) <= self.max_turns:
            return
        if cut > 0:
            del turns[:cut]
            conversation.summary_index = None

    def token(self) -> int:
        """Taken before a read of the database: :meth:`current` then tells whether its result may be cached."""
        return self._clock

    def stamp(self, key: Hashable) -> int:
        """Taken before a read of the database too: the other workers' changes of ``key`` so far (0: no workers)."""
        return 0 if self.shared is None else self.shared.stamp(key)

    def committed(self, key: Hashable) -> None:
        """Tell the other workers that a change of ``key`` was committed."""
        if self.shared is not None:
            self.shared.bump(key)

    def current(self, key: Hashable, token: int) -> bool:
        """Whether ``key`` (a session id or viewer) is unchanged since ``token`` was taken."""
        return token >= self._forgotten and self._changed.get(key, 0) <= token

    def changed(self, key: Hashable) -> None:
        """Note that ``key`` changed in the database: reads that began before may not be cached (here, or by the other
        workers)."""
        if not self.enabled:
            return
        self.committed(key)
        self._clock += 1
        self._changed[key] = self._clock
        self._changed.move_to_end(key)
        if len(self._changed) > self.REMEMBERED_CHANGES:
            self._forgotten = self._changed.popitem(last=False)[1]

    def forget(self, session_id: str) -> None:
        """Drop the session (deleted, or its cached copy no longer sure), and keep reads begun before from caching it."""
        self.sessions.pop(session_id)
        self.changed(session_id)

    def keep(self, session_id: str, entry: CachedSession, token: int) -> CachedSession | None:
        """Cache what a read begun at ``token`` (and at ``entry.stamp``) found, unless the session changed meanwhile;
        returns the entry now cached (``None`` if none). A conversation cached by a concurrent read stays: every
        caller shares one object."""
        cached = self.session(session_id)
        if cached is not None and cached.conversation is not None or not self.current(session_id, token):
            return cached
        return self.sessions.put(session_id, entry)

    def viewer_facts(self, viewer: ViewerKey, limit: int) -> list[Fact] | None:
        """The cached facts, unless another worker changed the viewer's since they were read."""
        entry = self.facts.get((viewer, limit))
        if entry is None or (self.shared is not None and entry[0] != self.shared.stamp(viewer)):
            return None
        return entry[1]

    def keep_facts(
        self, viewer: ViewerKey, limit: int, facts: list[Fact], token: int, stamp: int
    ) -> list[Fact]:
        if self.current(viewer, token):
            self.facts.put((viewer, limit), (stamp, facts))
        return facts

    def forget_viewer(self, viewer: ViewerKey) -> None:
        for key in [k for k in self.facts if k[0] == viewer]:
            self.facts.pop(key)
        self.changed(viewer)

"""The store: sessions and their messages, imported personas, API keys."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from vstreamer.engine.conversation import Conversation, Turn, new_id
from vstreamer.engine.facts import Fact, ViewerKey
from vstreamer.errors import StoreError
from vstreamer.llm.base import Usage
from vstreamer.safety.normalize import well_formed
from vstreamer.store.cache import CachedSession, SessionCache
from vstreamer.store.database import (
    create_engine,
    database_error,
    default_url,
    migrate,
    shielded,
    storable,
)
from vstreamer.store.keys import ApiKeyTables
from vstreamer.store.memory import MemoryTables
from vstreamer.store.personas import PersonaTables
from vstreamer.store.records import ErasedTalk, SessionRecord, SummaryRecord, aware, utc_now
from vstreamer.store.tables import MessageRow, SessionRow, SummaryRow
from vstreamer.store.writer import TurnWriter, Write


def _session_record(row: SessionRow) -> SessionRecord:
    return SessionRecord(
        row.id, row.persona_id, row.owner, row.platform, row.viewer_id, row.user_name, row.title,
        aware(row.created_at), aware(row.updated_at),
    )  # fmt: skip


_MESSAGES = MessageRow.__table__
_IN_ORDER = (MessageRow.created_at, MessageRow.pk)
"""A session's turns in the order the engine made them (a reply's row is inserted when it ends, after a message
sent while it ran); ``ix_messages_session_id_created_at`` serves it."""
_NEWEST_FIRST = (MessageRow.created_at.desc(), MessageRow.pk.desc())


def _turn(row: Any) -> Turn:
    """A stored message (ORM object or plain row with the same columns) as an engine turn."""
    usage = (
        Usage(row.prompt_tokens or 0, row.completion_tokens or 0)
        if row.completion_tokens is not None
        else None
    )
    return Turn(
        role=row.role,
        content=row.content,
        status=row.status,
        id=row.id,
        created_at=aware(row.created_at).timestamp(),
        usage=usage,
        error=row.error,
        first_token_ms=row.first_token_ms,
        duration_ms=row.duration_ms,
        summary_id=row.summary_id,
    )


def _holds(conversation: Conversation, turn: Turn) -> bool:
    """Whether ``turn`` is one of the conversation's newest turns (the engine appends a turn before saving it)."""
    turns = conversation.turns
    return bool(turns) and turns[-1] is turn or any(t is turn for t in turns[-8:])


def _answered(conversation: Conversation, turn: Turn) -> str | None:
    """The id of the user's message that ``turn`` (a reply) answers, if it was stored: the reply is written only
    while that message is still its session's (see ``Write.anchor``)."""
    turns = conversation.turns
    i = len(turns) - 1
    while i > 0 and turns[i] is not turn:  # the last one, but for a reply saved again later
        i -= 1
    if i > 0 and turns[i].role == "assistant" and (before := turns[i - 1]).role == "user":
        return before.id if before.status != "failed" else None
    return None


def _count(result: Any) -> int:
    """Rows a statement changed (a driver that cannot tell says -1, read as none)."""
    return max(int(getattr(result, "rowcount", 0) or 0), 0)


class Store(MemoryTables, PersonaTables, ApiKeyTables):
    """Async persistence over SQLAlchemy. Every method is one short transaction; new sessions and turns are
    group-committed (:mod:`vstreamer.store.writer`), and live sessions are cached (:mod:`vstreamer.store.cache`).

    ``session_cache``: how many sessions to keep in memory; ``None`` picks 1000 for SQLite and 0 (off) for
    PostgreSQL, whose deployments may run several instances over one database.
    """

    RECENT_TURNS = 200
    """Turns a session is read with (more than a prompt's window: :data:`~vstreamer.engine.window.MAX_HISTORY_TURNS`)
    and kept with in the cache."""
    HELD_TURNS = 1000
    """Turns a session is read with when the running summary is further back than :attr:`RECENT_TURNS` (or there is
    none): those that left the window without being summarised yet must be there for the summary to take them."""

    def __init__(self, engine: AsyncEngine, *, session_cache: int | None = None) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        if session_cache is None:
            session_cache = 1000 if engine.dialect.name == "sqlite" else 0
        self.cache = SessionCache(session_cache, keep_turns=self.RECENT_TURNS, max_turns=self.HELD_TURNS)
        self._live: weakref.WeakValueDictionary[str, Conversation] = weakref.WeakValueDictionary()
        """The conversation this process handed out last for each session still in use. One with a reply being made
        is shared whatever the cache does: off, it never held it; on, it may have dropped it (evicted by other
        sessions, or forgotten after a write around it) while the reply streams."""
        self.writer = TurnWriter(engine, on_settled=self._settled, on_committed=self._committed)

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[AsyncSession]:
        try:
            async with self._sessions.begin() as session:
                yield session
        except (SQLAlchemyError, OSError) as exc:  # a server that cannot be reached: the driver's own OSError
            raise database_error(exc) from exc

    async def ping(self) -> None:
        async with self._tx() as session:
            await session.execute(text("SELECT 1"))

    async def close(self) -> None:
        await self.writer.aclose()
        await self.engine.dispose()

    # --- sessions -------------------------------------------------------------------------------------

    @shielded
    async def create_session(
        self,
        persona_id: str,
        *,
        owner: str,
        platform: str = "web",
        viewer_id: str | None = None,
        user_name: str = "",
        title: str = "",
        session_id: str | None = None,
    ) -> SessionRecord:
        """A new session; a ``session_id`` that exists already keeps the existing session, which is returned (its
        owner may not be ``owner``: callers check)."""
        now, sid = utc_now(), session_id or new_id()
        values = {
            "id": sid, "persona_id": persona_id, "owner": owner, "platform": platform,
            "viewer_id": viewer_id, "user_name": user_name, "title": storable(well_formed(title))[:200], "summary": "",
            "created_at": now, "updated_at": now,
        }  # fmt: skip
        stamp = self.cache.stamp(sid)
        await self.writer.submit(write := Write(sid, now, session=values))
        cached = self.cache.session(sid)
        if cached is not None:
            return cached.record
        if not write.inserted:
            # The caller named it, and another request or instance made it first: the insert was a no-op, and the
            # stored session (its owner, its persona) is the one to answer with.
            found = await self.open_conversation(sid)
            if found is None:
                raise StoreError(f"session {sid} was deleted as it was made")
            return found[0]
        record = SessionRecord(
            sid, persona_id, owner, platform, viewer_id, user_name, values["title"], now, now
        )
        conversation = Conversation(
            persona_id, user_name=user_name or "观众", id=sid, platform=platform, viewer_id=viewer_id
        )
        self.cache.sessions.put(sid, CachedSession(record, conversation, stamp))
        self._live[sid] = conversation
        return record

    @shielded
    async def get_session(self, session_id: str, *, owner: str | None = None) -> SessionRecord | None:
        cached = self.cache.session(session_id)
        if cached is not None:
            record = cached.record
        else:
            token, stamp = self.cache.token(), self.cache.stamp(session_id)
            async with self._tx() as session:
                row = await session.get(SessionRow, session_id)
            if row is None:
                return None
            record = _session_record(row)
            self.cache.keep(session_id, CachedSession(record, stamp=stamp), token)
        if owner is not None and record.owner != owner:
            return None
        return record

    @shielded
    async def list_sessions(
        self, *, owner: str, limit: int = 50, offset: int = 0, search: str | None = None
    ) -> list[SessionRecord]:
        """The owner's sessions, most recently active first; ``search``: only those whose title holds it (any case)."""
        query = select(SessionRow).where(SessionRow.owner == owner)
        if search:
            pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            query = query.where(SessionRow.title.ilike(pattern, escape="\\"))
        query = query.order_by(SessionRow.updated_at.desc()).limit(limit).offset(offset)
        async with self._tx() as session:
            rows = (await session.scalars(query)).all()
        return [_session_record(r) for r in rows]

    @shielded
    async def rename_session(self, session_id: str, title: str) -> None:
        title = storable(well_formed(title))[:200]  # as a new session's
        async with self._tx() as session:
            await session.execute(update(SessionRow).where(SessionRow.id == session_id).values(title=title))
        cached = self.cache.sessions.get(session_id)
        if cached is not None:
            cached.record = replace(cached.record, title=title)
        self.cache.changed(session_id)  # a read begun before the update keeps the old title to itself

    @shielded
    async def delete_session(self, session_id: str, *, owner: str | None = None) -> bool:
        # The session's rows go only with it: a caller that does not own it deletes nothing at all.
        mine = select(SessionRow.id).where(SessionRow.id == session_id)
        if owner is not None:
            mine = mine.where(SessionRow.owner == owner)
        # Nor its cached conversation: the owner's replies queue on that object's lock, and a fresh copy read after
        # a stranger's refused delete let a second reply run alongside one in flight.
        cached = self.cache.sessions.get(session_id)
        if cached is not None and (owner is None or cached.record.owner == owner):
            self.cache.forget(session_id)
        async with self._tx() as session:
            await session.execute(delete(MessageRow).where(MessageRow.session_id.in_(mine)))
            await session.execute(delete(SummaryRow).where(SummaryRow.session_id.in_(mine)))
            result = await session.execute(delete(SessionRow).where(SessionRow.id.in_(mine)))
        deleted = bool(getattr(result, "rowcount", 0))
        if deleted:
            self.cache.forget(session_id)  # and a read begun meanwhile does not bring it back
        return deleted

    @shielded
    async def delete_viewer_sessions(self, viewer: ViewerKey) -> ErasedTalk:
        """Delete every session held with ``viewer`` ("forget me"), with its messages and summaries, as
        :meth:`delete_session` deletes one.

        A session is one viewer's (the gateway refuses another viewer on it), so the whole session goes: what they
        said, the replies that may quote it, the summaries written from it. Those are the sessions stored with the
        viewer, taken on later included (:meth:`take_viewer` stores the viewer before a reply is made with it).
        Whatever asks for such a session next reads it from the database: gone.
        """
        theirs = (SessionRow.platform == viewer.platform) & (SessionRow.viewer_id == viewer.user_id)
        async with self._tx() as session:
            mine = select(SessionRow.id).where(theirs)
            messages = await session.execute(delete(MessageRow).where(MessageRow.session_id.in_(mine)))
            summaries = await session.execute(delete(SummaryRow).where(SummaryRow.session_id.in_(mine)))
            # A session made between two statements (PostgreSQL) takes its messages with it (ON DELETE CASCADE).
            gone = (await session.scalars(delete(SessionRow).where(theirs).returning(SessionRow.id))).all()
        for session_id in gone:  # after the commit: a read begun meanwhile does not bring one back
            self.cache.forget(session_id)
        return ErasedTalk(len(gone), _count(messages), _count(summaries))

    @shielded
    async def take_viewer(self, session_id: str, viewer_id: str) -> str | None:
        """Store ``viewer_id`` as the viewer of a session stored without one; returns the session's viewer then:
        another's if one was stored first (a concurrent request, another instance), ``None`` if there is no session.

        Stored, not only set on the conversation: a viewer held in memory alone left with the process (restart,
        eviction, another instance), and with it the refusal of a second viewer and "forget me"'s reach. One
        statement sets it only where none is stored, so of two requests naming two viewers exactly one wins.
        """
        unclaimed = (SessionRow.id == session_id) & SessionRow.viewer_id.is_(None)
        async with self._tx() as session:
            await session.execute(update(SessionRow).where(unclaimed).values(viewer_id=viewer_id))
            held = await session.scalar(select(SessionRow.viewer_id).where(SessionRow.id == session_id))
        if held is not None:
            self._hold_viewer(session_id, held)
        return held

    def _hold_viewer(self, session_id: str, viewer_id: str) -> None:
        """The stored viewer on the copies this process holds: the cached header and conversation, the live one."""
        cached = self.cache.sessions.get(session_id)
        if cached is not None:
            cached.record = replace(cached.record, viewer_id=viewer_id)
            if cached.conversation is not None:
                cached.conversation.viewer_id = viewer_id
        live = self._live.get(session_id)
        if live is not None:
            live.viewer_id = viewer_id
        # A read begun before the update keeps the viewer-less header to itself.
        self.cache.changed(session_id)

    # --- messages -------------------------------------------------------------------------------------

    async def load_conversation(self, session_id: str, *, recent: int | None = None) -> Conversation:
        """The session as an engine conversation, with its newest turns (older ones live in the summary).

        With the cache on, every caller gets the same object while the session stays cached: the engine's turns
        are appended to it, and saving them keeps it equal to the database. ``recent`` reads that many newest
        turns from the database instead (a private copy).
        """
        found = (
            await self.open_conversation(session_id)
            if recent is None
            else await self._read_conversation(session_id, recent)
        )
        if found is None:
            raise StoreError(f"no session {session_id}")
        return found[1]

    async def open_conversation(self, session_id: str) -> tuple[SessionRecord, Conversation] | None:
        """The session's header and conversation (``None`` if there is no such session), in one read."""
        hit = self.cache.conversation(session_id)
        if hit is not None:
            return hit
        # A miss only (a hit is the gateway's every request): uncached, or dropped from the cache mid-reply, each
        # request read its own copy, and a second message was answered alongside the first (the engine's
        # one-reply-at-a-time lock is the conversation's): one with a reply being made is shared.
        live = self._live.get(session_id)
        if live is not None and live.replying.locked():
            record = await self.get_session(session_id)
            return None if record is None else (record, live)
        token, stamp = self.cache.token(), self.cache.stamp(session_id)
        loaded = await self._read_conversation(session_id, self.RECENT_TURNS, to_summary=True)
        if loaded is None:
            return None
        live = self._live.get(session_id)
        if live is not None and live.replying.locked():  # another read's, started on meanwhile
            return loaded[0], live
        # Loaded concurrently: share one object. Changed meanwhile (deleted, say): this read is not cached.
        kept = self.cache.keep(session_id, CachedSession(*loaded, stamp), token)
        if kept is not None and kept.conversation is not None:
            loaded = kept.record, kept.conversation
        self._live[session_id] = loaded[1]
        return loaded

    @shielded
    async def _read_conversation(
        self, session_id: str, recent: int, *, to_summary: bool = False
    ) -> tuple[SessionRecord, Conversation] | None:
        """The session's header and newest ``recent`` turns; ``to_summary``: also every older one back to the running
        summary's last (:attr:`HELD_TURNS` at most)."""
        async with self._tx() as session:
            header = await session.get(SessionRow, session_id)
            if header is None:
                return None
            # Plain rows, not ORM objects: this runs on every turn of every conversation.
            query = (
                select(_MESSAGES)
                .where(MessageRow.session_id == session_id)
                .order_by(*_NEWEST_FIRST)
                .limit(recent)
            )
            rows = list((await session.execute(query)).all())
            latest = await self._latest_summary(session, session_id)
            until = latest.covers_until_turn_id if latest else None
            if to_summary and len(rows) == recent < self.HELD_TURNS and all(r.id != until for r in rows):
                # Older turns may not be summarised yet: read back to the summary's last turn (or the held most).
                query = query.limit(self.HELD_TURNS)
                mark = None
                if until is not None:
                    where = (MessageRow.id == until) & (MessageRow.session_id == session_id)
                    mark = (
                        await session.execute(select(MessageRow.created_at, MessageRow.pk).where(where))
                    ).first()
                if mark is not None:
                    at, pk = mark
                    query = query.where(
                        (MessageRow.created_at > at) | (MessageRow.created_at == at) & (MessageRow.pk >= pk)
                    )
                rows = list((await session.execute(query)).all())
        rows.reverse()
        conversation = Conversation(
            header.persona_id, user_name=header.user_name or "观众", id=header.id,
            turns=[_turn(r) for r in rows], summary=latest.text if latest else header.summary,
            summary_id=latest.id if latest else None, summary_until=latest.covers_until_turn_id if latest else None,
            platform=header.platform, viewer_id=header.viewer_id,
        )  # fmt: skip
        return _session_record(header), conversation

    @shielded
    async def list_messages(self, session_id: str, *, limit: int = 1000, offset: int = 0) -> list[Turn]:
        query = (
            select(_MESSAGES)
            .where(MessageRow.session_id == session_id)
            .order_by(*_IN_ORDER)
            .limit(limit)
            .offset(offset)
        )
        async with self._tx() as session:
            return [_turn(r) for r in (await session.execute(query)).all()]

    @shielded
    async def count_messages(self, session_id: str) -> int:
        query = select(func.count()).select_from(MessageRow).where(MessageRow.session_id == session_id)
        async with self._tx() as session:
            return int((await session.execute(query)).scalar_one())

    async def save_turn(self, conversation: Conversation, turn: Turn) -> None:
        """Insert the turn, or update it if it was saved before (a reply saved again when it ends).

        Returns once committed; cancelling the caller does not cancel the write.
        """
        await self.queue_turn(conversation, turn)

    def queue_turn(
        self, conversation: Conversation, turn: Turn, done: asyncio.Future[None] | None = None
    ) -> asyncio.Future[None]:
        """:meth:`save_turn` without a coroutine: the write is queued now, and the future (``done``, or a new one) is
        done once it is committed (the engine overlaps the user's message this way, with no task to run it)."""
        now = utc_now()
        # A session's ``updated_at`` follows its replies: the user's message, on the path of every reply's first
        # text, is committed without it (the reply is always saved after it, also when it fails or is cut off).
        touch = turn.role != "user"
        cached = self.cache.sessions.get(conversation.id)
        # Written around the cached object (or none is cached): reload from the database next time, and once it is
        # committed drop what a read running meanwhile may have cached without it (:meth:`_settled`).
        around = self.cache.enabled and (
            cached is None or cached.conversation is not conversation or not _holds(conversation, turn)
        )
        anchor = _answered(conversation, turn) if touch else None
        write = (
            Write(conversation.id, now, turn=turn, touch=touch, notify=around, anchor=anchor)
            if done is None
            else Write(conversation.id, now, turn=turn, touch=touch, notify=around, anchor=anchor, done=done)
        )
        done = self.writer.enqueue(write)
        if cached is not None:
            if touch:
                cached.record = replace(cached.record, updated_at=now)
            if around:
                cached.conversation = None
        return done

    def _committed(self, writes: list[Write]) -> None:
        """A batch was committed: the other workers (if any) read its sessions again when next they serve them."""
        if self.cache.shared is not None:
            for write in writes:
                self.cache.committed(write.session_id)

    def _settled(self, write: Write, error: BaseException | None) -> None:
        """A write failed, or one made around the cached conversation was committed: the session's cached copy may
        differ from the database (a turn the engine appended but never stored, a read that missed the turn), so the
        next read reloads it. Failures are rare, and writes through the cached object are not reported."""
        self.cache.forget(write.session_id)

    # --- memory: summaries and viewer facts ------------------------------------------------------------

    @shielded
    async def save_summary(self, session_id: str, summary: str, *, covers_until: str | None = None) -> str:
        """Store a new version of the session's running summary; returns its id (turns refer to it)."""
        summary_id, now = new_id(), utc_now()
        row = {"id": summary_id, "session_id": session_id, "covers_until_turn_id": covers_until,
               "text": storable(summary), "created_at": now}  # fmt: skip
        write = Write(session_id, now, summary=row)
        await self.writer.submit(write)  # with the turns' group commit
        if not write.inserted:
            raise StoreError(f"session {session_id} does not hold turn {covers_until} (deleted meanwhile?)")
        self.cache.changed(session_id)  # a read begun before the commit keeps the older summary to itself
        cached = self.cache.sessions.get(session_id)
        if cached is not None and (conversation := cached.conversation) is not None:
            conversation.summary, conversation.summary_id = row["text"], summary_id
            conversation.summary_until, conversation.summary_index = covers_until, None
        return summary_id

    @shielded
    async def summary_history(self, session_id: str) -> list[SummaryRecord]:
        """Every summary version of the session, oldest first."""
        return await self._summary_history(session_id)

    @shielded
    async def get_summary(self, summary_id: str) -> SummaryRecord | None:
        return await self._get_summary(summary_id)

    @shielded
    async def add_facts(self, viewer: ViewerKey, facts: Sequence[Fact], *, keep: int = 200) -> list[Fact]:
        """Remember new facts about the viewer (already known ones are skipped); returns those added."""
        try:
            added = await self._add_facts(viewer, facts, keep) if facts else []
        except BaseException:
            self.cache.forget_viewer(viewer)
            raise
        if added:  # nothing new: the cached facts are still what the database holds
            self.cache.forget_viewer(viewer)
        return added

    async def viewer_facts(self, viewer: ViewerKey, *, limit: int = 200) -> list[Fact]:
        """What is remembered about the viewer, newest first."""
        # Only a read of the database is shielded: a hit (on every turn) never yields to the event loop.
        cached = self.cache.viewer_facts(viewer, limit)
        if cached is None:
            token, stamp = self.cache.token(), self.cache.stamp(viewer)
            read = await self._read_viewer_facts(viewer, limit)
            cached = self.cache.keep_facts(viewer, limit, read, token, stamp)
        return list(cached)

    @shielded
    async def _read_viewer_facts(self, viewer: ViewerKey, limit: int) -> list[Fact]:
        return await self._viewer_facts(viewer, limit)

    @shielded
    async def delete_facts(self, viewer: ViewerKey, *, fact_id: str | None = None) -> int:
        """Forget one fact, or everything about the viewer ("forget me"); returns how many were deleted."""
        try:
            return await self._delete_facts(viewer, fact_id)
        finally:
            self.cache.forget_viewer(viewer)

    @shielded
    async def export_facts(self, *, platform: str | None = None) -> list[Fact]:
        """Every remembered fact (of one platform), for operators."""
        return await self._export_facts(platform)


async def open_store(url: str | None, data_dir: Path, *, session_cache: int | None = None) -> Store:
    """Open (creating and migrating as needed) the database at ``url``, or the SQLite file in ``data_dir``."""
    engine = create_engine(url or default_url(data_dir))
    await migrate(engine)
    return Store(engine, session_cache=session_cache)

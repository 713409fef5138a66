"""Group commit for the hot writes: new sessions, turns and running summaries.

Every chat request commits its user message before generation and its reply when it ends. One transaction per
write (through the async ORM) cost ~2.7 ms each on SQLite; here, writes that arrive while a commit is running wait
for the next one, and a whole batch is one transaction of prebuilt Core statements. A caller's ``await`` still
returns only once its row is committed, so "stored before generation starts" holds.

SQLite batches are committed on plain ``sqlite3`` connections to the same file (see :class:`_SQLiteFile`) — no
``aiosqlite`` round trips per statement. PostgreSQL batches run on the async engine (asyncpg is natively async).
A batch that fails is retried write by write, so one bad row (a session deleted meanwhile) fails alone.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

from sqlalchemy import DateTime, Dialect, bindparam, exists, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.dml import UpdateBase

from vstreamer.engine.conversation import Turn
from vstreamer.errors import StoreError
from vstreamer.safety.normalize import well_formed
from vstreamer.store.database import database_error, dialect_insert, sqlite_pragmas, storable
from vstreamer.store.tables import MessageRow, SessionRow, SummaryRow

logger = logging.getLogger(__name__)
_GONE = "session {} was deleted while this reply was made: it is not stored"

_MESSAGES = MessageRow.__table__
_SESSIONS = SessionRow.__table__
_SUMMARIES = SummaryRow.__table__
MESSAGE_FIELDS = (
    "role", "content", "status", "prompt_tokens", "completion_tokens", "first_token_ms", "duration_ms",
    "error", "summary_id",
)  # fmt: skip


@dataclass(slots=True)
class Write:
    """One pending write: a new session (``session``), a turn (``turn``) or a new version of the session's
    running summary (``summary``, a row of ``summaries``), and who waits for it."""

    session_id: str
    now: datetime
    session: dict[str, Any] | None = None
    turn: Turn | None = None
    """A turn to insert or update; its row is made when the batch is committed (off the path of the request that
    queued it: its text and status are final by then)."""
    anchor: str | None = None
    """For a ``turn``: a message that must still be the session's (the user's message a reply answers). Without it
    the session was deleted while the reply was made, perhaps made again under the same id (a client that names its
    session does so at once), and the turn is not written: the write fails with :class:`SessionGone`."""
    summary: dict[str, Any] | None = None
    touch: bool = True
    """Whether a ``turn`` moves the session's ``updated_at`` (two more pages to write in a ~5-page commit)."""
    notify: bool = False
    """Whether the writer's ``on_settled`` hears of this write when it is committed (it hears of every failure)."""
    inserted: bool | None = None
    """For a ``session``, once committed: whether its row was made (``False``: a session with its id was there).
    For a ``summary``: whether it was stored (``False``: the turn it covers is not the session's, which was deleted
    meanwhile, perhaps made again under the same id)."""
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


def message_row(session_id: str, turn: Turn) -> dict[str, Any]:
    """The ``messages`` row of a turn."""
    usage = turn.usage
    return {
        "id": turn.id,
        "session_id": session_id,
        "created_at": datetime.fromtimestamp(turn.created_at, UTC),
        "role": turn.role,
        "content": storable(turn.content),
        "status": turn.status,
        "prompt_tokens": usage.prompt_tokens if usage else None,
        "completion_tokens": usage.completion_tokens if usage else None,
        "first_token_ms": turn.first_token_ms,
        "duration_ms": turn.duration_ms,
        # An error quotes the LLM server, whose JSON may hold half an emoji: the failed reply must still be stored.
        "error": storable(well_formed(turn.error)) if turn.error else turn.error,
        "summary_id": turn.summary_id,
    }


class SessionGone(StoreError):
    """A turn was not written: its session was deleted meanwhile."""


class _Statements:
    """The batch's statements, built once per dialect (compiled once, then only parameters change)."""

    def __init__(self, dialect: str) -> None:
        insert = dialect_insert(dialect)
        self.session = insert(_SESSIONS).on_conflict_do_nothing(index_elements=["id"])
        upsert = insert(_MESSAGES)
        self.message = upsert.on_conflict_do_update(
            index_elements=["id"], set_={name: upsert.excluded[name] for name in MESSAGE_FIELDS}
        )
        # The same, only while the write's anchor is a message of the session (see ``Write.anchor``).
        columns = [column.name for column in _MESSAGES.columns if column.name != "pk"]
        values = {name: bindparam(name, type_=_MESSAGES.c[name].type) for name in columns}
        anchored = insert(_MESSAGES).from_select(
            columns,
            select(*values.values()).where(
                exists(
                    select(_MESSAGES.c.id)
                    .where(_MESSAGES.c.id == bindparam("anchor"))
                    .where(_MESSAGES.c.session_id == values["session_id"])
                )
            ),
        )
        self.anchored_message = anchored.on_conflict_do_update(
            index_elements=["id"], set_={name: anchored.excluded[name] for name in MESSAGE_FIELDS}
        )
        # Never back: another instance's write (or the web UI's, beside the gateway) timed earlier may commit later.
        now = bindparam("now", type_=_SESSIONS.c.updated_at.type)
        self.touch = (
            update(_SESSIONS)
            .where(_SESSIONS.c.id == bindparam("sid"), _SESSIONS.c.updated_at < now)
            .values(updated_at=now)
        )
        # Idempotent, as the others: a batch whose commit may have happened after all (its acknowledgement lost) is
        # retried write by write, and a summary already stored must not fail then. Stored only while the turn it
        # covers is the session's: a fold that ends after its session was deleted (and a new one made under the same
        # id, as a client that names its session does at once) must not give the new session the old one's talk.
        row = {
            name: bindparam(name, type_=_SUMMARIES.c[name].type)
            for name in ("id", "session_id", "covers_until_turn_id", "text", "created_at")
        }
        covered = (
            select(_MESSAGES.c.id)
            .where(_MESSAGES.c.id == row["covers_until_turn_id"])
            .where(_MESSAGES.c.session_id == row["session_id"])
        )
        self.summary = (
            insert(_SUMMARIES)
            .from_select(
                list(row),
                select(*row.values()).where(row["covers_until_turn_id"].is_(None) | exists(covered)),
            )
            .on_conflict_do_nothing(index_elements=["id"])
        )
        self.current_summary = (
            update(_SESSIONS)
            .where(_SESSIONS.c.id == bindparam("sid"))
            .values(summary=bindparam("summary_text"))
        )

    def plan(self, writes: Sequence[Write]) -> list[tuple[UpdateBase, list[dict[str, Any]]]]:
        """The statements of one batch with their rows, after its new sessions and before its summaries
        (:meth:`apply`): turns and sessions' ``updated_at``."""
        messages: list[dict[str, Any]] = []
        latest: dict[str, datetime] = {}
        for w in writes:  # one pass: most batches are one or two turns
            if w.turn is not None:
                if w.anchor is None:
                    messages.append(message_row(w.session_id, w.turn))
                if w.touch:
                    latest[w.session_id] = w.now
        plan: list[tuple[UpdateBase, list[dict[str, Any]]]] = []
        if messages:
            plan.append((self.message, messages))
        if latest:
            plan.append((self.touch, [{"sid": sid, "now": now} for sid, now in latest.items()]))
        return plan

    @staticmethod
    def current(writes: Sequence[Write]) -> list[dict[str, Any]]:
        """Each session's current summary: the batch's last stored one for it (rows of ``current_summary``)."""
        current = {w.session_id: w.summary["text"] for w in writes if w.summary is not None and w.inserted}
        return [{"sid": sid, "summary_text": text} for sid, text in current.items()]

    @staticmethod
    def anchored(writes: Sequence[Write]) -> list[tuple[Write, dict[str, Any]]]:
        """The turns written only while their anchor is their session's (rows of ``anchored_message``)."""
        return [
            (w, message_row(w.session_id, w.turn) | {"anchor": w.anchor})
            for w in writes
            if w.turn is not None and w.anchor is not None
        ]

    def apply(self, connection: Connection, writes: Sequence[Write]) -> None:
        # New sessions one by one, each learning whether it was made: the caller answers with its own record
        # then, or reads the one that was there (rare next to turns, so one statement each costs nothing).
        for write in writes:
            if write.session is not None:
                write.inserted = connection.execute(self.session, write.session).rowcount == 1
        for statement, rows in self.plan(writes):
            connection.execute(statement, rows)
        for write, row in self.anchored(writes):  # one by one, each learning whether it was written
            if connection.execute(self.anchored_message, row).rowcount != 1:
                raise SessionGone(_GONE.format(write.session_id))
        # Summaries one by one, after the turns they may cover, each learning whether it was stored.
        for write in writes:
            if write.summary is not None:
                write.inserted = connection.execute(self.summary, write.summary).rowcount == 1
        if current := self.current(writes):
            connection.execute(self.current_summary, current)


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A statement compiled to SQLite's SQL for one set of row keys, and how a row becomes its parameters."""

    sql: str
    getter: Callable[[dict[str, Any]], tuple[Any, ...]]
    """A row's values in the order of the SQL's ``?``."""
    times: tuple[int, ...]
    """The positions of datetime parameters."""


class _SQLiteFile:
    """SQLite: the same statements compiled once to SQL, run on plain ``sqlite3`` connections (SQLAlchemy's
    per-execution work was most of a commit's ~130 µs).

    A batch is first committed right on the event loop, on a connection that never waits for a lock
    (``busy_timeout=0``) and never checkpoints: in WAL mode a commit only appends to the log (no fsync with
    ``synchronous=NORMAL``), tens of µs — less than handing it to a thread, whose wake-up waits for the GIL while the
    loop is busy (measured: 0.4–0.8 ms). A batch that meets a lock (another writer: summaries, facts, a second
    process) goes to the writer thread, whose connection waits for it; that thread also checkpoints the log.
    """

    CHECKPOINT_EVERY = 1000
    """Inline commits between two background checkpoints of the log."""

    def __init__(self, path: str, statements: _Statements, dialect: Dialect) -> None:
        self.path = path
        self.statements = statements
        self.dialect = dialect
        self._inline: sqlite3.Connection | None = None
        self._threaded: sqlite3.Connection | None = None
        self._sql: dict[tuple[int, tuple[str, ...]], _Compiled] = {}
        process = _SESSIONS.c.updated_at.type.dialect_impl(dialect).bind_processor(dialect)
        self._datetime: Callable[[Any], Any] = process or (lambda value: value)
        self.inline_commits = 0

    def _compiled(self, statement: UpdateBase, keys: tuple[str, ...]) -> _Compiled:
        cached = self._sql.get((id(statement), keys))
        if cached is None:
            compiled = statement.compile(dialect=self.dialect, column_keys=list(keys))
            order = tuple(compiled.positiontup or ())
            # Which parameters are datetimes: SQLite stores them as text, in SQLAlchemy's format.
            times = tuple(
                i for i, name in enumerate(order) if isinstance(compiled.binds[name].type, DateTime)
            )
            getter = (
                itemgetter(*order) if len(order) > 1 else (lambda row: tuple(row[name] for name in order))
            )
            cached = self._sql[(id(statement), keys)] = _Compiled(str(compiled), getter, times)
        return cached

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        sqlite_pragmas(connection, None)
        return connection

    def commit_inline(self, writes: Sequence[Write]) -> bool:
        """Commit without waiting: ``False`` if the database is locked (nothing written)."""
        if self._inline is None:
            self._inline = self._connect()
            self._inline.execute("PRAGMA busy_timeout=0")
            self._inline.execute("PRAGMA wal_autocheckpoint=0")
        try:
            self._commit(self._inline, writes)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                return False
            raise
        self.inline_commits += 1
        return True

    @property
    def checkpoint_due(self) -> bool:
        return self.inline_commits % self.CHECKPOINT_EVERY == 0

    def commit(self, writes: Sequence[Write]) -> None:
        """Commit on the writer thread, waiting for a lock if need be."""
        if self._threaded is None:
            self._threaded = self._connect()
        self._commit(self._threaded, writes)

    def checkpoint(self) -> None:
        """Move the log into the database file (on the writer thread; readers and writers go on meanwhile)."""
        if self._threaded is None:
            self._threaded = self._connect()
        self._threaded.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _commit(self, connection: sqlite3.Connection, writes: Sequence[Write]) -> None:
        connection.execute("BEGIN IMMEDIATE")
        try:
            for write in writes:  # as in _Statements.apply
                if write.session is not None:
                    compiled = self._compiled(self.statements.session, tuple(write.session))
                    made = connection.execute(compiled.sql, self._params(compiled, write.session)).rowcount
                    write.inserted = made == 1
            for statement, rows in self.statements.plan(writes):
                compiled = self._compiled(statement, tuple(rows[0]))
                connection.executemany(compiled.sql, [self._params(compiled, row) for row in rows])
            if anchored := self.statements.anchored(writes):
                # All in one go; fewer rows written than asked: the batch is retried write by write, which finds
                # the one whose session is gone.
                compiled = self._compiled(self.statements.anchored_message, tuple(anchored[0][1]))
                values = [self._params(compiled, row) for _, row in anchored]
                if connection.executemany(compiled.sql, values).rowcount != len(values):
                    raise SessionGone(
                        _GONE.format(anchored[0][0].session_id if len(values) == 1 else "of a reply")
                    )
            for write in writes:
                if write.summary is not None:
                    compiled = self._compiled(self.statements.summary, tuple(write.summary))
                    made = connection.execute(compiled.sql, self._params(compiled, write.summary)).rowcount
                    write.inserted = made == 1
            if current := self.statements.current(writes):
                compiled = self._compiled(self.statements.current_summary, tuple(current[0]))
                connection.executemany(compiled.sql, [self._params(compiled, row) for row in current])
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise

    def _params(self, compiled: _Compiled, row: dict[str, Any]) -> tuple[Any, ...]:
        values = compiled.getter(row)
        if not compiled.times:
            return values
        bound = list(values)
        for i in compiled.times:
            if bound[i] is not None:
                bound[i] = self._datetime(bound[i])
        return tuple(bound)

    def close(self) -> None:
        for connection in (self._inline, self._threaded):
            if connection is not None:
                connection.close()
        self._inline = self._threaded = None


BUSY_RETRIES = 4
"""Tries on the loop again for a batch that found the SQLite file locked, before it goes to the writer thread..."""
BUSY_RETRY_S = 0.0005
"""...this far apart."""

Settled = Callable[[Write, BaseException | None], None]
"""Told of a write that failed (with its error), or that was committed and asked to be told (``Write.notify``)."""
Committed = Callable[[list[Write]], None]
"""Told of every write committed, a batch at a time, before their writers hear of it."""


class TurnWriter:
    """Queues writes and commits them in batches; ``await submit(...)`` returns once committed.

    Once :meth:`aclose` has begun, new writes fail at once (a :class:`StoreError`).
    """

    def __init__(
        self, engine: AsyncEngine, *, on_settled: Settled | None = None, on_committed: Committed | None = None
    ) -> None:
        self._async_engine = engine
        self._on_settled = on_settled
        self._on_committed = on_committed
        self._closed = False
        self._statements = _Statements(engine.dialect.name)
        self._file: _SQLiteFile | None = None
        self._executor: ThreadPoolExecutor | None = None
        url = engine.url
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            self._file = _SQLiteFile(url.database, self._statements, engine.dialect)
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="vstreamer-writer")
        self._pending: list[Write] = []
        self._flusher: asyncio.Task[None] | None = None
        self._inline_scheduled = False
        self._busy_retries = 0
        """Tries in a row that found the SQLite file locked."""
        self.batches = 0
        """Transactions committed so far (a measure of how much writes were grouped)."""

    async def submit(self, write: Write) -> None:
        """Commit ``write`` with the next batch. Cancelling the caller does not cancel the write."""
        await self.enqueue(write)  # cancelling the caller cancels this notice only: the write stays queued

    def enqueue(self, write: Write) -> asyncio.Future[None]:
        """Queue ``write`` for the next batch; its future is done once it is committed (or failed)."""
        if self._closed:
            self._settle([write], StoreError("the store is closed"))
            return write.done
        self._pending.append(write)
        if self._file is not None:
            if (
                not self._inline_scheduled
            ):  # writes submitted in the same loop iteration share one transaction
                self._inline_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush_inline)
        elif self._flusher is None or self._flusher.done():
            batch, self._pending = self._pending, []
            self._flusher = asyncio.get_running_loop().create_task(self._flush(batch, self._start(batch)))
        return write.done

    def _flush_inline(self) -> None:
        self._inline_scheduled = False
        if not self._pending or (self._flusher is not None and not self._flusher.done()):
            return  # the writer thread is busy with a batch and takes the pending ones after it
        assert self._file is not None and self._executor is not None
        batch, self._pending = self._pending, []
        try:
            self.batches += 1
            committed: bool | None = self._file.commit_inline(batch)
        except Exception:  # noqa: BLE001 - a row SQLite cannot take (text it cannot encode) included
            committed = None  # the thread retries it, then write by write, and reports each failure
        if committed is False and self._busy_retries < BUSY_RETRIES and not self._closed:
            # Another writer's transaction (another worker's commit: tens of µs) holds the file: try again on the
            # loop in a moment, with what comes meanwhile, rather than hand the batch to the thread (~0.5 ms).
            self._busy_retries += 1
            self._pending[:0] = batch
            self._inline_scheduled = True
            asyncio.get_running_loop().call_later(BUSY_RETRY_S, self._flush_inline)
            return
        self._busy_retries = 0
        if not committed:
            self._flusher = asyncio.get_running_loop().create_task(self._flush(batch, self._start(batch)))
            return
        self._settle(batch, None)
        if self._file.checkpoint_due:
            self._executor.submit(self._file.checkpoint).add_done_callback(_log_failure)

    async def _flush(self, batch: list[Write], started: Awaitable[None]) -> None:
        while True:
            try:
                await _mapped(started)
            except StoreError:
                await self._one_by_one(batch)
            else:
                self._settle(batch, None)
            if not self._pending:
                return
            batch, self._pending = self._pending, []
            started = self._start(batch)

    async def _one_by_one(self, batch: list[Write]) -> None:
        for write in batch:
            try:
                await _mapped(self._start([write]))
            except StoreError as exc:
                self._settle([write], exc)
            else:
                self._settle([write], None)

    def _start(self, batch: list[Write]) -> Awaitable[None]:
        """Begin committing ``batch``: on the writer thread (SQLite) or the async engine (PostgreSQL)."""
        self.batches += 1
        if self._file is not None and self._executor is not None:
            return asyncio.get_running_loop().run_in_executor(self._executor, self._file.commit, batch)
        return self._commit_async(batch)

    async def _commit_async(self, batch: list[Write]) -> None:
        async with self._async_engine.begin() as connection:
            await connection.run_sync(self._statements.apply, batch)

    def _settle(self, writes: list[Write], error: BaseException | None) -> None:
        if error is None and self._on_committed is not None:
            self._on_committed(writes)
        _settle(writes, error)
        if self._on_settled is not None:
            for write in writes:
                if error is not None or write.notify:
                    self._on_settled(write, error)

    async def aclose(self) -> None:
        """Commit what is queued, then release the thread and the engine; later writes fail."""
        self._closed = True
        if self._file is not None and self._pending:
            self._flush_inline()  # scheduled for the next loop iteration: do it now, before the file closes
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._file is not None:
            self._file.close()


def _log_failure(done: Future[None]) -> None:
    if (error := done.exception()) is not None:
        logger.warning("checkpoint of the SQLite log failed (retried later): %s", error)


async def _mapped(commit: Awaitable[None]) -> None:
    """Any failure of a commit is a :class:`StoreError`: one that escaped would leave its writers waiting forever."""
    try:
        await commit
    except SessionGone:
        raise
    except Exception as exc:
        raise database_error(exc) from exc


def _settle(writes: list[Write], error: BaseException | None) -> None:
    for write in writes:
        if not write.done.done():
            if error is None:
                write.done.set_result(None)
            else:
                write.done.set_exception(error)
        if error is not None and not write.done.cancelled():
            write.done.exception()  # retrieved: nobody may be waiting any more, and that is no error

"""Group commit for the hot writes: new sessions and turns.

Every chat request commits its user message before generation and its reply when it ends. One transaction per
write (through the async ORM) cost ~2.7 ms each on SQLite; here, writes that arrive while a commit is running wait
for the next one, and a whole batch is one transaction of prebuilt Core statements. A caller's ``await`` still
returns only once its row is committed, so "stored before generation starts" holds.

SQLite batches run on one dedicated thread over a plain (synchronous) SQLAlchemy engine on the same file — no
``aiosqlite`` round trips per statement. PostgreSQL batches run on the async engine (asyncpg is natively async).
A batch that fails is retried write by write, so one bad row (a session deleted meanwhile) fails alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, bindparam, event, update
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from vstreamer.errors import StoreError
from vstreamer.store.database import sqlite_pragmas
from vstreamer.store.tables import MessageRow, SessionRow

logger = logging.getLogger(__name__)

_MESSAGES = MessageRow.__table__
_SESSIONS = SessionRow.__table__
MESSAGE_FIELDS = (
    "role", "content", "status", "prompt_tokens", "completion_tokens", "first_token_ms", "duration_ms",
    "error", "summary_id",
)  # fmt: skip


@dataclass(slots=True)
class Write:
    """One pending write: a new session (``session``) and/or a turn (``message``), and who waits for it."""

    session_id: str
    now: datetime
    session: dict[str, Any] | None = None
    message: dict[str, Any] | None = None
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class _Statements:
    """The batch's statements, built once per dialect (compiled once, then only parameters change)."""

    def __init__(self, dialect: str) -> None:
        insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
        self.session = insert(_SESSIONS).on_conflict_do_nothing(index_elements=["id"])
        upsert = insert(_MESSAGES)
        self.message = upsert.on_conflict_do_update(
            index_elements=["id"], set_={name: upsert.excluded[name] for name in MESSAGE_FIELDS}
        )
        self.touch = (
            update(_SESSIONS)
            .where(_SESSIONS.c.id == bindparam("sid"))
            .values(updated_at=bindparam("now", type_=_SESSIONS.c.updated_at.type))
        )

    def apply(self, connection: Connection, writes: Sequence[Write]) -> None:
        sessions = [w.session for w in writes if w.session is not None]
        messages = [w.message for w in writes if w.message is not None]
        if sessions:
            connection.execute(self.session, sessions)
        if messages:
            connection.execute(self.message, messages)
        latest: dict[str, datetime] = {}
        for w in writes:
            if w.message is not None:
                latest[w.session_id] = w.now
        if latest:
            connection.execute(self.touch, [{"sid": sid, "now": now} for sid, now in latest.items()])


class TurnWriter:
    """Queues writes and commits them in batches; ``await submit(...)`` returns once committed."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._async_engine = engine
        self._statements = _Statements(engine.dialect.name)
        self._sync_engine: Engine | None = None
        self._executor: ThreadPoolExecutor | None = None
        url = engine.url
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            sync_url = url.set(drivername="sqlite+pysqlite")
            self._sync_engine = create_sync_engine(sync_url, pool_size=1, max_overflow=0)
            event.listen(self._sync_engine, "connect", sqlite_pragmas)
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="vstreamer-writer")
        self._pending: list[Write] = []
        self._flusher: asyncio.Task[None] | None = None
        self.batches = 0
        """Transactions committed so far (a measure of how much writes were grouped)."""

    async def submit(self, write: Write) -> None:
        """Commit ``write`` with the next batch. Cancelling the caller does not cancel the write."""
        self._pending.append(write)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        await asyncio.shield(write.done)

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self._run(batch)
            except StoreError:
                await self._one_by_one(batch)
            else:
                _settle(batch, None)

    async def _one_by_one(self, batch: list[Write]) -> None:
        for write in batch:
            try:
                await self._run([write])
            except StoreError as exc:
                _settle([write], exc)
            else:
                _settle([write], None)

    async def _run(self, batch: list[Write]) -> None:
        self.batches += 1
        try:
            if self._sync_engine is not None and self._executor is not None:
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(self._executor, self._commit_sync, batch)
            else:
                async with self._async_engine.begin() as connection:
                    await connection.run_sync(self._statements.apply, batch)
        except SQLAlchemyError as exc:
            raise StoreError(f"database error: {type(exc).__name__}: {exc}") from exc

    def _commit_sync(self, batch: list[Write]) -> None:
        assert self._sync_engine is not None
        with self._sync_engine.begin() as connection:
            self._statements.apply(connection, batch)

    async def aclose(self) -> None:
        """Commit what is queued, then release the thread and the engine."""
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        if self._sync_engine is not None:
            self._sync_engine.dispose()


def _settle(writes: list[Write], error: BaseException | None) -> None:
    for write in writes:
        if not write.done.done():
            if error is None:
                write.done.set_result(None)
            else:
                write.done.set_exception(error)
        if error is not None:
            write.done.exception()  # retrieved: a caller that was cancelled meanwhile leaves no warning

"""The store's memory tables: the summary history of sessions and the facts remembered about viewers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING

from sqlalchemy import ColumnElement, delete, select

from vstreamer.engine.facts import Fact, ViewerKey
from vstreamer.store.database import dialect_insert, storable
from vstreamer.store.records import SummaryRecord, aware, utc_now
from vstreamer.store.tables import SummaryRow, ViewerFactRow

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

MAX_FACT_CHARS = 200


def _fact(row: ViewerFactRow) -> Fact:
    embedding = tuple(json.loads(row.embedding)) if row.embedding else None
    return Fact(
        ViewerKey(row.platform, row.user_id), row.fact, row.normalized, row.id,
        aware(row.created_at).timestamp(), row.session_id, row.turn_id, embedding,
    )  # fmt: skip


def _summary(row: SummaryRow) -> SummaryRecord:
    return SummaryRecord(row.id, row.session_id, row.covers_until_turn_id, row.text, aware(row.created_at))


class MemoryTables:
    """Mixed into :class:`vstreamer.store.Store`; every method is one short transaction."""

    def _tx(self) -> AbstractAsyncContextManager[AsyncSession]:
        raise NotImplementedError

    # --- summaries ------------------------------------------------------------------------------------

    async def _latest_summary(self, session: AsyncSession, session_id: str) -> SummaryRecord | None:
        query = (
            select(SummaryRow)
            .where(SummaryRow.session_id == session_id)
            .order_by(SummaryRow.created_at.desc())
            .limit(1)
        )
        row = (await session.scalars(query)).first()
        return None if row is None else _summary(row)

    async def _summary_history(self, session_id: str) -> list[SummaryRecord]:
        query = select(SummaryRow).where(SummaryRow.session_id == session_id).order_by(SummaryRow.created_at)
        async with self._tx() as session:
            return [_summary(r) for r in (await session.scalars(query)).all()]

    async def _get_summary(self, summary_id: str) -> SummaryRecord | None:
        async with self._tx() as session:
            row = await session.get(SummaryRow, summary_id)
        return None if row is None else _summary(row)

    # --- viewer facts ---------------------------------------------------------------------------------

    async def _add_facts(self, viewer: ViewerKey, facts: Sequence[Fact], keep: int) -> list[Fact]:
        """Insert the facts not yet known (by normalised text); keep only the newest ``keep`` per viewer."""
        now = utc_now()
        added: list[Fact] = []
        async with self._tx() as session:
            # Inserted unless known: another extraction for the viewer may store the same fact meanwhile (it made
            # this whole batch fail on the unique constraint, the new facts in it lost with the duplicate).
            insert = dialect_insert(session.get_bind().dialect.name)
            known = set((await session.scalars(select(ViewerFactRow.normalized).where(*_of(viewer)))).all())
            for fact in facts:
                normalized = storable(fact.normalized)[:200]
                if not normalized or normalized in known:
                    continue
                known.add(normalized)
                text = storable(fact.text)[:MAX_FACT_CHARS]
                embedding = json.dumps(list(fact.embedding)) if fact.embedding is not None else None
                row = {"id": fact.id, "platform": viewer.platform, "user_id": viewer.user_id, "fact": text,
                       "normalized": normalized, "session_id": fact.session_id, "turn_id": fact.turn_id,
                       "embedding": embedding, "created_at": now}  # fmt: skip
                made = await session.execute(insert(ViewerFactRow).values(row).on_conflict_do_nothing())
                if getattr(made, "rowcount", 0) == 1:
                    added.append(Fact(viewer, text, normalized, fact.id, now.timestamp(), fact.session_id,
                                      fact.turn_id, fact.embedding))  # fmt: skip
            if added:
                await _prune(session, viewer, keep)
        return added

    async def _viewer_facts(self, viewer: ViewerKey, limit: int) -> list[Fact]:
        query = (
            select(ViewerFactRow)
            .where(*_of(viewer))
            .order_by(ViewerFactRow.created_at.desc(), ViewerFactRow.id)
            .limit(limit)
        )
        async with self._tx() as session:
            return [_fact(r) for r in (await session.scalars(query)).all()]

    async def _delete_facts(self, viewer: ViewerKey, fact_id: str | None) -> int:
        query = delete(ViewerFactRow).where(*_of(viewer))
        if fact_id is not None:
            query = query.where(ViewerFactRow.id == fact_id)
        async with self._tx() as session:
            result = await session.execute(query)
        return int(getattr(result, "rowcount", 0) or 0)

    async def _export_facts(self, platform: str | None) -> list[Fact]:
        query = select(ViewerFactRow).order_by(
            ViewerFactRow.platform, ViewerFactRow.user_id, ViewerFactRow.created_at
        )
        if platform is not None:
            query = query.where(ViewerFactRow.platform == platform)
        async with self._tx() as session:
            return [_fact(r) for r in (await session.scalars(query)).all()]


def _of(viewer: ViewerKey) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    return ViewerFactRow.platform == viewer.platform, ViewerFactRow.user_id == viewer.user_id


async def _prune(session: AsyncSession, viewer: ViewerKey, keep: int) -> None:
    stale = (
        select(ViewerFactRow.id)
        .where(*_of(viewer))
        .order_by(ViewerFactRow.created_at.desc(), ViewerFactRow.id)
        .offset(keep)
    )
    ids = list((await session.scalars(stale)).all())
    if ids:
        await session.execute(delete(ViewerFactRow).where(ViewerFactRow.id.in_(ids)))

"""Group commit of turns (SQLite file and PostgreSQL): batching, waiting for locks, failures kept apart, cache."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from vstreamer.engine import Conversation, Turn
from vstreamer.engine.facts import Fact, ViewerKey
from vstreamer.errors import StoreError
from vstreamer.store import Store, open_store
from vstreamer.store.writer import Write


async def test_concurrent_turns_share_transactions(store: Store) -> None:
    record = await store.create_session("nova", owner="o")
    conversation = await store.load_conversation(record.id)
    turns = [Turn("user", f"message {i}") for i in range(60)]
    conversation.turns.extend(turns)
    before = store.writer.batches
    await asyncio.gather(*(store.save_turn(conversation, t) for t in turns))
    assert store.writer.batches - before < len(turns)  # grouped: fewer transactions than writes
    stored = await store.list_messages(record.id)
    assert sorted(t.content for t in stored) == sorted(t.content for t in turns)


async def test_times_are_stored_as_the_orm_stores_them(store: Store) -> None:
    """The group commit binds datetimes itself: a turn's time and the session's ``updated_at`` must read back as
    written, and on SQLite (where they are text, compared as text by ``ORDER BY``) look like the ORM's own."""
    record = await store.create_session("nova", owner="o")
    conversation = await store.load_conversation(record.id)
    conversation.turns.append(turn := Turn("assistant", "stored"))
    await store.save_turn(conversation, turn)
    [message] = await store.list_messages(record.id)
    assert message.created_at == pytest.approx(turn.created_at, abs=1e-6)
    updated = await store.get_session(record.id)
    assert updated is not None and updated.updated_at > record.created_at
    if store.engine.dialect.name == "sqlite":
        database = sqlite3.connect(str(store.engine.url.database))
        orm_made = database.execute("SELECT created_at FROM sessions").fetchone()[0]
        written = database.execute("SELECT created_at FROM messages").fetchone()[0]
        touched = database.execute("SELECT updated_at FROM sessions").fetchone()[0]
        database.close()
        shape = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}")
        assert shape.fullmatch(orm_made) and shape.fullmatch(written) and shape.fullmatch(touched)


async def test_one_bad_write_fails_alone(store: Store) -> None:
    record = await store.create_session("nova", owner="o")
    good = await store.load_conversation(record.id)
    ghost = Conversation("nova", id="no-such-session")  # its turns break the foreign key
    good.turns.append(ok := Turn("user", "kept"))
    results = await asyncio.gather(
        store.save_turn(ghost, Turn("user", "lost")), store.save_turn(good, ok), return_exceptions=True
    )
    assert isinstance(results[0], StoreError) and results[1] is None
    assert [t.content for t in await store.list_messages(record.id)] == ["kept"]


async def test_a_row_the_database_cannot_take_fails_alone_and_nobody_waits_forever(store: Store) -> None:
    """Text the driver cannot encode (a lone surrogate) fails its own write with a StoreError that names no values;
    before, on SQLite, the error escaped the batch and every writer in it waited forever."""
    record = await store.create_session("nova", owner="o")
    conversation = await store.load_conversation(record.id)
    conversation.turns.extend([bad := Turn("user", "secret \ud800 text"), ok := Turn("user", "kept")])
    results = await asyncio.wait_for(
        asyncio.gather(
            store.save_turn(conversation, bad), store.save_turn(conversation, ok), return_exceptions=True
        ),
        timeout=10,
    )
    assert isinstance(results[0], StoreError) and results[1] is None
    assert "secret" not in str(results[0])
    assert [t.content for t in await store.list_messages(record.id)] == ["kept"]


async def test_locked_sqlite_waits_without_blocking_the_loop(tmp_path: Path) -> None:
    store = await open_store(None, tmp_path)
    try:
        record = await store.create_session("nova", owner="o")
        conversation = await store.load_conversation(record.id)
        other = sqlite3.connect(tmp_path / "vstreamer.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        conversation.turns.append(turn := Turn("user", "waits for the lock"))
        saving = asyncio.create_task(store.save_turn(conversation, turn))
        ticks = 0
        started = time.perf_counter()
        while time.perf_counter() - started < 0.3:
            await asyncio.sleep(0.01)
            ticks += 1
        assert (
            not saving.done() and ticks >= 3
        )  # still waiting, and the loop kept running meanwhile (blocked: 0-1)
        other.execute("COMMIT")
        await asyncio.wait_for(saving, 5)
        assert [t.content for t in await store.list_messages(record.id)] == ["waits for the lock"]
        other.close()
    finally:
        await store.close()


async def test_cache_follows_writes_from_other_objects(store: Store) -> None:
    if not store.cache.enabled:
        pytest.skip("the session cache is off for this database (PostgreSQL default)")
    record = await store.create_session("nova", owner="o")
    cached = await store.load_conversation(record.id)
    assert await store.load_conversation(record.id) is cached  # one live object per session
    stranger = Conversation("nova", id=record.id)  # e.g. a second view of the session
    stranger.turns.append(turn := Turn("user", "from elsewhere"))
    await store.save_turn(stranger, turn)
    fresh = await store.load_conversation(record.id)
    assert fresh is not cached and [t.content for t in fresh.turns] == ["from elsewhere"]
    assert await store.delete_session(record.id)
    assert await store.get_session(record.id) is None


async def test_close_commits_what_is_queued(tmp_path: Path) -> None:
    store = await open_store(None, tmp_path)
    record = await store.create_session("nova", owner="o")
    conversation = await store.load_conversation(record.id)
    conversation.turns.append(turn := Turn("user", "last words"))
    saving = asyncio.ensure_future(store.save_turn(conversation, turn))
    await asyncio.sleep(0)  # queued, not yet committed
    await store.close()
    await saving
    reopened = await open_store(None, tmp_path)
    try:
        assert [t.content for t in await reopened.list_messages(record.id)] == ["last words"]
    finally:
        await reopened.close()


async def test_a_cancelled_caller_still_gets_its_write_committed(store: Store) -> None:
    record = await store.create_session("nova", owner="o")
    conversation = await store.load_conversation(record.id)
    conversation.turns.append(first := Turn("user", "the caller left"))
    ghost = Conversation("nova", id="no-such-session")
    leaving = [
        asyncio.create_task(store.save_turn(conversation, first)),
        asyncio.create_task(store.save_turn(ghost, Turn("user", "fails, and nobody is waiting"))),
    ]
    await asyncio.sleep(0)  # both queued for the next batch
    for task in leaving:
        task.cancel()
    await asyncio.gather(*leaving, return_exceptions=True)
    conversation.turns.append(second := Turn("user", "the next one"))
    await store.save_turn(conversation, second)
    assert [t.content for t in await store.list_messages(record.id)] == ["the caller left", "the next one"]


async def test_summaries_share_the_turns_transactions(store: Store) -> None:
    record = await store.create_session("nova", owner="o")
    conversation = await store.load_conversation(record.id)
    conversation.turns.append(turn := Turn("user", "hello"))
    await store.save_turn(conversation, turn)
    before = store.writer.batches
    texts = ["the first version", "the second version", "the third version"]
    ids = await asyncio.gather(*(store.save_summary(record.id, t, covers_until=turn.id) for t in texts))
    assert store.writer.batches - before < len(texts)  # grouped: fewer transactions than writes
    with pytest.raises(StoreError):
        await store.save_summary("no-such-session", "fails alone")
    history = await store.summary_history(record.id)
    assert [(s.id, s.text, s.covers_until_turn_id) for s in history] == [
        (i, t, turn.id) for i, t in zip(ids, texts, strict=True)
    ]
    reloaded = await store.load_conversation(record.id)
    assert reloaded.summary == texts[-1] and reloaded.summary_id == ids[-1]


async def test_a_summary_committed_twice_is_stored_once(store: Store) -> None:
    """A batch whose commit went through but whose acknowledgement was lost is retried write by write: its summary,
    stored already, must not fail the retry (it did, on the primary key)."""
    record = await store.create_session("nova", owner="o")
    now = datetime.now(UTC)
    row = {"id": "summary-1", "session_id": record.id, "covers_until_turn_id": None, "text": "they met",
           "created_at": now}  # fmt: skip
    for _ in range(2):
        await store.writer.submit(Write(record.id, now, summary=dict(row)))
    assert [s.id for s in await store.summary_history(record.id)] == ["summary-1"]


async def test_facts_known_already_leave_the_viewer_cache_alone(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not store.cache.enabled:
        pytest.skip("the session cache is off for this database (PostgreSQL default)")
    viewer = ViewerKey("web", "u1")
    await store.add_facts(viewer, [Fact(viewer, "喜欢猫")])
    known = await store.viewer_facts(viewer)
    reads = 0
    read = store._viewer_facts

    async def counted(*args: Any, **kwargs: Any) -> list[Fact]:
        nonlocal reads
        reads += 1
        return await read(*args, **kwargs)

    monkeypatch.setattr(store, "_viewer_facts", counted)
    assert await store.add_facts(viewer, [Fact(viewer, "喜欢猫")]) == []
    assert await store.viewer_facts(viewer) == known and reads == 0  # still served from memory
    await store.add_facts(viewer, [Fact(viewer, "下周考试")])
    assert [f.text for f in await store.viewer_facts(viewer)] == ["下周考试", "喜欢猫"] and reads == 1


async def test_writes_after_close_fail_at_once(store: Store) -> None:
    """Before, on SQLite, a write queued after close waited forever (its batch could no longer be committed)."""
    record = await store.create_session("nova", owner="o")
    conversation = await store.load_conversation(record.id)
    await store.close()
    conversation.turns.append(late := Turn("user", "late"))
    async with asyncio.timeout(5):
        with pytest.raises(StoreError, match="closed"):
            await store.save_turn(conversation, late)
        with pytest.raises(StoreError, match="closed"):
            await store.save_summary(record.id, "late")
        with pytest.raises(StoreError, match="closed"):
            await store.create_session("nova", owner="o")
    assert store.cache.sessions.get(record.id) is None  # nor is the turn kept in memory

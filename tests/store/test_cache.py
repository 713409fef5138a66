"""The session cache stays what the database holds: after failed writes, deletes and writes that race a read."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from vstreamer.engine import Conversation, Turn
from vstreamer.engine.facts import Fact, ViewerKey
from vstreamer.errors import StoreError
from vstreamer.store import Store
from vstreamer.store.cache import SessionCache
from vstreamer.store.records import SessionRecord


@pytest.fixture
async def cached(store: Store) -> AsyncIterator[Store]:
    """The store with its session cache on, also on PostgreSQL (where it is off by default)."""
    if store.cache.enabled:
        yield store
        return
    with_cache = Store(store.engine, session_cache=100)
    yield with_cache
    await with_cache.writer.aclose()  # (the engine is the fixture's)


def _contents(conversation: Conversation) -> list[str]:
    return [t.content for t in conversation.turns]


async def test_a_turn_the_database_refuses_leaves_the_cache(cached: Store) -> None:
    """The engine appends a turn before it is stored; when its write fails (text the database cannot take, a lock
    held too long), the cached conversation held a turn the database did not, and every later prompt carried it."""
    record = await cached.create_session("nova", owner="o")
    conversation = await cached.load_conversation(record.id)
    conversation.turns.append(kept := Turn("user", "kept"))
    await cached.save_turn(conversation, kept)
    conversation.turns.append(bad := Turn("user", "cannot \ud800 store"))
    with pytest.raises(StoreError):
        await cached.save_turn(conversation, bad)
    reloaded = await cached.load_conversation(record.id)
    assert reloaded is not conversation and _contents(reloaded) == ["kept"]
    assert await cached.load_conversation(record.id) is reloaded  # cached again


async def test_a_session_deleted_while_it_is_read_does_not_come_back(
    cached: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache miss read the session, the session was deleted, then the read cached what it had found."""
    record = await cached.create_session("nova", owner="o")
    cached.cache.sessions.pop(record.id)  # evicted, or a restart
    read = cached._read_conversation

    async def deleted_meanwhile(
        session_id: str, recent: int, **options: bool
    ) -> tuple[SessionRecord, Conversation] | None:
        found = await read(session_id, recent, **options)
        assert await cached.delete_session(session_id)
        return found

    monkeypatch.setattr(cached, "_read_conversation", deleted_meanwhile)
    assert await cached.open_conversation(record.id) is not None  # what it read before the delete
    monkeypatch.undo()
    assert await cached.get_session(record.id) is None
    assert await cached.open_conversation(record.id) is None


async def test_a_read_that_misses_a_write_around_the_cache_is_not_kept(
    cached: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache miss read the session before another conversation object's turn was committed."""
    record = await cached.create_session("nova", owner="o")
    cached.cache.sessions.pop(record.id)
    stranger = Conversation("nova", id=record.id)  # e.g. an object loaded before an eviction
    stranger.turns.append(turn := Turn("user", "from elsewhere"))
    read = cached._read_conversation
    saving: list[asyncio.Future[None]] = []

    async def committed_meanwhile(
        session_id: str, recent: int, **options: bool
    ) -> tuple[SessionRecord, Conversation] | None:
        found = await read(session_id, recent, **options)
        saving.append(cached.queue_turn(stranger, turn))
        await saving[0]
        return found

    monkeypatch.setattr(cached, "_read_conversation", committed_meanwhile)
    found = await cached.open_conversation(record.id)
    assert found is not None and _contents(found[1]) == []  # read before the commit
    monkeypatch.undo()
    assert _contents(await cached.load_conversation(record.id)) == ["from elsewhere"]


async def test_facts_forgotten_while_they_are_read_stay_forgotten(
    cached: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "Forget me" while a cache miss reads the viewer's facts: the read must not cache them again."""
    viewer = ViewerKey("web", "u1")
    await cached.add_facts(viewer, [Fact(viewer, "喜欢猫")])
    read = cached._viewer_facts

    async def forgotten_meanwhile(*args: Any) -> list[Fact]:
        found = await read(*args)
        assert await cached.delete_facts(viewer) == 1
        return found

    monkeypatch.setattr(cached, "_viewer_facts", forgotten_meanwhile)
    assert [f.text for f in await cached.viewer_facts(viewer)] == ["喜欢猫"]  # read before the delete
    monkeypatch.undo()
    assert await cached.viewer_facts(viewer) == []


def test_changes_are_remembered_for_reads_in_flight_within_bounds() -> None:
    """Each key's latest change is kept for reads still running; once too many keys changed, the oldest are dropped
    and any read older than them is not kept, never wrongly kept."""
    cache = SessionCache(10)
    token = cache.token()
    cache.changed("a")
    assert not cache.current("a", token) and cache.current("b", token)
    assert cache.current("a", cache.token())
    late = cache.token()
    for i in range(SessionCache.REMEMBERED_CHANGES + 1):
        cache.changed(f"other {i}")
    assert not cache.current("b", token) and not cache.current("b", late)
    assert cache.current("b", cache.token())

"""Regressions a review found in the store."""

from __future__ import annotations

from vstreamer.store import Store


async def test_a_delete_by_someone_else_leaves_the_cached_conversation(store: Store) -> None:
    """A refused delete evicted the owner's cached conversation: its next request read a fresh copy, whose lock was
    not the one a reply in flight held, so two replies ran at once in one session."""
    cached = store if store.cache.enabled else Store(store.engine, session_cache=100)
    try:
        record = await cached.create_session("nova", owner="alice")
        conversation = await cached.load_conversation(record.id)
        assert not await cached.delete_session(record.id, owner="mallory")
        assert await cached.load_conversation(record.id) is conversation
        assert await cached.delete_session(record.id, owner="alice")
        assert await cached.open_conversation(record.id) is None
    finally:
        if cached is not store:
            await cached.writer.aclose()  # (the engine is the fixture's)

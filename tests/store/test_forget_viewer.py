""" "Forget me" in the store (SQLite file and PostgreSQL, cache on and off): a viewer's sessions go whole."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from vstreamer.engine import Turn, ViewerKey
from vstreamer.errors import StoreError
from vstreamer.store import ErasedTalk, Store

ALICE = ViewerKey("bilibili", "111")


@pytest.fixture(params=["cache", "no-cache"])
async def under_test(store: Store, request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """The fixture's store with its session cache on, then off (each database's default is one of them)."""
    if store.cache.enabled == (request.param == "cache"):
        yield store
        return
    other = Store(store.engine, session_cache=100 if request.param == "cache" else 0)
    yield other
    await other.writer.aclose()  # (the engine is the fixture's)


async def _session(store: Store, sid: str, platform: str, viewer: str | None, *said: str) -> None:
    await store.create_session("xiaoxing", owner="o", platform=platform, viewer_id=viewer, session_id=sid)
    conversation = await store.load_conversation(sid)
    for text in said:
        for turn in (Turn("user", text), Turn("assistant", f"收到：{text}")):
            await store.save_turn(conversation, conversation.add(turn))


async def test_the_viewers_sessions_go_with_their_messages_and_summaries(under_test: Store) -> None:
    store = under_test
    await _session(store, "a1", "bilibili", "111", "我叫阿明", "我住在杭州")
    await _session(store, "a2", "bilibili", "111", "明天考试")
    await _session(store, "b1", "bilibili", "222", "我是小红")
    await _session(store, "d1", "douyin", "111", "另一个平台的 111")  # another platform's viewer 111
    first = (await store.list_messages("a1"))[0]
    await store.save_summary("a1", "阿明住在杭州", covers_until=first.id)
    await store.save_summary("a1", "阿明住在杭州，明天考试", covers_until=first.id)
    held = await store.load_conversation(
        "a1"
    )  # cached (cache on) or held by a caller: either way not served again

    assert await store.delete_viewer_sessions(ALICE) == ErasedTalk(sessions=2, messages=6, summaries=2)
    for sid in ("a1", "a2"):
        assert await store.open_conversation(sid) is None
        assert await store.get_session(sid) is None
        assert await store.list_messages(sid) == [] and await store.summary_history(sid) == []
    with pytest.raises(StoreError):
        await store.load_conversation("a1")
    assert held.turns  # a caller's own object is its own; the store hands it out no more
    assert [t.content for t in await store.list_messages("b1")] == ["我是小红", "收到：我是小红"]
    assert len(await store.list_messages("d1")) == 2
    assert await store.delete_viewer_sessions(ALICE) == ErasedTalk(0, 0, 0)


async def test_a_session_that_took_the_viewer_on_goes_too_after_a_restart(under_test: Store) -> None:
    """A session stored without a viewer, then named by one: what they said in it is theirs to have forgotten, by
    whatever instance forgets them (here a fresh one over the same database, as after a restart)."""
    store = under_test
    await _session(store, "anon", "bilibili", None)
    conversation = await store.load_conversation("anon")
    assert await store.take_viewer("anon", ALICE.user_id) == ALICE.user_id
    assert conversation.viewer_id == ALICE.user_id  # the copy this process holds took it on too
    await store.save_turn(conversation, conversation.add(Turn("user", "我叫阿明")))
    await _session(store, "other", "bilibili", None, "别人的话")

    restarted = Store(store.engine, session_cache=store.cache.sessions.size)
    try:
        assert (await restarted.load_conversation("anon")).viewer_id == ALICE.user_id
        record = await restarted.get_session("anon")
        assert record is not None and record.viewer_id == ALICE.user_id
        assert await restarted.delete_viewer_sessions(ALICE) == ErasedTalk(
            sessions=1, messages=1, summaries=0
        )
    finally:
        await restarted.writer.aclose()
    # (This instance's cache still holds it: a cached session is one instance's, see vstreamer.store.cache.)
    assert await store.list_messages("anon") == []
    assert len(await store.list_messages("other")) == 2


async def test_a_stored_viewer_is_kept_and_of_racing_viewers_one_wins(under_test: Store) -> None:
    """Requests naming different viewers race for a viewer-less session, in this instance and another over the same
    database: every one is told the same winner (the gateway refuses the others), and a later one changes nothing."""
    store = under_test
    await _session(store, "anon", "bilibili", None)
    conversation = await store.load_conversation("anon")
    other = Store(store.engine, session_cache=store.cache.sessions.size)
    try:
        claims = [(store if i % 2 else other).take_viewer("anon", f"v{i}") for i in range(8)]
        winners = set(await asyncio.gather(*claims))
        assert len(winners) == 1 and winners <= {f"v{i}" for i in range(8)}
        (winner,) = winners
        assert await store.take_viewer("anon", "late") == winner
        record = await store.get_session("anon")
        assert conversation.viewer_id == winner and record is not None and record.viewer_id == winner
        restarted = Store(store.engine, session_cache=0)
        assert (await restarted.load_conversation("anon")).viewer_id == winner
        await restarted.writer.aclose()
    finally:
        await other.writer.aclose()
    assert await store.take_viewer("nothing-here", "v0") is None


async def test_a_reply_in_flight_does_not_keep_the_forgotten_session(under_test: Store) -> None:
    """A session whose reply is being made is shared through the live registry, whatever the cache does: once
    forgotten, the next request finds no session (and makes a new, empty one), and the reply is not stored."""
    store = under_test
    await _session(store, "a1", "bilibili", "111", "我叫阿明")
    conversation = await store.load_conversation("a1")
    async with conversation.replying:
        user = conversation.add(Turn("user", "我住在杭州"))
        await store.save_turn(conversation, user)
        await store.delete_viewer_sessions(ALICE)
        assert await store.open_conversation("a1") is None
        with pytest.raises(StoreError):
            await store.save_turn(conversation, conversation.add(Turn("assistant", "收到：我住在杭州")))
    await store.create_session("xiaoxing", owner="o", platform="bilibili", viewer_id="111", session_id="a1")
    assert (await store.load_conversation("a1")).turns == []
    assert await store.list_messages("a1") == []

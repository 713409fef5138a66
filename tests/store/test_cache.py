"""The session cache stays what the database holds: after failed writes, deletes and writes that race a read."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import pytest

from vstreamer.engine import ContextBudget, Conversation, DialogueEngine, Turn
from vstreamer.engine.facts import Fact, ViewerKey
from vstreamer.errors import StoreError
from vstreamer.llm import FakeBackend
from vstreamer.llm.base import ChatMessage, Delta, SamplingParams
from vstreamer.persona import PersonaLibrary
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


class HeldFirstReply(FakeBackend):
    """Streams the first reply only once ``go`` is set (``streaming`` tells it has begun)."""

    def __init__(self) -> None:
        super().__init__()
        self.streaming, self.go = asyncio.Event(), asyncio.Event()

    async def stream(
        self, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> AsyncGenerator[Delta, None]:
        if not self.streaming.is_set():
            self.streaming.set()
            await self.go.wait()
        async for delta in super().stream(messages, params):
            yield delta


async def test_a_session_evicted_while_it_replies_still_answers_one_message_at_a_time(store: Store) -> None:
    """Replies take turns on the conversation's lock. Other sessions (each stateless API request makes one) evicted
    a session from the cache while its reply streamed; the next message on it read a fresh copy, whose lock was
    free: it was answered alongside the first, its prompt joining both messages and missing the first reply."""
    small = Store(store.engine, session_cache=2)
    persona = PersonaLibrary(None).get("nova")
    backend = HeldFirstReply()
    engine = DialogueEngine(backend, ContextBudget(4096, 256), store=small)

    async def ask(conversation: Conversation, text: str) -> str:
        return "".join([e.text async for e in engine.reply(conversation, persona, text) if e.kind == "delta"])

    record = await small.create_session(persona.id, owner="o")
    try:
        first = asyncio.create_task(ask(await small.load_conversation(record.id), "first message"))
        await backend.streaming.wait()
        for _ in range(2):
            await small.create_session(persona.id, owner="o")
        assert small.cache.conversation(record.id) is None  # evicted mid-reply
        # The viewer's next message, read as the gateway reads every request's.
        second = asyncio.create_task(ask(await small.load_conversation(record.id), "second message"))
        await asyncio.sleep(0.05)  # the second reply's chance to start, were it not queued behind the first
        backend.go.set()
        assert await asyncio.gather(first, second) == ["收到：first message", "收到：second message"]
    finally:
        await engine.aclose()
        await small.writer.aclose()  # (the engine is the fixture's)
    history = [(m.role, m.content) for m in backend.requests[1][1:-1]]
    assert history == [
        ("user", "first message"),
        ("assistant", "收到：first message"),
        ("user", "second message"),
    ]
    stored = [t.content for t in await store.list_messages(record.id)]
    assert stored == ["first message", "收到：first message", "second message", "收到：second message"]

"""The store against real databases: a SQLite file and a PostgreSQL server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from vstreamer.engine import ContextBudget, Conversation, DialogueEngine, MemoryManager, Turn
from vstreamer.errors import BackendUnavailable, ConfigError, PersonaError, StoreError
from vstreamer.gateway.catalog import PersonaCatalog
from vstreamer.gateway.errors import APIError
from vstreamer.llm import FakeBackend
from vstreamer.llm.base import ChatMessage, SamplingParams
from vstreamer.persona import PersonaLibrary
from vstreamer.store import Store, open_store
from vstreamer.store.database import create_engine, default_url, migrate


async def test_sessions_are_per_owner(store: Store) -> None:
    alice = await store.create_session("xiaoxing", owner="alice", title="hi")
    await store.create_session("nova", owner="bob")
    assert [s.id for s in await store.list_sessions(owner="alice")] == [alice.id]
    assert await store.get_session(alice.id, owner="bob") is None
    assert (await store.get_session(alice.id, owner="alice")) == alice
    assert not await store.delete_session(alice.id, owner="bob")
    assert await store.delete_session(alice.id, owner="alice")
    assert await store.get_session(alice.id) is None


async def test_deleting_someone_elses_session_deletes_nothing(store: Store) -> None:
    """Refused for its owner's sake, a delete kept the session but wiped its messages and summaries all the same."""
    record = await store.create_session("nova", owner="alice", session_id="alices")
    conversation = await store.load_conversation(record.id)
    for text in ("hello", "hi"):
        turn = conversation.add(Turn("user", text))
        await store.save_turn(conversation, turn)
    await store.save_summary(record.id, "they said hello", covers_until=conversation.turns[0].id)
    assert not await store.delete_session(record.id, owner="mallory")
    reloaded = await store.load_conversation(record.id)
    assert [t.content for t in reloaded.turns] == ["hello", "hi"]
    assert reloaded.summary == "they said hello"


@pytest.mark.parametrize("cached", [True, False], ids=["cache", "no-cache"])
async def test_a_named_session_made_twice_at_once_stays_its_first_makers(store: Store, cached: bool) -> None:
    """Two owners naming one new session at the same moment: the second insert is a no-op, and both are told the
    stored owner (before, without the session cache, the second was handed a record with its own name on it)."""
    under_test = store if cached else Store(store.engine, session_cache=0)
    for i in range(5):
        made = await asyncio.gather(
            *(
                under_test.create_session("nova", owner=who, session_id=f"race-{i}")
                for who in ("alice", "bob")
            )
        )
        stored = await under_test.get_session(f"race-{i}")
        assert stored is not None and {r.owner for r in made} == {stored.owner}
    if under_test is not store:
        await under_test.writer.aclose()  # (the engine is the fixture's)


@pytest.mark.parametrize("cached", [True, False], ids=["cache", "no-cache"])
async def test_naming_a_stored_session_answers_with_the_stored_one(store: Store, cached: bool) -> None:
    """A session made earlier (here by another store on the database: not in this one's cache) is not remade by a
    caller naming it: the insert is a no-op, and the caller hears the stored owner and persona."""
    await store.create_session("nova", owner="alice", session_id="kept-1")
    other = Store(store.engine, session_cache=1000 if cached else 0)
    try:
        record = await other.create_session("xiaoxing", owner="bob", session_id="kept-1")
        assert (record.owner, record.persona_id) == ("alice", "nova")
        made = await other.create_session("xiaoxing", owner="bob", session_id="new-1")
        assert (made.owner, made.persona_id) == ("bob", "xiaoxing")
        assert (await store.get_session("new-1")) == made
    finally:
        await other.writer.aclose()  # (the engine is the fixture's)


async def test_a_new_named_session_is_made_without_reading_the_database(tmp_path: Path) -> None:
    """The writer tells whether the session's row was made: a new viewer's session costs its insert, not also a
    read of what was just written."""
    store = await open_store(None, tmp_path)
    reads: list[str] = []

    def record_statement(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            reads.append(statement)

    try:
        event.listen(store.engine.sync_engine, "before_cursor_execute", record_statement)
        record = await store.create_session("nova", owner="o", session_id="viewer-1")
        conversation = await store.load_conversation("viewer-1")
        event.remove(store.engine.sync_engine, "before_cursor_execute", record_statement)
        assert reads == []
        assert record.owner == "o" and conversation.turns == []
        assert await store.get_session("viewer-1") == record
    finally:
        await store.close()


async def test_turns_keep_their_order_when_the_clock_steps_back(store: Store) -> None:
    """Turns are read back by time: one made after the wall clock stepped back (or in the same microsecond as the
    last) still comes after the turns before it."""
    record = await store.create_session("nova", owner="o")
    conversation = await store.load_conversation(record.id)
    made = [
        conversation.add(Turn("user", "first", created_at=2_000_000_000.0)),
        conversation.add(Turn("assistant", "second", created_at=1_000_000_000.0)),  # the clock stepped back
        conversation.add(Turn("user", "third", created_at=1_000_000_000.0)),  # the same instant
    ]
    assert [t.created_at for t in made] == sorted({t.created_at for t in made})
    for turn in made:
        await store.save_turn(conversation, turn)
    loaded = await store.load_conversation(record.id, recent=10)
    assert [t.content for t in loaded.turns] == ["first", "second", "third"]


async def test_turns_round_trip_with_status_and_order(store: Store) -> None:
    record = await store.create_session("xiaoxing", owner="alice", user_name="小明")
    conversation = await store.load_conversation(record.id)
    turns = [Turn("user", "你好"), Turn("assistant", "嗨～", status="interrupted"), Turn("user", "again")]
    for turn in turns:
        await store.save_turn(conversation, turn)
    turns[1].content, turns[1].status = "嗨～欢迎", "complete"
    await store.save_turn(conversation, turns[1])  # an update, not a second row
    loaded = await store.load_conversation(record.id)
    assert loaded.user_name == "小明"
    assert [(t.id, t.content, t.status) for t in loaded.turns] == [
        (turns[0].id, "你好", "complete"),
        (turns[1].id, "嗨～欢迎", "complete"),
        (turns[2].id, "again", "complete"),
    ]
    assert [t.content for t in (await store.load_conversation(record.id, recent=2)).turns] == [
        "嗨～欢迎",
        "again",
    ]
    assert await store.count_messages(record.id) == 3


@pytest.mark.parametrize("user_commit", ["before", "overlap"])
async def test_engine_commits_user_turn_before_generation(store: Store, user_commit: str) -> None:
    persona = PersonaLibrary(None).get("xiaoxing")
    engine = DialogueEngine(
        FakeBackend(delay=0.01),
        ContextBudget(4096, 256),
        store=store,
        user_commit=user_commit,  # type: ignore[arg-type]
    )
    record = await store.create_session(persona.id, owner="alice")
    conversation = await store.load_conversation(record.id)
    stream = engine.reply(conversation, persona, "one two three four five six")
    await anext(stream)  # started: the prompt is built
    if user_commit == "overlap":
        await anext(stream)  # the first text: only released once the user's message is stored
    stored = [t for t in await store.list_messages(record.id) if t.role == "user"]
    assert [(t.role, t.content) for t in stored] == [("user", "one two three four five six")]
    async for _ in stream:
        pass
    reply = (await store.list_messages(record.id))[-1]
    assert (reply.role, reply.status, reply.content) == (
        "assistant",
        "complete",
        "收到：one two three four five six",
    )
    assert reply.duration_ms is not None and reply.first_token_ms is not None and reply.usage is not None


@pytest.mark.parametrize("answer", ["收到：在吗", ""])
async def test_a_reply_is_stored_by_the_time_it_is_announced_finished(store: Store, answer: str) -> None:
    """Whoever hears that a reply ended (the gateway's ``[DONE]``) and reads the session back finds the message and
    the reply, in order; also when the reply has no text (its user message's commit was never waited for)."""
    persona = PersonaLibrary(None).get("xiaoxing")
    engine = DialogueEngine(FakeBackend(lambda _: answer), ContextBudget(4096, 256), store=store)
    record = await store.create_session(persona.id, owner="alice")
    conversation = await store.load_conversation(record.id)
    async with contextlib.aclosing(engine.reply(conversation, persona, "在吗")) as events:
        async for event in events:
            if event.kind == "finished":
                stored = await store.list_messages(record.id)
                assert [(t.role, t.status, t.content) for t in stored] == [
                    ("user", "complete", "在吗"), ("assistant", "complete", answer),
                ]  # fmt: skip
                assert stored[-1].duration_ms is not None
                break
        else:
            pytest.fail("the reply never finished")


async def test_updated_at_follows_the_replies(store: Store) -> None:
    """The user's message is committed without touching its session (it is on the path of the reply's first text);
    the reply, always saved after it, moves ``updated_at`` — in the database and in the cache alike."""
    record = await store.create_session("nova", owner="alice")
    conversation = await store.load_conversation(record.id)
    await store.save_turn(conversation, Turn("user", "hello"))
    assert (await store.get_session(record.id)).updated_at == record.updated_at  # type: ignore[union-attr]
    await store.save_turn(conversation, Turn("assistant", "hi"))
    touched = await store.get_session(record.id)
    assert touched is not None and touched.updated_at > record.updated_at
    listed = await store.list_sessions(owner="alice")
    assert [(s.id, s.updated_at) for s in listed] == [(record.id, touched.updated_at)]


async def test_overlapped_user_commit_waits_until_the_request_is_out(store: Store) -> None:
    """The commit runs at the turn's first wait, so it never holds back the request upstream: the memory lookup (a
    cache hit from the second turn on) and the prompt do not yield to it first."""
    if not store.cache.enabled:
        pytest.skip(
            "no cache for this database (PostgreSQL default): the memory read waits, and the commit with it"
        )
    persona = PersonaLibrary(None).get("xiaoxing")
    committed_at_request: list[int] = []

    class Recording(FakeBackend):
        def stream(self, messages, params):  # type: ignore[no-untyped-def]
            committed_at_request.append(store.writer.batches)
            return super().stream(messages, params)

    backend = Recording()
    budget = ContextBudget(4096, 256)
    engine = DialogueEngine(backend, budget, store=store, memory=MemoryManager(backend, budget, facts=store))
    record = await store.create_session(persona.id, owner="o", platform="bilibili", viewer_id="7")
    conversation = await store.load_conversation(record.id)
    before: list[int] = []
    for text in ("第一条", "第二条"):
        before.append(store.writer.batches)
        async for _ in engine.reply(conversation, persona, text):
            pass
    # The second turn: nothing was committed before its request went out.
    assert committed_at_request[1] == before[1]
    stored = [t.content for t in await store.list_messages(record.id) if t.role == "user"]
    assert stored == ["第一条", "第二条"]
    await engine.aclose()


async def test_overlapped_user_message_is_queued_once_the_request_is_out(store: Store) -> None:
    """Queueing the user's message is off the request's way too (a turn, a write and its future): it happens at the
    turn's first wait, and the first text still waits for its commit."""
    persona = PersonaLibrary(None).get("xiaoxing")
    order: list[str] = []

    class Recording(FakeBackend):
        def stream(self, messages, params):  # type: ignore[no-untyped-def]
            order.append("request")
            return super().stream(messages, params)

    queue_turn = store.queue_turn

    def recording_queue(
        conversation: Conversation, turn: Turn, done: asyncio.Future[None] | None = None
    ) -> asyncio.Future[None]:
        order.append(f"queued {turn.role}")
        return queue_turn(conversation, turn, done)

    store.queue_turn = recording_queue  # type: ignore[method-assign]
    engine = DialogueEngine(Recording(), ContextBudget(4096, 256), store=store)
    record = await store.create_session(persona.id, owner="o")
    conversation = await store.load_conversation(record.id)
    async with contextlib.aclosing(engine.reply(conversation, persona, "第一条")) as stream:
        while (await anext(stream)).kind != "delta":
            pass
        assert order == ["request", "queued user"]
        # Stored before the first text.
        assert [t.content for t in await store.list_messages(record.id)] == ["第一条"]


async def test_cancelled_and_failed_replies_are_stored_with_partial_text(store: Store) -> None:
    persona = PersonaLibrary(None).get("nova")
    record = await store.create_session(persona.id, owner="alice")
    conversation = await store.load_conversation(record.id)
    slow = DialogueEngine(FakeBackend(delay=0.02), ContextBudget(4096, 256), store=store)

    async def consume() -> None:
        async for _ in slow.reply(conversation, persona, "a b c d e f g h i j k l m n o p q r"):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.2)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    failing = DialogueEngine(FakeBackend(fail_after=5), ContextBudget(4096, 256), store=store)
    with pytest.raises(BackendUnavailable):
        async for _ in failing.reply(conversation, persona, "x y z w"):
            pass
    stored = await store.list_messages(record.id)
    assert [t.status for t in stored] == ["complete", "interrupted", "complete", "failed"]
    assert stored[1].content and "收到：a b c d e f g h i j k l m n o p q r".startswith(stored[1].content)
    assert stored[3].content == "收到：x y" and stored[3].error


async def test_api_keys_hashed_and_revocable(store: Store) -> None:
    record, key = await store.create_api_key("ci")
    assert key.startswith("vs-") and len(key) > 40
    assert (await store.verify_api_key(key)) == record
    assert await store.verify_api_key(key + "x") is None
    assert all(key not in (k.prefix + k.name) for k in await store.list_api_keys())
    assert await store.revoke_api_key(record.id)
    assert await store.verify_api_key(key) is None


async def test_reopening_keeps_data_and_migrations_are_idempotent(tmp_path: Path) -> None:
    first = await open_store(None, tmp_path)
    record = await first.create_session("xiaoxing", owner="a")
    await first.close()
    second = await open_store(f"sqlite:///{tmp_path / 'vstreamer.db'}", tmp_path)
    assert await second.get_session(record.id) is not None
    await second.close()


async def test_bad_urls_and_unreachable_databases_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unsupported database"):
        await open_store("mysql://x/y", tmp_path)
    with pytest.raises(StoreError, match="cannot open"):
        await open_store("postgresql://nobody@127.0.0.1:1/none", tmp_path)


async def test_a_database_gone_away_is_a_store_error_on_every_call() -> None:
    """A PostgreSQL server that stopped answering after the store was opened: reads fail with a ``StoreError`` too
    (the driver's own ``ConnectionRefusedError`` came through them, a 500 from the gateway instead of a 503)."""
    store = Store(create_engine("postgresql://nobody@127.0.0.1:1/none"))
    try:
        for call in (
            lambda: store.get_session("x"),
            lambda: store.open_conversation("x"),
            lambda: store.list_sessions(owner="o"),
            store.ping,
        ):
            with pytest.raises(StoreError):
                await call()
    finally:
        await store.close()


async def test_conversation_id_must_exist(store: Store) -> None:
    with pytest.raises(StoreError):
        await store.load_conversation("missing")
    conversation = Conversation("xiaoxing", id="missing")
    with pytest.raises(StoreError):
        await store.save_turn(conversation, Turn("user", "orphan"))


async def test_a_user_message_the_database_refuses_fails_the_reply_before_any_text(store: Store) -> None:
    """The real store's queued commit: the session was deleted meanwhile, so the message cannot be stored (its
    foreign key), and nothing of the reply is shown."""
    persona = PersonaLibrary(None).get("nova")
    record = await store.create_session(persona.id, owner="alice")
    conversation = await store.load_conversation(record.id)
    assert await store.delete_session(record.id, owner="alice")
    engine = DialogueEngine(FakeBackend(), ContextBudget(4096, 256), store=store)
    shown: list[str] = []
    with pytest.raises(StoreError):
        async for event in engine.reply(conversation, persona, "hello there"):
            if event.kind == "delta":
                shown.append(event.text)
    assert shown == [] and await store.count_messages(record.id) == 0


async def test_user_message_that_cannot_be_queued_fails_the_reply_before_any_text() -> None:
    # Queued at the turn's first wait: a store that refuses it then (closed meanwhile) fails the reply, never hangs it.
    class ClosedQueue:
        def __init__(self) -> None:
            self.saved: list[Turn] = []

        def queue_turn(
            self, conversation: Conversation, turn: Turn, done: asyncio.Future[None] | None = None
        ) -> asyncio.Future[None]:
            raise StoreError("the store is closed")

        async def save_turn(self, conversation: Conversation, turn: Turn) -> None:
            self.saved.append(turn)

    persona = PersonaLibrary(None).get("nova")
    store = ClosedQueue()
    engine = DialogueEngine(FakeBackend(), ContextBudget(4096, 256), store=store)
    shown: list[str] = []
    with pytest.raises(StoreError, match="closed"):
        async with asyncio.timeout(5):
            async for event in engine.reply(Conversation(persona.id), persona, "hello there"):
                if event.kind == "delta":
                    shown.append(event.text)
    assert shown == []
    assert [(t.role, t.status) for t in store.saved] == [("assistant", "failed")]


async def test_failed_user_commit_fails_the_reply_before_any_text() -> None:
    class BrokenStore:
        def __init__(self) -> None:
            self.saved: list[Turn] = []

        async def save_turn(self, conversation: Conversation, turn: Turn) -> None:
            await asyncio.sleep(0.05)  # slower than the prompt and the first token
            if turn.role == "user":
                raise StoreError("database is locked")
            self.saved.append(turn)

    persona = PersonaLibrary(None).get("nova")
    store = BrokenStore()
    engine = DialogueEngine(FakeBackend(), ContextBudget(4096, 256), store=store)
    shown: list[str] = []
    with pytest.raises(StoreError):
        async for event in engine.reply(Conversation(persona.id), persona, "hello there"):
            if event.kind == "delta":
                shown.append(event.text)
    assert shown == []
    assert [(t.role, t.status) for t in store.saved] == [("assistant", "failed")]


async def test_turns_are_read_in_the_order_they_were_made_not_inserted(store: Store) -> None:
    """A reply's row is inserted when it ends, after a message sent while it ran; the engine appended the reply
    first. Before, every read (a restart's, the REST listing) put the later message before the reply."""
    record = await store.create_session("nova", owner="o")
    conversation = await store.load_conversation(record.id)
    start = time.time()
    first, reply, second = (
        Turn("user", "A", created_at=start),
        Turn("assistant", "", status="streaming", created_at=start + 0.001),
        Turn("user", "B", created_at=start + 0.002),
    )
    same_time = [Turn("user", f"tie {i}", created_at=start + 0.003) for i in range(2)]
    conversation.turns.extend([first, reply, second, *same_time])
    for turn in (first, second, reply, *same_time):  # the reply is stored when it ends
        reply.content, reply.status = "a", "complete"
        await store.save_turn(conversation, turn)
    order = [t.id for t in conversation.turns]
    assert [t.id for t in await store.list_messages(record.id)] == order
    assert [t.id for t in await store.list_messages(record.id, limit=2, offset=1)] == order[1:3]
    assert [t.id for t in (await store.load_conversation(record.id, recent=4)).turns] == order[1:]
    uncached = Store(store.engine, session_cache=0)  # as after a restart
    try:
        assert [t.id for t in (await uncached.load_conversation(record.id)).turns] == order
    finally:
        await uncached.writer.aclose()


async def test_concurrent_replies_on_one_session_are_stored_as_the_conversation_holds_them(
    store: Store,
) -> None:
    persona = PersonaLibrary(None).get("nova")
    engine = DialogueEngine(FakeBackend(delay=0.01), ContextBudget(4096, 256), store=store)
    record = await store.create_session(persona.id, owner="o")
    conversation = await store.load_conversation(record.id)

    async def reply(text: str) -> None:
        async for _ in engine.reply(conversation, persona, text):
            pass

    await asyncio.gather(reply("first message one two"), reply("second message three four"))
    held = [(t.role, t.content) for t in conversation.turns]
    assert [(t.role, t.content) for t in await store.list_messages(record.id)] == held
    uncached = Store(store.engine, session_cache=0)
    try:
        assert [(t.role, t.content) for t in (await uncached.load_conversation(record.id)).turns] == held
    finally:
        await uncached.writer.aclose()


async def test_a_sessions_turns_are_read_in_order_from_the_index(tmp_path: Path) -> None:
    """SQLite: the ordered reads (a conversation's newest turns, the listing) walk the index, with no sort."""
    store = await open_store(None, tmp_path)
    statements: list[tuple[str, Any]] = []

    def record_statement(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "FROM messages" in statement and "ORDER BY" in statement:
            statements.append((statement, parameters))

    try:
        session = await store.create_session("nova", owner="o")
        event.listen(store.engine.sync_engine, "before_cursor_execute", record_statement)
        await store.load_conversation(session.id, recent=10)  # as a cache miss reads it
        await store.list_messages(session.id)
        await store.list_messages(session.id, offset=5)
        event.remove(store.engine.sync_engine, "before_cursor_execute", record_statement)
        assert len(statements) == 3
        async with store.engine.connect() as connection:
            for statement, parameters in statements:
                plan = " ".join(
                    str(row[-1])
                    for row in await connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
                )
                assert "ix_messages_session_id_created_at" in plan and "TEMP B-TREE" not in plan, plan
    finally:
        await store.close()


async def test_two_messages_at_once_to_one_session_are_each_answered(store: Store) -> None:
    """Two requests on one session (the gateway's, sharing the cached conversation): each reply answers its own
    message (the first's prompt ended with the second's message, whose own reply then failed), and they take turns."""
    persona = PersonaLibrary(None).get("nova")
    backend = FakeBackend(delay=0.001)
    budget = ContextBudget(4096, 128)
    engine = DialogueEngine(backend, budget, store=store, defaults=SamplingParams(max_tokens=128),
                            memory=MemoryManager(backend, budget, facts=store, summaries=store))  # fmt: skip
    record = await store.create_session(persona.id, owner="o", viewer_id="viewer-1", platform="api")

    async def ask(text: str) -> str:
        conversation = await store.load_conversation(record.id)
        return "".join([e.text async for e in engine.reply(conversation, persona, text) if e.kind == "delta"])

    try:
        replies = await asyncio.gather(ask("message A"), ask("message B"))
    finally:
        await engine.aclose()
    assert replies == ["收到：message A", "收到：message B"]
    if store.cache.enabled:  # one shared conversation: the second reply waited for the first
        stored = [t.content for t in await store.list_messages(record.id)]
        assert stored == ["message A", "收到：message A", "message B", "收到：message B"]


class FewTurnsStore(Store):
    RECENT_TURNS = 5


class CountedRemotely(FakeBackend):
    """Counts each message's tokens as a server would (the prompt's build waits), holding the count of ``held``."""

    def __init__(self) -> None:
        super().__init__()
        self.held: str | None = None
        self.counting, self.go = asyncio.Event(), asyncio.Event()

    async def count_message_tokens(self, message: ChatMessage) -> int:
        if message.content == self.held:
            self.counting.set()
            await self.go.wait()
        await asyncio.sleep(0)
        return await super().count_message_tokens(message)


async def test_a_long_cached_session_is_not_trimmed_under_a_reply_being_made(tmp_path: Path) -> None:
    """Opening a long session trims its cached turns; one whose prompt was being built on them lost its places in
    the list (an IndexError: the user's message stored, its reply never)."""
    database = create_engine(default_url(tmp_path))
    await migrate(database)
    store = FewTurnsStore(database)
    persona = PersonaLibrary(None).get("nova")
    backend = CountedRemotely()
    engine = DialogueEngine(
        backend, ContextBudget(4096, 128), store=store, defaults=SamplingParams(max_tokens=64)
    )
    session_id = (await store.create_session(persona.id, owner="o")).id

    async def ask(text: str) -> str:
        conversation = await store.load_conversation(session_id)
        return "".join([e.text async for e in engine.reply(conversation, persona, text) if e.kind == "delta"])

    try:
        for i in range(5):
            await ask(f"message {i}")  # 10 turns, cached
        conversation = await store.load_conversation(session_id)
        backend.held = conversation.turns[-1].content  # counted again while the next prompt is built
        answering = asyncio.create_task(ask("message A"))
        await backend.counting.wait()
        await store.open_conversation(session_id)  # 11 turns: past twice the kept number, trimmed when idle
        backend.go.set()
        assert await answering == "收到：message A"
        assert [t.content for t in await store.list_messages(session_id)][-2:] == [
            "message A",
            "收到：message A",
        ]
    finally:
        await engine.aclose()
        await store.close()


async def test_a_user_message_that_was_not_stored_leaves_later_prompts(store: Store) -> None:
    """Its commit failed, so its reply failed: the message must not ride along in the next prompts (the CLI and the
    web UI keep their conversation) when the database never had it."""
    persona = PersonaLibrary(None).get("nova")
    backend = FakeBackend()
    engine = DialogueEngine(
        backend, ContextBudget(4096, 128), store=store, defaults=SamplingParams(max_tokens=64)
    )
    conversation = await store.load_conversation((await store.create_session(persona.id, owner="o")).id)
    real_queue = store.queue_turn

    def failing(conversation: Conversation, turn: Turn, done: Any = None) -> asyncio.Future[None]:
        if turn.content != "not stored":
            return real_queue(conversation, turn, done)
        failed: asyncio.Future[None] = (
            done if done is not None else asyncio.get_running_loop().create_future()
        )
        failed.set_exception(StoreError("the database is locked"))
        return failed

    store.queue_turn = failing  # type: ignore[method-assign]
    try:
        with pytest.raises(StoreError):
            async for _ in engine.reply(conversation, persona, "not stored"):
                pass
        async for _ in engine.reply(conversation, persona, "next"):
            pass
    finally:
        store.queue_turn = real_queue  # type: ignore[method-assign]
        await engine.aclose()
    last_prompt = [m.content for m in backend.requests[-1] if m.role == "user"]
    assert "not stored" not in last_prompt and last_prompt[-1] == "next"


async def test_a_reply_holding_nul_is_shown_and_stored_without_it(store: Store) -> None:
    """PostgreSQL refuses NUL in text: a reply holding one streamed whole, then failed to store at its end."""
    persona = PersonaLibrary(None).get("nova")
    engine = DialogueEngine(FakeBackend(lambda _: "hello\x00 world"), ContextBudget(4096, 128), store=store,
                            defaults=SamplingParams(max_tokens=64))  # fmt: skip
    conversation = await store.load_conversation((await store.create_session(persona.id, owner="o")).id)
    try:
        shown = "".join(
            [e.text async for e in engine.reply(conversation, persona, "hi") if e.kind == "delta"]
        )
    finally:
        await engine.aclose()
    assert shown == "hello world"
    stored = await store.list_messages(conversation.id)
    assert [(t.role, t.content, t.status) for t in stored] == [("user", "hi", "complete"),
                                                                ("assistant", "hello world", "complete")]  # fmt: skip


async def test_sessions_are_searched_by_title_in_any_case(store: Store) -> None:
    for title in ("Pizza talk", "other", "100%_literal", "披萨时间", "Ёлка and Café ÉTÉ"):
        await store.create_session("nova", owner="alice", title=title)
    await store.create_session("nova", owner="bob", title="pizza too")

    async def titles(search: str) -> list[str]:
        return sorted(r.title for r in await store.list_sessions(owner="alice", search=search))

    assert await titles("PIZZA") == ["Pizza talk"]
    assert await titles("%_") == ["100%_literal"]
    assert await titles("披萨") == ["披萨时间"]
    assert (
        await titles("ёлка") == await titles("été") == ["Ёлка and Café ÉTÉ"]
    )  # not ASCII only (SQLite's own)
    assert len(await titles("")) == 5


async def test_a_renamed_title_is_stored_as_a_new_one_is(store: Store) -> None:
    # A title with a NUL or half an emoji (the web UI renames a session to its first message) failed to store.
    record = await store.create_session("nova", owner="alice")
    for title, stored in [("hello\x00world", "helloworld"), ("half emoji \ud83d", "half emoji \ufffd")]:
        await store.rename_session(record.id, title)
        assert (await store.get_session(record.id)).title == stored  # type: ignore[union-attr]
        store.cache.forget(record.id)
        assert (await store.get_session(record.id)).title == stored  # type: ignore[union-attr]


async def test_instances_sharing_a_database_cannot_take_each_others_personas(
    store: Store, tmp_path: Path
) -> None:
    """Two gateways on one database, each with the personas it loaded at start: another key's import of the same id
    is refused (not written over it), and its delete deletes nothing, whatever either instance holds in memory."""
    card = json.dumps({"spec": "chara_card_v2", "spec_version": "2.0",
                       "data": {"name": "Alpha", "description": "alice's"}}).encode()  # fmt: skip
    first, second = (PersonaCatalog(PersonaLibrary(tmp_path / name), store) for name in ("one", "two"))
    await first.load()
    await second.load()  # before alice's import: it knows of no stored persona
    await first.import_bytes(card, "alpha.json", owner="alice")
    for replace in (False, True):
        with pytest.raises((PersonaError, APIError)):
            await second.import_bytes(
                card.replace(b"alice's", b"bob's"), "alpha.json", owner="bob", replace=replace
            )
    with pytest.raises(APIError) as refused:
        await second.delete("alpha", owner="bob")
    assert refused.value.status == 403
    [(data, _, owner)] = await store.persona_rows()
    assert owner == "alice" and "alice's" in data
    assert (await second.get("alpha")).description == "alice's"  # it serves the stored copy now
    await first.import_bytes(
        card.replace(b"alice's", b"alice's v2"), "alpha.json", owner="alice", replace=True
    )
    assert "alice's v2" in (await store.persona_rows())[0][0]
    await first.delete("alpha", owner="alice")
    assert await store.persona_rows() == []


@pytest.mark.parametrize("cache", [None, 0])
async def test_two_messages_to_one_session_are_answered_in_turn(store: Store, cache: int | None) -> None:
    """A double send: the second message waits for the first reply, and its prompt holds it. With the session cache
    off (PostgreSQL's default) each request loaded its own conversation, and the two replies ran at once."""
    if cache is not None:
        store = Store(store.engine, session_cache=cache)
    persona = PersonaLibrary(None).get("xiaoxing")
    backend = FakeBackend(
        lambda messages: "answer to " + next(m.content for m in reversed(messages) if m.role == "user"),
        delay=0.05,
    )
    engine = DialogueEngine(backend, ContextBudget(4096, 256), store=store)
    record = await store.create_session(persona.id, owner="alice")

    async def ask(text: str) -> None:
        found = await store.open_conversation(record.id)
        assert found is not None
        async for _ in engine.reply(found[1], persona, text):
            pass

    first = asyncio.create_task(ask("first question"))
    await asyncio.sleep(0.02)
    await asyncio.gather(first, ask("second question"))
    second = [(m.role, m.content) for m in backend.requests[1] if m.role != "system"]
    assert second[-3:] == [("user", "first question"), ("assistant", "answer to first question"),
                           ("user", "second question")]  # fmt: skip
    stored = [(t.role, t.content) for t in await store.list_messages(record.id)]
    assert stored == [("user", "first question"), ("assistant", "answer to first question"),
                      ("user", "second question"), ("assistant", "answer to second question")]  # fmt: skip


@pytest.mark.parametrize("when", ["streaming", "before the first text"])
async def test_a_reply_cut_off_by_shutdown_is_stored_as_interrupted(store: Store, when: str) -> None:
    """Shutting down, the server cancels the replies still streaming and at once closes the engine and the store (as
    uvicorn does after its graceful timeout): the cut-off reply was queued only after the store had closed, and lost."""
    url = store.engine.url.render_as_string(hide_password=False)
    persona = PersonaLibrary(None).get("xiaoxing")
    engine = DialogueEngine(FakeBackend(lambda _: "some words of a long reply " * 20, delay=0.05),
                            ContextBudget(4096, 256), store=store)  # fmt: skip
    record = await store.create_session(persona.id, owner="alice")
    conversation = await store.load_conversation(record.id)

    async def ask() -> None:
        async for _ in engine.reply(conversation, persona, "hello"):
            pass

    task = asyncio.create_task(ask())
    await asyncio.sleep(0.3 if when == "streaming" else 0)
    task.cancel()
    await engine.aclose()
    await store.close()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    reopened = Store(create_engine(url))
    try:
        stored = [(t.role, t.status) for t in await reopened.list_messages(record.id)]
    finally:
        await reopened.close()
    assert stored == [("user", "complete"), ("assistant", "interrupted")]


async def test_a_reply_to_a_deleted_session_does_not_land_in_a_new_one_of_the_same_id(store: Store) -> None:
    """A client names its session; it deletes it while a reply streams, and a session of the same id is made at once
    (by another key, even): the reply ending then was stored into the new session, as its first message."""
    persona = PersonaLibrary(None).get("xiaoxing")
    engine = DialogueEngine(FakeBackend(lambda _: "alice's secret reply " * 5, delay=0.02),
                            ContextBudget(4096, 256), store=store)  # fmt: skip
    await store.create_session(persona.id, owner="alice", session_id="chat-1")
    conversation = await store.load_conversation("chat-1")

    async def ask() -> None:
        async for _ in engine.reply(conversation, persona, "hello"):
            pass

    task = asyncio.create_task(ask())
    await asyncio.sleep(0.1)
    assert await store.delete_session("chat-1", owner="alice")
    await store.create_session(persona.id, owner="bob", session_id="chat-1")
    with pytest.raises(StoreError, match="deleted"):
        await task  # the reply's end could not be stored: its client hears so, not "stop"
    store.cache.forget("chat-1")
    assert await store.list_messages("chat-1") == []
    assert (await store.get_session("chat-1")).owner == "bob"  # type: ignore[union-attr]

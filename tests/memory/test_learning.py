"""What facts are never learnt from: a message whose commit failed, a viewer who asked to be forgotten."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from pathlib import Path

import httpx

from tests.memory.conftest import ScriptedBackend, facts_json
from vstreamer.config import Settings
from vstreamer.engine import (
    ContextBudget,
    Conversation,
    DialogueEngine,
    Fact,
    InMemoryFacts,
    MemoryManager,
    Turn,
)
from vstreamer.engine.facts import ViewerKey
from vstreamer.errors import StoreError
from vstreamer.gateway import create_app
from vstreamer.llm.base import ChatMessage, Completion, SamplingParams
from vstreamer.persona import Persona
from vstreamer.runtime import open_runtime

VIEWER = ViewerKey("web", "alice")


class HeldExtractions(ScriptedBackend):
    """Fact extraction answers only once released: the test acts while it is in flight."""

    def __init__(self) -> None:
        super().__init__(facts=lambda _: facts_json("lives in Berlin"))
        self.asked = asyncio.Event()
        self.release = asyncio.Event()

    async def complete(self, messages: Sequence[ChatMessage], params: SamplingParams) -> Completion:
        if self.kind(messages) == "facts":
            self.asked.set()
            await self.release.wait()
        return await super().complete(messages, params)


async def reply(engine: DialogueEngine, conversation: Conversation, persona: Persona, text: str) -> None:
    async for _ in engine.reply(conversation, persona, text):
        pass


class BrokenStore:
    async def save_turn(self, conversation: Conversation, turn: Turn) -> None:
        raise StoreError("disk full")


async def test_no_facts_from_a_message_whose_commit_failed(nova: Persona) -> None:
    backend = ScriptedBackend(facts=lambda _: facts_json("lives in Berlin"))
    budget = ContextBudget(4096, 128)
    facts = InMemoryFacts()
    engine = DialogueEngine(
        backend, budget, store=BrokenStore(), memory=MemoryManager(backend, budget, facts=facts)
    )
    conversation = Conversation(nova.id, platform="web", viewer_id="alice")
    with contextlib.suppress(StoreError):  # the reply fails with its message's commit
        await reply(engine, conversation, nova, "I live in Berlin by the way")
    await engine.tasks.drain()
    assert conversation.turns[0].status == "failed"
    assert await facts.viewer_facts(VIEWER) == [] and backend.kinds["facts"] == []


async def test_no_facts_from_a_message_that_failed_after_it_was_queued(nova: Persona) -> None:
    backend = ScriptedBackend(facts=lambda _: facts_json("lives in Berlin"))
    memory = MemoryManager(backend, ContextBudget(4096, 128))
    conversation = Conversation(nova.id, platform="web", viewer_id="alice")
    failed = Turn("user", "I live in Berlin by the way", status="failed")
    assert await memory.learn(conversation, nova, failed) == []
    assert await memory.learn(conversation, nova, Turn("user", "I live in Berlin")) != []


async def test_forget_me_wins_over_an_extraction_in_flight_and_queued_ones(nova: Persona) -> None:
    backend = HeldExtractions()
    budget = ContextBudget(4096, 128)
    facts = InMemoryFacts()
    memory = MemoryManager(backend, budget, facts=facts)
    engine = DialogueEngine(backend, budget, memory=memory)
    conversation = Conversation(nova.id, platform="web", viewer_id="alice")
    await reply(engine, conversation, nova, "I live in Berlin by the way")
    await reply(engine, conversation, nova, "I moved to Berlin last year")  # queued behind the first
    await backend.asked.wait()
    memory.forget(VIEWER)
    await facts.delete_facts(VIEWER)
    backend.release.set()
    await engine.tasks.drain()
    assert await facts.viewer_facts(VIEWER) == []
    assert len(backend.kinds["facts"]) == 1  # the queued message was dropped, not sent to the model

    await reply(engine, conversation, nova, "I live in Berlin again")  # said after "forget me": learnt
    await engine.tasks.drain()
    assert [f.text for f in await facts.viewer_facts(VIEWER)] == ["lives in Berlin"]


class HeldWrites(InMemoryFacts):
    """``add_facts`` that waits to be released before it stores: a delete can run while facts are written."""

    def __init__(self) -> None:
        super().__init__()
        self.writing = asyncio.Event()
        self.release = asyncio.Event()

    async def add_facts(self, viewer: ViewerKey, facts: Sequence[Fact], *, keep: int = 200) -> list[Fact]:
        self.writing.set()
        await self.release.wait()
        return await super().add_facts(viewer, facts, keep=keep)


async def test_forget_me_while_the_facts_are_being_written(nova: Persona) -> None:
    backend = ScriptedBackend(facts=lambda _: facts_json("lives in Berlin"))
    facts = HeldWrites()
    memory = MemoryManager(backend, ContextBudget(4096, 128), facts=facts)
    conversation = Conversation(nova.id, platform="web", viewer_id="alice")
    learning = asyncio.create_task(memory.learn(conversation, nova, Turn("user", "I live in Berlin")))
    await facts.writing.wait()
    memory.forget(VIEWER)
    await facts.delete_facts(VIEWER)  # before the write lands
    facts.release.set()
    assert await learning == []
    assert await facts.viewer_facts(VIEWER) == []


async def test_the_forget_me_route_stops_extractions_in_flight(tmp_path: Path, nova: Persona) -> None:
    backend = HeldExtractions()
    runtime = await open_runtime(Settings.load(data_dir=tmp_path, auth=False), backend=backend)
    store = runtime.store
    assert store is not None
    try:
        record = await store.create_session(nova.id, owner="local", platform="web", viewer_id="alice")
        conversation = await store.load_conversation(record.id)
        await reply(runtime.engine, conversation, nova, "I live in Berlin by the way")
        await backend.asked.wait()
        transport = httpx.ASGITransport(app=create_app(runtime))
        # Auth is off: the gateway answers only under a loopback name.
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            assert (await client.delete("/api/viewers/web/alice/memory")).json()["deleted"] == 0
            backend.release.set()
            await runtime.engine.tasks.drain()
            assert (await client.get("/api/viewers/web/alice/memory")).json() == {"data": []}
    finally:
        await runtime.aclose()

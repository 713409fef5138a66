"""Summaries and fact extraction end to end on the embedded model (SmolLM2 often answers bad JSON: that's the point)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vstreamer.engine import (
    ContextBudget,
    ContextBuilder,
    Conversation,
    DialogueEngine,
    MemoryManager,
    MemoryPolicy,
    Turn,
)
from vstreamer.engine.extract import FactExtractor
from vstreamer.engine.summary import Summarizer
from vstreamer.llm.base import SamplingParams
from vstreamer.llm.local import LocalBackend
from vstreamer.persona import PersonaLibrary

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def local(smollm2_gguf: Path) -> LocalBackend:
    return LocalBackend(smollm2_gguf, n_ctx=2048)


async def test_summary_and_extraction_on_the_embedded_model(local: LocalBackend) -> None:
    nova = PersonaLibrary(None).get("nova")
    summarizer = Summarizer(local, max_tokens=48)
    turns = [
        Turn("user", "I'm Sam and I promise to bring cookies next stream!"),
        Turn("assistant", "Deal, Sam!"),
    ]
    summary = await summarizer.fold(nova, "Sam", "", turns)
    assert summary is not None and summary.strip()  # None: the model failed (the caller keeps the old one)
    extractor = FactExtractor(local, max_tokens=48)
    facts = await extractor.extract(nova, "Sam", "I have a cat named Mochi and my exam is next week")
    assert isinstance(facts, list) and all(isinstance(f, str) for f in facts)
    # JSON of the schema (the embedded backend decodes it as a grammar), facts or none; anything else is counted
    assert extractor.failures <= 1


async def test_engine_keeps_every_turn_while_memory_runs_on_the_embedded_model(
    local: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    nova = PersonaLibrary(None).get("nova")
    probe = Conversation(nova.id, turns=[Turn("user", "hi")])
    persona_tokens = (await ContextBuilder(local, ContextBudget(2048, 24)).build(probe, nova)).prompt_tokens
    # room for the persona and about one turn: older turns leave the window (and go into the summary)
    budget = ContextBudget(context_window=persona_tokens + 24 + 16 + 50, max_tokens=24, reserve_tokens=16)
    policy = MemoryPolicy(summary_tokens=40, facts_tokens=24, summary_batch=2, extract_max_tokens=40)
    memory = MemoryManager(local, budget, policy=policy)
    engine = DialogueEngine(local, budget, defaults=SamplingParams(max_tokens=24, seed=3), memory=memory)
    extractions = 0
    extract = memory.extractor.extract

    async def counted(*args: Any) -> list[str]:
        nonlocal extractions
        extractions += 1
        return await extract(*args)

    monkeypatch.setattr(memory.extractor, "extract", counted)
    conversation = Conversation(nova.id, user_name="Sam", platform="twitch", viewer_id="sam-1")
    messages = [
        "Hi Nova! I'm Sam, I love cats and I have an exam next week.",
        "What do you think about farming games like Stardew Valley in general?",
        "Tell me a fun fact about space, something that would surprise the chat.",
    ]
    for text in messages:
        async for _ in engine.reply(conversation, nova, text):
            pass
        await engine.tasks.drain()
    assert [t.status for t in conversation.turns] == ["complete"] * (2 * len(messages))
    assert all(t.content for t in conversation.turns)
    stats = engine.stats
    assert extractions >= 1  # extraction ran; its answers (facts, none, or garbage) were survived
    assert stats.summaries >= 1 and conversation.summary.strip()
    assert engine.tasks.failures == 0
    await engine.aclose()

"""The engine over real models: the embedded one directly, and llama.cpp's and vLLM's OpenAI-compatible servers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import OpenAIServer
from vstreamer.engine import ContextBudget, ContextBuilder, Conversation, DialogueEngine, Turn
from vstreamer.llm.base import LLMBackend, SamplingParams
from vstreamer.llm.local import LocalBackend
from vstreamer.llm.openai_compat import OpenAICompatBackend
from vstreamer.persona import PersonaLibrary

pytestmark = pytest.mark.integration


async def _long_conversation_fits(backend: LLMBackend) -> None:
    persona = PersonaLibrary(None).get("xiaoxing")
    budget = ContextBudget(context_window=2048, max_tokens=256, reserve_tokens=16)
    builder = ContextBuilder(backend, budget)
    conversation = Conversation(persona.id, user_name="小明")
    for index in range(150):
        conversation.turns.append(
            Turn("user", f"第{index}条弹幕：主播今天玩什么游戏？ What game today? " * (1 + index % 3))
        )
        built = await builder.build(conversation, persona)
        exact = await backend.count_tokens(built.messages)
        assert exact == built.prompt_tokens <= budget.prompt_budget
        conversation.turns.append(Turn("assistant", f"今天玩星露谷物语！Stardew Valley, round {index}."))
    assert built.history_turns < 300  # old turns had to leave


async def test_budget_holds_with_embedded_tokenizer(smollm2_gguf: Path) -> None:
    await _long_conversation_fits(LocalBackend(smollm2_gguf, n_ctx=2048))


async def test_budget_holds_with_server_tokenizer(openai_server: OpenAIServer) -> None:
    backend = OpenAICompatBackend(base_url=openai_server.base_url, model=openai_server.served_name)
    await _long_conversation_fits(backend)
    await backend.aclose()


async def test_persona_reply_through_server(openai_server: OpenAIServer) -> None:
    backend = OpenAICompatBackend(base_url=openai_server.base_url, model=openai_server.served_name)
    persona = PersonaLibrary(None).get("nova")
    engine = DialogueEngine(backend, ContextBudget(4096, 64), defaults=SamplingParams(max_tokens=64, seed=7))
    conversation = Conversation(persona.id, user_name="Sam")
    deltas = [
        e.text
        async for e in engine.reply(conversation, persona, "Hi Nova! What are you playing today?")
        if e.kind == "delta"
    ]
    await backend.aclose()
    assert len(deltas) > 3
    reply = conversation.turns[-1]
    assert reply.status == "complete"
    assert reply.content == "".join(deltas)
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    # vLLM reports usage itself; llama.cpp's server streams none, so the backend counted it.
    assert reply.usage.estimated == (openai_server.missing("stream_usage") is not None)

"""A model whose chat template is strict (no system messages, user and assistant turns alternating from a user one)
answers vstreamer's prompts in ``auto``: embedded, and behind llama.cpp's OpenAI-compatible server. With ``system``
its refusal is the error, as before."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest

from tests.conftest import LlamaServer
from vstreamer.engine import ContextBudget, Conversation, DialogueEngine, Turn
from vstreamer.errors import BackendResponseError
from vstreamer.llm.base import ChatMessage, LLMBackend, SamplingParams
from vstreamer.llm.local import LocalBackend
from vstreamer.llm.openai_compat import OpenAICompatBackend
from vstreamer.llm.roles import PromptRoles, strict_roles
from vstreamer.persona import Persona

pytestmark = pytest.mark.integration

PARAMS = SamplingParams(max_tokens=12, seed=7)


@pytest.fixture(scope="module")
def persona() -> Persona:
    """A short card (a bundled one takes SmolLM2 seconds to read on a busy machine) with what makes vstreamer's prompts
    the shape strict templates refuse: a greeting, the first turn, and a post-history note, a system message last."""
    return Persona(
        id="nova-mini",
        name="Nova",
        description="{{char}} is a cheerful streamer who plays cosy games and chats with {{user}}.",
        personality="warm, curious",
        greeting="Hi {{user}}, welcome to the stream!",
        post_history_instructions="Stay in character as {{char}}; answer in one or two short sentences.",
        language="en",
    )


def engine_for(backend: LLMBackend) -> DialogueEngine:
    return DialogueEngine(backend, ContextBudget(2048, 48), defaults=PARAMS)


def greeted(persona: Persona) -> Conversation:
    """A conversation as the web UI opens one: the persona's greeting is its first turn."""
    conversation = Conversation(persona.id, user_name="Sam")
    conversation.add(Turn("assistant", persona.render(persona.greeting, "Sam")))
    return conversation


async def reply_text(engine: DialogueEngine, conversation: Conversation, persona: Persona, text: str) -> str:
    deltas = [e.text async for e in engine.reply(conversation, persona, text) if e.kind == "delta"]
    assert conversation.turns[-1].status == "complete"
    return "".join(deltas)


async def vstreamer_prompt(backend: LLMBackend, persona: Persona) -> list[ChatMessage]:
    conversation = greeted(persona)
    conversation.add(Turn("user", "Hi Nova! What are you playing today?"))
    built = await engine_for(backend).build_context(conversation, persona)
    assert [m.role for m in built.messages] == ["system", "assistant", "user", "system"]
    return list(built.messages)


# --- embedded -------------------------------------------------------------------------------------------------


def local(strict_gguf: Path, prompt_roles: PromptRoles = "auto") -> LocalBackend:
    return LocalBackend(strict_gguf, n_ctx=2048, prompt_roles=prompt_roles)


async def test_embedded_auto_answers_and_counts_a_persona_prompt(strict_gguf: Path, persona: Persona) -> None:
    backend = local(strict_gguf)
    engine = engine_for(backend)
    conversation = greeted(persona)
    assert await reply_text(engine, conversation, persona, "Hi Nova! What are you playing today?")
    assert backend.strict_roles  # the template was tried when the model loaded

    messages = await vstreamer_prompt(backend, persona)
    model = await backend.loaded()
    arranged = [m.as_dict() for m in strict_roles(messages)]
    assert await backend.count_tokens(messages) == model.prompt_tokens(arranged)
    # A message's share is measured with a user and an assistant turn, which the template takes.
    for message in messages:
        assert await backend.count_message_tokens(message) > model.tokens(message.content)


async def test_embedded_strict_arranges_for_any_template(smollm2_gguf: Path, persona: Persona) -> None:
    """SmolLM2's own (ChatML) template takes system messages; ``strict`` arranges its prompts all the same."""
    backend = LocalBackend(smollm2_gguf, n_ctx=2048, prompt_roles="strict")
    messages = await vstreamer_prompt(backend, persona)
    model = await backend.loaded()
    arranged = [m.as_dict() for m in strict_roles(messages)]
    assert await backend.count_tokens(messages) == model.prompt_tokens(arranged)
    assert model.prompt_tokens(arranged) != model.prompt_tokens([m.as_dict() for m in messages])


async def test_embedded_system_fails_with_the_templates_refusal(strict_gguf: Path, persona: Persona) -> None:
    backend = local(strict_gguf, "system")
    with pytest.raises(BackendResponseError, match="refused the messages: System role not supported") as info:
        await reply_text(engine_for(backend), greeted(persona), persona, "Hi Nova!")
    assert info.value.status_code == 400
    # Generation says the same as counting does.
    messages = await vstreamer_prompt(local(strict_gguf), persona)
    with pytest.raises(BackendResponseError, match="refused the messages: System role not supported") as info:
        await backend.complete(messages, PARAMS)
    assert info.value.status_code == 400
    assert not backend.strict_roles


async def test_embedded_auto_leaves_a_lenient_template_alone(smollm2_gguf: Path) -> None:
    backend = LocalBackend(smollm2_gguf, n_ctx=2048)
    await backend.loaded()
    assert not backend.strict_roles


# --- behind llama.cpp's OpenAI-compatible server ----------------------------------------------------------------


@pytest.fixture(scope="module")
def strict_server(strict_gguf: Path) -> Iterator[LlamaServer]:
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] is not installed")
    server = LlamaServer(strict_gguf, alias="smollm2-strict")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def recorded(strict_server: LlamaServer) -> AsyncIterator[tuple[OpenAICompatBackend, list[list[str]]]]:
    """An ``auto`` backend over the server, and the roles of each chat request it sends."""
    backend = OpenAICompatBackend(base_url=strict_server.base_url, model=strict_server.served_name)
    sent: list[list[str]] = []
    open_stream = backend._open_stream

    async def recording(body: bytes, state: object) -> object:
        sent.append([m["role"] for m in orjson.loads(body)["messages"]])
        return await open_stream(body, state)  # type: ignore[arg-type]

    backend._open_stream = recording  # type: ignore[assignment,method-assign]
    yield backend, sent
    await backend.aclose()


async def test_server_auto_sends_the_refused_prompt_arranged_then_arranges_at_once(
    recorded: tuple[OpenAICompatBackend, list[list[str]]], persona: Persona
) -> None:
    backend, sent = recorded
    engine = engine_for(backend)
    conversation = greeted(persona)
    assert await reply_text(engine, conversation, persona, "Hi Nova! What are you playing today?")
    assert sent == [["system", "assistant", "user", "system"], ["user", "assistant", "user"]]
    assert await reply_text(engine, conversation, persona, "Cool, good luck!")
    assert sent[2:] == [["user", "assistant", "user", "assistant", "user"]]


async def test_server_system_surfaces_the_refusal(strict_server: LlamaServer, persona: Persona) -> None:
    backend = OpenAICompatBackend(
        base_url=strict_server.base_url, model=strict_server.served_name, prompt_roles="system"
    )
    try:
        with pytest.raises(BackendResponseError, match="System role not supported") as info:
            await reply_text(engine_for(backend), greeted(persona), persona, "Hi Nova!")
    finally:
        await backend.aclose()
    assert (
        info.value.status_code == 400
    )  # llama-cpp-python's server says 500, but the request is what is wrong

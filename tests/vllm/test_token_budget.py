"""The budgeter's token counts equal the server's for Chinese, English and mixed conversations of our personas.

On vLLM the counts are exact: what the context builder reports equals ``/tokenize`` of the same messages, the
per-message shares add up to it, and the prompt the server then runs (``usage.prompt_tokens``) is that count plus
the generation prompt. llama.cpp's server tokenizes plain text only: there the shares are approximations, checked
against the embedded model's exact template rendering (same GGUF) to be close and never below it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import OpenAIServer, VLLMServer
from vstreamer.engine import ContextBudget, ContextBuilder, Conversation, Turn
from vstreamer.llm.base import ChatMessage, SamplingParams
from vstreamer.llm.local import LocalBackend
from vstreamer.llm.openai_compat import OpenAICompatBackend
from vstreamer.persona import PersonaLibrary

pytestmark = pytest.mark.integration

CONVERSATIONS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "chinese": (
        "xiaoxing",
        [
            ("user", "小星晚上好！今天直播玩什么游戏呀？"),
            ("assistant", "晚上好呀～今天我们继续玩星露谷物语，争取把温室修好！"),
            ("user", "上次你说要养鸡，养了吗？🐔"),
            ("assistant", "养啦养啦，三只小鸡，名字叫豆豆、糖糖和团子～"),
            ("user", "主播唱首歌吧！！！"),
        ],
    ),
    "english": (
        "nova",
        [
            ("user", "Hey Nova! What are we playing tonight?"),
            ("assistant", "Tonight we're speedrunning Celeste, chapter 7. Wish me luck!"),
            ("user", "lol you died 40 times last stream"),
            ("assistant", "Forty-two, but who's counting? Practice makes... fewer deaths."),
            ("user", "Can you say hi to my friend Alex?"),
        ],
    ),
    "mixed": (
        "xiaoxing",
        [
            ("user", "Hello 小星! Do you speak English? 你会说英语吗？"),
            ("assistant", "A little bit! 我会一点点英语，let's practice together～"),
            ("user", "OK! What's your favourite game? 最喜欢的游戏是什么？ 🎮"),
            ("assistant", "Stardew Valley 星露谷物语！Farming is so relaxing (๑•̀ㅂ•́)و✧"),
            ("user", "GG 主播 666, see you tomorrow!"),
        ],
    ),
}


def conversation_for(name: str) -> tuple[Conversation, object]:
    persona_id, turns = CONVERSATIONS[name]
    persona = PersonaLibrary(None).get(persona_id)
    conversation = Conversation(persona.id, user_name="小明" if persona_id == "xiaoxing" else "Sam")
    conversation.turns.extend(Turn(role, text) for role, text in turns)  # type: ignore[arg-type]
    return conversation, persona


@pytest.fixture
def backend(openai_server: OpenAIServer) -> Iterator[OpenAICompatBackend]:
    yield OpenAICompatBackend(base_url=openai_server.base_url, model=openai_server.served_name)


async def server_count(server: OpenAIServer, messages: tuple[ChatMessage, ...], *, generation: bool) -> int:
    body = {
        "model": server.served_name,
        "messages": [m.as_dict() for m in messages],
        "add_generation_prompt": generation,
    }
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{server.base_url.removesuffix('/v1')}/tokenize", json=body)
    response.raise_for_status()
    return int(response.json()["count"])


@pytest.mark.parametrize("language", sorted(CONVERSATIONS))
async def test_budgeter_counts_equal_the_servers(
    language: str, openai_server: OpenAIServer, backend: OpenAICompatBackend, smollm2_gguf: Path
) -> None:
    conversation, persona = conversation_for(language)
    builder = ContextBuilder(backend, ContextBudget(context_window=2048, max_tokens=128))
    built = await builder.build(conversation, persona)  # type: ignore[arg-type]
    assert (
        built.history_turns == len(conversation.turns) - 1
    )  # all of it fits: the counts cover every message
    shares = [await backend.count_message_tokens(m) for m in built.messages]

    if reason := openai_server.missing("tokenize"):
        exact = await LocalBackend(smollm2_gguf, n_ctx=2048).count_tokens(built.messages)
        assert backend.tokenizer.kind == "llama_cpp", reason
        # Degraded: exact text counts plus an approximate template overhead, conservative and close.
        assert exact <= built.prompt_tokens <= exact + 2 * len(built.messages), (built.prompt_tokens, exact)
        await backend.aclose()
        return

    tokenized = await server_count(openai_server, built.messages, generation=False)
    assert built.prompt_tokens == tokenized
    assert sum(shares) == tokenized, f"per-message shares {shares} do not add up to {tokenized}"
    completion = await backend.complete(list(built.messages), SamplingParams(max_tokens=4, temperature=0))
    assert completion.usage is not None and not completion.usage.estimated
    assert completion.usage.prompt_tokens == await server_count(
        openai_server, built.messages, generation=True
    )
    await backend.aclose()


@pytest.mark.vllm
@pytest.mark.parametrize("language", sorted(CONVERSATIONS))
async def test_budgeter_counts_equal_vllm_with_the_qwen_tokenizer(
    language: str, vllm_qwen_server: VLLMServer
) -> None:
    """The production family's tokenizer and chat template (Qwen2.5), where the opt-in model is installed."""
    backend = OpenAICompatBackend(base_url=vllm_qwen_server.base_url, model=vllm_qwen_server.served_name)
    conversation, persona = conversation_for(language)
    built = await ContextBuilder(backend, ContextBudget(context_window=2048, max_tokens=128)).build(
        conversation,
        persona,  # type: ignore[arg-type]
    )
    assert built.history_turns == len(conversation.turns) - 1
    shares = [await backend.count_message_tokens(m) for m in built.messages]
    tokenized = await server_count(vllm_qwen_server, built.messages, generation=False)
    assert built.prompt_tokens == tokenized
    assert sum(shares) == tokenized, f"per-message shares {shares} do not add up to {tokenized}"
    completion = await backend.complete(list(built.messages), SamplingParams(max_tokens=4, temperature=0))
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == await server_count(
        vllm_qwen_server, built.messages, generation=True
    )
    await backend.aclose()


@pytest.mark.vllm
async def test_turns_on_vllm_are_counted_without_a_tokenize_request_per_prompt(
    vllm_server: VLLMServer,
) -> None:
    backend = OpenAICompatBackend(base_url=vllm_server.base_url, model=vllm_server.served_name)
    conversation, persona = conversation_for("mixed")
    builder = ContextBuilder(backend, ContextBudget(context_window=2048, max_tokens=128))
    await builder.build(conversation, persona)  # type: ignore[arg-type]  # measures the template overheads
    assert backend.counts_add_up
    whole_prompts: list[int] = []
    count = backend.tokenizer.count

    async def spy(messages: object) -> int:
        whole_prompts.append(len(messages))  # type: ignore[arg-type]
        return await count(messages)  # type: ignore[arg-type]

    backend.tokenizer.count = spy  # type: ignore[method-assign]
    conversation.turns += [
        Turn("assistant", "See you! 明天见～"),
        Turn("user", "Wait, one more song? 再唱一首！"),
    ]
    built = await builder.build(conversation, persona)  # type: ignore[arg-type]
    assert whole_prompts == []  # the shares (one short request per new message) were enough
    assert built.prompt_tokens == await server_count(vllm_server, built.messages, generation=False)
    await backend.aclose()

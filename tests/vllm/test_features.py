"""vLLM's own features through our backend, against the real server; llama.cpp's server where it has them.

Every test runs on both servers (``openai_server``). Where llama.cpp lacks a feature the test checks how our stack
degrades, or skips with the reason in ``LLAMA_CPP_MISSING``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.conftest import OpenAIServer, VLLMServer
from vstreamer.errors import BackendResponseError
from vstreamer.llm.base import ChatMessage, SamplingParams, StreamEnd, TextDelta, json_schema_format
from vstreamer.llm.openai_compat import OpenAICompatBackend

pytestmark = pytest.mark.integration

LONG_PROMPT = [
    ChatMessage("user", "Write a very long story about a dragon and a knight, with many chapters.")
]
GREETING = [ChatMessage("system", "You are a cheerful streamer."), ChatMessage("user", "Say hello to chat!")]


@pytest.fixture
async def backend(openai_server: OpenAIServer) -> AsyncIterator[OpenAICompatBackend]:
    client = OpenAICompatBackend(base_url=openai_server.base_url, model=openai_server.served_name)
    yield client
    await client.aclose()


def root_of(server: OpenAIServer) -> str:
    return server.base_url.removesuffix("/v1")


async def server_prompt_tokens(server: OpenAIServer, messages: list[ChatMessage], *, generation: bool) -> int:
    """The server's own count of a chat prompt (vLLM's ``/tokenize`` with ``messages``)."""
    body = {
        "model": server.served_name,
        "messages": [m.as_dict() for m in messages],
        "add_generation_prompt": generation,
    }
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{root_of(server)}/tokenize", json=body)
    response.raise_for_status()
    return int(response.json()["count"])


async def test_health_and_version(openai_server: OpenAIServer, backend: OpenAICompatBackend) -> None:
    health = await backend.health()
    assert health.ok, health.detail
    if reason := openai_server.missing("version"):
        assert health.version is None and "engine" not in health.extras, reason
        return
    assert isinstance(openai_server, VLLMServer)
    assert health.version == openai_server.version
    assert health.extras["engine"] == "vllm"
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{root_of(openai_server)}/health")).status_code == 200


async def test_usage_is_reported_at_the_end_of_a_stream(
    openai_server: OpenAIServer, backend: OpenAICompatBackend
) -> None:
    items = [d async for d in backend.stream(GREETING, SamplingParams(max_tokens=12, temperature=0))]
    end = items[-1]
    assert isinstance(end, StreamEnd) and end.usage is not None
    assert end.finish_reason in ("stop", "length")
    assert 0 < end.usage.completion_tokens <= 12
    if reason := openai_server.missing("stream_usage"):
        # Degraded: we count it ourselves with the server's text tokenizer, and say so.
        assert end.usage.estimated, reason
        assert end.usage.prompt_tokens == await backend.count_tokens(GREETING)
        return
    assert not end.usage.estimated
    # The prompt the server ran is exactly what /tokenize says it is (generation prompt included).
    assert end.usage.prompt_tokens == await server_prompt_tokens(openai_server, GREETING, generation=True)


async def test_length_finish_reason_and_exact_completion_tokens(
    openai_server: OpenAIServer, backend: OpenAICompatBackend
) -> None:
    completion = await backend.complete(LONG_PROMPT, SamplingParams(max_tokens=20, temperature=0))
    assert completion.finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 20


async def test_token_counts_match_the_server(
    openai_server: OpenAIServer, backend: OpenAICompatBackend
) -> None:
    messages = [
        ChatMessage("system", "你是小星，一个活泼的虚拟主播。"),
        ChatMessage("user", "Hello 主播! 今天玩什么?"),
    ]
    counted = await backend.count_tokens(messages)
    if reason := openai_server.missing("tokenize"):
        assert backend.tokenizer.kind == "llama_cpp"
        assert "/extras/tokenize" in backend.tokenizer.reason, reason
        return
    assert backend.tokenizer.kind == "vllm" and not backend.tokenizer.reason
    assert counted == await server_prompt_tokens(openai_server, messages, generation=False)
    shares = [await backend.count_message_tokens(m) for m in messages]
    assert sum(shares) == counted


EMOTION_SCHEMA = {
    "type": "object",
    "properties": {
        "emotion": {"type": "string", "enum": ["happy", "sad", "angry", "surprised", "neutral"]},
        "intensity": {"type": "integer", "minimum": 1, "maximum": 5},
    },
    "required": ["emotion", "intensity"],
    "additionalProperties": False,
}


async def test_structured_output_follows_the_json_schema(
    openai_server: OpenAIServer, backend: OpenAICompatBackend
) -> None:
    if reason := openai_server.missing("model_text"):
        pytest.skip(reason)  # random weights fill 40 tokens with whitespace before the JSON ends
    messages = [ChatMessage("user", "I just won the tournament!!! How do you feel? Answer as JSON.")]
    response_format = json_schema_format("emotion", EMOTION_SCHEMA)
    for seed in (1, 2, 3):
        params = SamplingParams(max_tokens=40, temperature=0.8, seed=seed, response_format=response_format)
        completion = await backend.complete(messages, params)
        data = json.loads(completion.text)
        assert set(data) == {"emotion", "intensity"}
        assert data["emotion"] in EMOTION_SCHEMA["properties"]["emotion"]["enum"]  # type: ignore[index]
        assert isinstance(data["intensity"], int)
        if openai_server.missing("json_schema") is None:
            assert 1 <= data["intensity"] <= 5


async def test_min_tokens_forces_a_longer_reply(
    openai_server: OpenAIServer, backend: OpenAICompatBackend
) -> None:
    for feature in ("min_tokens", "model_text"):  # random weights never say they are done
        if reason := openai_server.missing(feature):
            pytest.skip(reason)
    messages = [ChatMessage("user", "Say hi")]
    free = await backend.complete(messages, SamplingParams(max_tokens=100, temperature=0))
    assert free.finish_reason == "stop" and free.usage is not None
    longer = free.usage.completion_tokens + 10
    forced = await backend.complete(
        messages, SamplingParams(max_tokens=longer, min_tokens=longer, temperature=0)
    )
    assert forced.usage is not None
    assert forced.usage.completion_tokens == longer
    assert forced.finish_reason == "length"


async def test_top_k_one_is_greedy(backend: OpenAICompatBackend) -> None:
    greedy = await backend.complete(GREETING, SamplingParams(max_tokens=16, temperature=0))
    for seed in (1, 2):
        top1 = await backend.complete(
            GREETING, SamplingParams(max_tokens=16, temperature=1.5, top_k=1, seed=seed)
        )
        assert top1.text == greedy.text


async def test_repetition_penalty_reaches_the_server(
    openai_server: OpenAIServer, backend: OpenAICompatBackend
) -> None:
    messages = [ChatMessage("user", "Repeat the word banana twenty times, separated by spaces.")]
    plain = await backend.complete(messages, SamplingParams(max_tokens=30, temperature=0))
    penalised = await backend.complete(
        messages, SamplingParams(max_tokens=30, temperature=0, repetition_penalty=2.0)
    )
    if openai_server.kind == "llama_cpp":
        # llama.cpp's server names it repeat_penalty and ignores ours: same greedy text.
        assert penalised.text == plain.text
        return
    assert penalised.text != plain.text
    if openai_server.missing("model_text") is None:
        assert plain.text.lower().count("banana") > penalised.text.lower().count("banana")
    with pytest.raises(BackendResponseError) as info:
        await backend.complete(messages, SamplingParams(max_tokens=5, repetition_penalty=-1.0))
    assert info.value.status_code == 400


async def test_frequency_penalty_reaches_the_server(
    openai_server: OpenAIServer, backend: OpenAICompatBackend
) -> None:
    """OpenAI's own penalties: both servers take them by these names."""
    messages = [ChatMessage("user", "Repeat the word banana twenty times, separated by spaces.")]
    plain = await backend.complete(messages, SamplingParams(max_tokens=30, temperature=0))
    penalised = await backend.complete(
        messages, SamplingParams(max_tokens=30, temperature=0, frequency_penalty=2.0, presence_penalty=2.0)
    )
    if openai_server.missing("model_text"):
        assert penalised.text != plain.text  # random weights: the penalty still changes the greedy text
        return
    assert plain.text.lower().count("banana") > penalised.text.lower().count("banana"), (plain, penalised)


async def running_requests(server: OpenAIServer) -> float:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{root_of(server)}/metrics")).text
    match = re.search(r"^vllm:num_requests_running\{[^}]*\} (\S+)$", text, re.MULTILINE)
    assert match, "vLLM exposes no num_requests_running metric"
    return float(match.group(1))


async def became_idle(server: OpenAIServer, within: float = 10.0) -> bool:
    """Whether vLLM reports no running request within ``within`` seconds (aborts are asynchronous)."""
    for _ in range(int(within / 0.2)):
        if await running_requests(server) == 0:
            return True
        await asyncio.sleep(0.2)
    return False


async def abandon_after(backend: OpenAICompatBackend, tokens: int) -> None:
    stream = backend.stream(LONG_PROMPT, SamplingParams(max_tokens=1500, min_tokens=1500))
    received = 0
    async for delta in stream:
        received += isinstance(delta, TextDelta)
        if received >= tokens:
            break
    await stream.aclose()


async def test_abandoned_streams_are_aborted(
    openai_server: OpenAIServer, backend: OpenAICompatBackend
) -> None:
    """In the spirit of vLLM's own abort test: many long streams abandoned, then a fresh request is quick."""
    if openai_server.missing("concurrency"):
        for _ in range(3):  # one at a time: each must be stopped before the next can start
            await abandon_after(backend, 3)
    else:
        await asyncio.gather(*(abandon_after(backend, 2) for _ in range(12)))
        assert await became_idle(openai_server), "vLLM is still generating for clients that went away"
    started = time.perf_counter()
    completion = await backend.complete([ChatMessage("user", "Say hi")], SamplingParams(max_tokens=8))
    elapsed = time.perf_counter() - started
    assert completion.text
    # 12 x 1500 forced tokens would keep the CPU busy for many minutes if the aborts were lost.
    assert elapsed < 5, f"a fresh request took {elapsed:.1f}s after abandoned streams"


async def test_task_cancellation_aborts_upstream(
    openai_server: OpenAIServer, backend: OpenAICompatBackend
) -> None:
    first = asyncio.Event()

    async def consume() -> None:
        async for delta in backend.stream(LONG_PROMPT, SamplingParams(max_tokens=1500)):
            if isinstance(delta, TextDelta):
                first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 60)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    if openai_server.missing("concurrency") is None:
        assert await became_idle(openai_server), "vLLM is still generating for a cancelled task"
    started = time.perf_counter()
    await backend.complete([ChatMessage("user", "Hi")], SamplingParams(max_tokens=4))
    assert time.perf_counter() - started < 5

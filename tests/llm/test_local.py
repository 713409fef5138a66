"""The embedded backend, driven directly (real SmolLM2 GGUF through llama-cpp-python)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from vstreamer.errors import ConfigError
from vstreamer.llm.base import ChatMessage, Delta, SamplingParams, StreamEnd, TextDelta, Usage
from vstreamer.llm.local import LocalBackend, load_model
from vstreamer.llm.models import resolve_model_path

pytestmark = pytest.mark.integration

STORY = [ChatMessage("user", "Write a very long story about a dragon and a knight, with many chapters.")]
#: About 1.5k tokens: several seconds of prompt evaluation on a CPU.
LONG_CHAT = " ".join(
    f"Viewer number {i} says hello and asks about the weather in city {i % 17}." for i in range(80)
)


@pytest.fixture(scope="module")
def backend(smollm2_gguf: Path) -> LocalBackend:
    return LocalBackend(smollm2_gguf, n_ctx=2048)


async def test_streams_incrementally(backend: LocalBackend) -> None:
    arrivals: list[float] = []
    end: StreamEnd | None = None
    async for delta in backend.stream(STORY, SamplingParams(max_tokens=30, seed=3)):
        if isinstance(delta, TextDelta):
            arrivals.append(time.perf_counter())
        else:
            end = delta
    assert len(arrivals) >= 10
    assert arrivals[-1] - arrivals[0] > 0.02
    # A delta holds one token or more (a CJK character may take several).
    assert end is not None and end.usage is not None and end.usage.completion_tokens >= len(arrivals)


async def test_event_loop_stays_responsive_while_generating(backend: LocalBackend) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    await backend.complete(STORY, SamplingParams(max_tokens=40, seed=1))
    elapsed = time.perf_counter() - started
    task.cancel()
    # Generation runs on the worker thread: the loop keeps ticking (a blocked loop ticks once or not at all; the bound
    # is low, so that a busy machine's slow ticks cannot fail it).
    assert ticks >= 5, (ticks, elapsed)


async def test_cancel_stops_generation_within_a_token(backend: LocalBackend) -> None:
    stream = backend.stream(STORY, SamplingParams(max_tokens=1500))
    received = 0
    async for delta in stream:
        received += isinstance(delta, TextDelta)
        if received == 3:
            break
    await stream.aclose()
    started = time.perf_counter()
    completion = await backend.complete([ChatMessage("user", "Hi")], SamplingParams(max_tokens=4))
    assert completion.text
    # 1500 tokens at ~95 tok/s would block the single worker for ~15 s if generation went on; a cancelled one
    # leaves it free at once (the limit leaves room for a machine busy with other work: 3 s proved too tight).
    assert time.perf_counter() - started < 8


async def _first_delta(stream: AsyncIterator[Delta]) -> Delta:
    return await anext(stream)


async def test_cancel_during_prompt_evaluation_frees_the_worker(backend: LocalBackend) -> None:
    model = await backend.loaded()
    short = [ChatMessage("user", "Hi! Tell me about cats.")]
    greedy = SamplingParams(temperature=0.0, max_tokens=8)
    long_request = [ChatMessage("system", "[a] You are Mia."), ChatMessage("user", LONG_CHAT)]
    # Each answer to compare follows a request that shares only the template's first tokens with it: llama.cpp
    # then evaluates the same suffix in the same batch, so greedy decoding gives the same text.
    await backend.complete([ChatMessage("system", "[b] You are Mia."), ChatMessage("user", "Hello")], greedy)
    expected = (await backend.complete(short, greedy)).text
    reader = asyncio.create_task(_first_delta(backend.stream(long_request, greedy)))
    await asyncio.sleep(0.1)  # the client gives up while llama.cpp is still evaluating the long prompt
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    started = time.perf_counter()
    evaluated = await asyncio.get_running_loop().run_in_executor(model.executor, lambda: model.llama.n_tokens)
    # The worker is free at once, the prompt unfinished (evaluating it all takes seconds, 10 or more on a CPU).
    assert time.perf_counter() - started < 2
    assert evaluated < await backend.count_tokens(long_request)
    # The interrupted evaluation left nothing behind in the KV cache.
    assert (await backend.complete(short, greedy)).text == expected


async def test_usage_counts_tokens_and_the_generation_prompt(backend: LocalBackend) -> None:
    messages = [
        ChatMessage("system", "你是一个快乐的主播。"),
        ChatMessage("user", "请用中文介绍一下你自己。"),
    ]
    completion = await backend.complete(messages, SamplingParams(temperature=0.0, max_tokens=24))
    model = await backend.loaded()
    rendered = (
        "<|im_start|>system\n你是一个快乐的主播。<|im_end|>\n<|im_start|>user\n请用中文介绍一下你自己。<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    prompt = len(model.llama.tokenize(rendered.encode(), add_bos=False, special=True))
    assert completion.finish_reason == "length"
    # Cut at max_tokens: 24 tokens, though they decode to fewer deltas (a CJK character can take two).
    assert completion.usage == Usage(prompt, 24)


async def test_concurrent_requests_are_queued_not_crashed(backend: LocalBackend) -> None:
    prompts = [[ChatMessage("user", f"Count to {n}.")] for n in (3, 4, 5, 6)]
    results = await asyncio.gather(
        *(backend.complete(p, SamplingParams(max_tokens=12, seed=n)) for n, p in enumerate(prompts))
    )
    assert all(r.text for r in results)


async def test_token_count_matches_chat_template(backend: LocalBackend) -> None:
    messages = [ChatMessage("system", "You are Xiaoxing."), ChatMessage("user", "你好，今天直播玩什么？")]
    model = await backend.loaded()
    rendered = "<|im_start|>system\nYou are Xiaoxing.<|im_end|>\n<|im_start|>user\n你好，今天直播玩什么？<|im_end|>\n"
    expected = len(model.llama.tokenize(rendered.encode(), add_bos=False, special=True))
    assert await backend.count_tokens(messages) == expected
    shares = [await backend.count_message_tokens(m) for m in messages]
    # Shares are a slight, safe over-estimate (BPE merges differ at message boundaries).
    assert expected <= sum(shares) <= expected + 3 * len(messages)


def test_model_loaded_once_and_shared(smollm2_gguf: Path) -> None:
    assert load_model(smollm2_gguf, 2048) is load_model(smollm2_gguf, 2048)


def test_each_thread_count_gets_its_own_model(smollm2_gguf: Path) -> None:
    one, two = load_model(smollm2_gguf, 1024, n_threads=1), load_model(smollm2_gguf, 1024, n_threads=2)
    assert (one.llama.n_threads, two.llama.n_threads) == (1, 2)
    assert load_model(smollm2_gguf, 1024, n_threads=1) is one


def test_any_gguf_path_is_accepted_and_missing_one_rejected(smollm2_gguf: Path, tmp_path: Path) -> None:
    assert resolve_model_path(smollm2_gguf, "smollm2", tmp_path) == smollm2_gguf
    with pytest.raises(ConfigError, match="not found"):
        resolve_model_path(tmp_path / "missing.gguf", "smollm2", tmp_path)

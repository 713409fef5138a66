"""The openai backend against a real OpenAI-compatible server (llama.cpp's), and against broken servers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from tests.conftest import LlamaServer, free_port
from vstreamer.errors import BackendResponseError, BackendTimeout, BackendUnavailable
from vstreamer.llm.base import ChatMessage, SamplingParams, StreamEnd, TextDelta
from vstreamer.llm.openai_compat import OpenAICompatBackend

pytestmark = pytest.mark.integration

LONG_PROMPT = [
    ChatMessage("user", "Write a very long story about a dragon and a knight, with many chapters.")
]


def backend_for(url: str, **kwargs: float) -> OpenAICompatBackend:
    return OpenAICompatBackend(base_url=url, model="smollm2", **kwargs)  # type: ignore[arg-type]


async def test_stream_arrives_incrementally(llama_server: LlamaServer) -> None:
    backend = backend_for(llama_server.base_url)
    arrivals: list[float] = []
    texts: list[str] = []
    end: StreamEnd | None = None
    async for delta in backend.stream(LONG_PROMPT, SamplingParams(max_tokens=40, seed=1)):
        if isinstance(delta, TextDelta):
            arrivals.append(time.perf_counter())
            texts.append(delta.text)
        else:
            end = delta
    await backend.aclose()
    assert len(texts) >= 10, texts
    assert end is not None and end.finish_reason in ("stop", "length")
    # Tokens arrive spread over time, not in one burst at the end.
    assert arrivals[-1] - arrivals[0] > 0.05
    assert len({round(t, 3) for t in arrivals}) > len(arrivals) // 2


async def test_cancellation_stops_server_generation(llama_server: LlamaServer) -> None:
    """Abandon long streams; the server (which serves one request at a time) must free up at once."""
    backend = backend_for(llama_server.base_url)
    started = time.perf_counter()
    await backend.complete([ChatMessage("user", "Say hi")], SamplingParams(max_tokens=8))
    baseline = time.perf_counter() - started  # the same request on an idle server (machines vary in speed)
    for _ in range(3):
        stream = backend.stream(LONG_PROMPT, SamplingParams(max_tokens=2000))
        received = 0
        async for delta in stream:
            received += isinstance(delta, TextDelta)
            if received == 3:
                break
        await stream.aclose()
    started = time.perf_counter()
    completion = await backend.complete([ChatMessage("user", "Say hi")], SamplingParams(max_tokens=8))
    elapsed = time.perf_counter() - started
    await backend.aclose()
    assert completion.text
    # 3 x 2000 tokens at ~95 tok/s would take a minute if generation went on.
    assert elapsed < baseline + 4, f"fresh request waited {elapsed:.1f}s (idle: {baseline:.1f}s)"


async def test_task_cancellation_closes_upstream(llama_server: LlamaServer) -> None:
    backend = backend_for(llama_server.base_url)
    first = asyncio.Event()

    async def consume() -> None:
        async for delta in backend.stream(LONG_PROMPT, SamplingParams(max_tokens=2000)):
            if isinstance(delta, TextDelta):
                first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 30)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    started = time.perf_counter()
    await backend.complete([ChatMessage("user", "Hi")], SamplingParams(max_tokens=4))
    await backend.aclose()
    assert time.perf_counter() - started < 5


async def test_token_counts_use_server_tokenizer(llama_server: LlamaServer) -> None:
    backend = backend_for(llama_server.base_url)
    short = await backend.count_tokens([ChatMessage("user", "hello")])
    longer = await backend.count_tokens([ChatMessage("user", "hello " * 50)])
    assert backend.tokenizer.kind == "llama_cpp"
    assert longer - short >= 49
    health = await backend.health()
    await backend.aclose()
    assert health.ok


async def test_unreachable_server_fails_fast_with_clear_error() -> None:
    backend = backend_for(
        f"http://127.0.0.1:{free_port()}/v1", connect_timeout=1.0, max_retries=1, retry_backoff=0.05
    )
    started = time.perf_counter()
    with pytest.raises(BackendUnavailable, match="cannot reach"):
        await backend.complete(LONG_PROMPT, SamplingParams(max_tokens=5))
    assert time.perf_counter() - started < 5
    assert not (await backend.health()).ok
    await backend.aclose()


async def test_server_dying_mid_stream_gives_clear_error(private_llama_server: LlamaServer) -> None:
    backend = backend_for(private_llama_server.base_url, stall_timeout=3.0, max_retries=0)
    received = 0
    started = 0.0
    with pytest.raises((BackendUnavailable, BackendResponseError, BackendTimeout)):
        async for delta in backend.stream(LONG_PROMPT, SamplingParams(max_tokens=2000)):
            received += isinstance(delta, TextDelta)
            if received == 3:
                started = time.perf_counter()
                assert private_llama_server.process is not None
                private_llama_server.process.kill()
    await backend.aclose()
    assert received >= 3
    assert time.perf_counter() - started < 5


@contextlib.asynccontextmanager
async def stalling_server(send_first_chunk: bool) -> AsyncIterator[str]:
    """An HTTP server that accepts the request, maybe sends one SSE chunk, then goes silent."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        if send_first_chunk:
            event = (
                b'data: {"id":"x","object":"chat.completion.chunk","created":0,"model":"m",'
                b'"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\n\n'
            )
            writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
        await writer.drain()
        with contextlib.suppress(Exception):
            await asyncio.sleep(60)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.close()


async def test_slow_first_token_times_out() -> None:
    async with stalling_server(send_first_chunk=False) as url:
        backend = backend_for(url, first_token_timeout=1.0, max_retries=0)
        started = time.perf_counter()
        with pytest.raises(BackendTimeout, match="before the first token"):
            await backend.complete(LONG_PROMPT, SamplingParams(max_tokens=5))
        assert time.perf_counter() - started < 4
        await backend.aclose()


async def test_stalled_stream_times_out_keeping_partial_text() -> None:
    async with stalling_server(send_first_chunk=True) as url:
        backend = backend_for(url, first_token_timeout=5.0, stall_timeout=1.0, max_retries=0)
        received: list[str] = []
        with pytest.raises(BackendTimeout, match="mid-stream"):
            async for delta in backend.stream(LONG_PROMPT, SamplingParams(max_tokens=5)):
                if isinstance(delta, TextDelta):
                    received.append(delta.text)
        assert received == ["Hi"]
        await backend.aclose()


async def test_http_error_is_mapped(llama_server: LlamaServer) -> None:
    backend = OpenAICompatBackend(
        base_url=llama_server.base_url.replace("/v1", "/nope"), model="m", max_retries=0
    )
    with pytest.raises(BackendResponseError) as info:
        await backend.complete(LONG_PROMPT, SamplingParams(max_tokens=5))
    assert info.value.status_code == 404
    await backend.aclose()


async def test_tokenizer_found_once_the_server_comes_back(smollm2_gguf) -> None:  # type: ignore[no-untyped-def]
    """A server down at start gives estimates, not a permanent 'no tokenizer' verdict."""
    server = LlamaServer(smollm2_gguf)
    backend = backend_for(server.base_url)
    backend.tokenizer._retry_at = 0.0
    estimated = await backend.count_tokens([ChatMessage("user", "hello there")])
    assert estimated > 0 and backend.tokenizer.kind is None
    server.start()
    try:
        backend.tokenizer._retry_at = 0.0  # skip the back-off for the test
        await backend.count_tokens([ChatMessage("user", "hello there")])
        assert backend.tokenizer.kind == "llama_cpp"
    finally:
        server.stop()
        await backend.aclose()


async def test_retries_are_bounded_across_open_and_read() -> None:
    """max_retries counts every attempt of a request, however it failed before the first token."""
    requests = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        with contextlib.suppress(Exception):
            head = await reader.readuntil(b"\r\n\r\n")
            if b"/chat/completions" in head.split(b"\r\n")[0]:
                requests += 1
            if requests == 1:  # opens fine, then no token comes: a first-token timeout while reading
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n")
                writer.write(b"transfer-encoding: chunked\r\n\r\n")
                await writer.drain()
                await asyncio.sleep(5)
            else:
                writer.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n")
                writer.write(b"connection: close\r\n\r\n")
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    backend = backend_for(url, max_retries=2, retry_backoff=0.01, first_token_timeout=0.5)
    try:
        with pytest.raises(BackendResponseError) as info:
            await backend.complete(LONG_PROMPT, SamplingParams(max_tokens=5))
    finally:
        await backend.aclose()
        server.close()
    assert info.value.status_code == 503
    assert requests == 3, requests  # the first try and two retries, not a retry loop inside a retry loop

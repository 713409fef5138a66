"""The openai backend against a real OpenAI-compatible server (llama.cpp's), and against broken servers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import itertools
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import LlamaServer, free_port
from vstreamer.errors import BackendResponseError, BackendTimeout, BackendUnavailable, ConfigError
from vstreamer.llm.base import ChatMessage, SamplingParams, StreamEnd, TextDelta, Usage
from vstreamer.llm.openai_compat import FIRST_TEXT_CHARS, FIRST_TEXT_MAX_BUSY, OpenAICompatBackend
from vstreamer.llm.sse import MAX_LINE_BYTES, SSEDecoder
from vstreamer.llm.tokenize import hide_secret

#: Tests that start real servers; the SSE and transport tests below use scripted in-process ones.
integration = pytest.mark.integration

LONG_PROMPT = [
    ChatMessage("user", "Write a very long story about a dragon and a knight, with many chapters.")
]


def backend_for(url: str, **kwargs: float) -> OpenAICompatBackend:
    return OpenAICompatBackend(base_url=url, model="smollm2", **kwargs)  # type: ignore[arg-type]


@integration
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


@integration
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


@integration
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


@integration
async def test_token_counts_use_server_tokenizer(llama_server: LlamaServer) -> None:
    backend = backend_for(llama_server.base_url)
    short = await backend.count_tokens([ChatMessage("user", "hello")])
    longer = await backend.count_tokens([ChatMessage("user", "hello " * 50)])
    assert backend.tokenizer.kind == "llama_cpp"
    assert longer - short >= 49
    health = await backend.health()
    await backend.aclose()
    assert health.ok


@integration
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


@integration
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


@integration
async def test_slow_first_token_times_out() -> None:
    async with stalling_server(send_first_chunk=False) as url:
        backend = backend_for(url, first_token_timeout=1.0, max_retries=0)
        started = time.perf_counter()
        with pytest.raises(BackendTimeout, match="before the first token"):
            await backend.complete(LONG_PROMPT, SamplingParams(max_tokens=5))
        assert time.perf_counter() - started < 4
        await backend.aclose()


@integration
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


@integration
async def test_http_error_is_mapped(llama_server: LlamaServer) -> None:
    backend = OpenAICompatBackend(
        base_url=llama_server.base_url.replace("/v1", "/nope"), model="m", max_retries=0
    )
    with pytest.raises(BackendResponseError) as info:
        await backend.complete(LONG_PROMPT, SamplingParams(max_tokens=5))
    assert info.value.status_code == 404
    await backend.aclose()


@integration
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


@contextlib.asynccontextmanager
async def hand_served(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]], **kwargs: float
) -> AsyncIterator[OpenAICompatBackend]:
    """A backend (``kwargs``: its settings) over a server whose connections ``handle`` answers by hand."""
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    backend = backend_for(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", **kwargs)
    try:
        yield backend
    finally:
        await backend.aclose()
        server.close()


@integration
async def test_retries_are_bounded_across_open_and_read() -> None:
    """max_retries counts every attempt of a request, however it failed before the first token."""
    requests = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        with contextlib.suppress(Exception):
            head = await reader.readuntil(b"\r\n\r\n")
            if b"/chat/completions" in head.split(b"\r\n")[0]:
                requests += 1
            if requests == 1:  # opens fine, then the server goes away before a token: a failure while reading
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n")
                writer.write(b"transfer-encoding: chunked\r\n\r\n")
                await writer.drain()
            else:
                writer.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n")
                writer.write(b"connection: close\r\n\r\n")
                await writer.drain()
        writer.close()

    async with hand_served(handle, max_retries=2, retry_backoff=0.01, first_token_timeout=0.5) as backend:
        with pytest.raises(BackendResponseError) as info:
            await backend.complete(LONG_PROMPT, SamplingParams(max_tokens=5))
    assert info.value.status_code == 503
    assert requests == 3, requests  # the first try and two retries, not a retry loop inside a retry loop


@integration
async def test_the_first_token_deadline_is_the_whole_requests() -> None:
    """Retries share one first-token deadline: a server that takes every request and never answers fails it once the
    limit is up (each try waited the whole limit, so the client waited up to three times it with default retries)."""
    requests = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        with contextlib.suppress(Exception):
            head = await reader.readuntil(b"\r\n\r\n")
            requests += b"/chat/completions" in head.split(b"\r\n")[0]
            await reader.read()
        writer.close()

    async with hand_served(handle, max_retries=2, retry_backoff=0.01, first_token_timeout=0.6) as backend:
        started = time.monotonic()
        with pytest.raises(BackendTimeout, match="before the first token"):
            await backend.complete(LONG_PROMPT, SamplingParams(max_tokens=5))
    assert time.monotonic() - started < 1.1
    assert requests == 1


@integration
async def test_a_try_given_up_hangs_up_before_the_wait_for_the_next() -> None:
    """A try that failed before its first token (here: the server reports it is loading, and keeps the stream open)
    is closed when it is given up: the server stops generating for it, and the pool slot is free, during the wait
    before the retry, not after it."""
    hung_up: list[float] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.readuntil(b"\r\n\r\n")
            event = b'error: {"code": 503, "message": "loading model", "type": "unavailable_error"}\n\n'
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n")
            writer.write(b"transfer-encoding: chunked\r\n\r\n" + http_chunk(event))
            await writer.drain()
            await reader.read()  # nothing more comes: until the client hangs up
            hung_up.append(time.monotonic())
        writer.close()

    async with hand_served(handle, max_retries=1, retry_backoff=1.5, first_token_timeout=10) as backend:
        started = time.monotonic()
        with pytest.raises(BackendResponseError, match="loading model"):
            await backend.complete(LONG_PROMPT, SamplingParams(max_tokens=5))
    assert hung_up, "the first try's connection stayed open to the end"
    assert hung_up[0] - started < 1.0, hung_up[0] - started  # given up at once; the retry starts at 1.5 s


# --- the SSE parser ---------------------------------------------------------------------------------------

SSE_STREAM = (
    b": a comment, then a keep-alive\r\n:\r\n\r\n"
    b'data: {"a":1}\r\n\r\n'
    b'data:{"b":2}\n\n'  # no space after the colon
    b"id: 7\r\nretry: 100\r\ndata: line one\r\ndata: line two\r\n\r\n"
    b"event: ping\ndata: {}\r\n\r\n"
    b'error: {"message":"bad"}\n\n'  # llama.cpp's way to report an error
    b"data: [DONE]\r\n\r\n"
)
SSE_EVENTS = [
    (b"", b'{"a":1}'),
    (b"", b'{"b":2}'),
    (b"", b"line one\nline two"),
    (b"ping", b"{}"),
    (b"error", b'{"message":"bad"}'),
    (b"", b"[DONE]"),
]


def decode_in_pieces(stream: bytes, cuts: list[int]) -> list[tuple[bytes, bytes]]:
    decoder = SSEDecoder()
    events: list[tuple[bytes, bytes]] = []
    bounds = [0, *sorted(cuts), len(stream)]
    for start, end in itertools.pairwise(bounds):
        events += decoder.feed(stream[start:end])
    return events + decoder.flush()


def test_sse_decoder_reads_a_whole_stream() -> None:
    assert decode_in_pieces(SSE_STREAM, []) == SSE_EVENTS


def test_sse_decoder_reads_events_split_at_any_byte() -> None:
    for cut in range(1, len(SSE_STREAM)):
        # Splitting between \r and \n must not make two line ends (an empty line would end an event early).
        assert decode_in_pieces(SSE_STREAM, [cut]) == SSE_EVENTS, cut


@given(st.lists(st.integers(min_value=1, max_value=len(SSE_STREAM) - 1), max_size=12))
def test_sse_decoder_reads_events_split_anywhere(cuts: list[int]) -> None:
    assert decode_in_pieces(SSE_STREAM, cuts) == SSE_EVENTS


@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"])
def test_sse_decoder_accepts_every_line_end(end: bytes) -> None:
    stream = SSE_STREAM.replace(b"\r\n", b"\n").replace(b"\n", end)
    assert decode_in_pieces(stream, [len(stream) // 2]) == SSE_EVENTS


def test_sse_decoder_keeps_an_unterminated_last_event_for_flush() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"a":1}\n\ndata: {"b"') == [(b"", b'{"a":1}')]
    assert decoder.feed(b":2}") == []
    assert decoder.flush() == [(b"", b'{"b":2}')]
    assert decoder.flush() == []


@pytest.mark.parametrize("cut", range(6))
def test_sse_decoder_skips_a_bom_at_the_start(cut: int) -> None:
    stream = b'\xef\xbb\xbfdata: {"a":1}\n\ndata: \xef\xbb\xbf\n\n'  # a BOM later is data
    assert decode_in_pieces(stream, [cut]) == [(b"", b'{"a":1}'), (b"", b"\xef\xbb\xbf")]


@given(st.lists(st.integers(min_value=1, max_value=3 * 10_000), max_size=12))
def test_sse_decoder_reads_long_lines_split_anywhere(cuts: list[int]) -> None:
    # Lines longer than a read are held in pieces and searched only where new bytes came.
    lines = [b"data: " + bytes([65 + i]) * 10_000 for i in range(3)]
    stream = b"\r\n".join(lines[:2]) + b"\r\n\r" + lines[2] + b"\r\n\r\n"
    events = [(b"", lines[0][6:] + b"\n" + lines[1][6:]), (b"", lines[2][6:])]
    assert decode_in_pieces(stream, [c for c in cuts if c < len(stream)]) == events


def test_sse_decoder_refuses_a_line_longer_than_its_limit() -> None:
    decoder = SSEDecoder()
    piece = b"x" * 65536
    assert decoder.feed(b"data: " + piece) == []
    with pytest.raises(ValueError, match="longer than"):
        for _ in range(MAX_LINE_BYTES // len(piece)):
            decoder.feed(piece)


def test_sse_decoder_refuses_an_event_of_endless_data_lines() -> None:
    """Short lines, but no blank line ever ends the event: its data is capped like a line."""
    decoder = SSEDecoder()
    read = b"data: " + b"x" * 1000 + b"\n"
    with pytest.raises(ValueError, match="event longer than"):
        for _ in range(2 * MAX_LINE_BYTES // len(read)):
            assert decoder.feed(read * 64) == []
    assert SSEDecoder().feed(read * 64 + b"\n") == [(b"", b"\n".join([b"x" * 1000] * 64))]


# --- the transport, against scripted servers ----------------------------------------------------------------


def sse(payload: object) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


def text_event(text: str) -> bytes:
    return sse({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]})


def http_chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


STREAM_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
FINISH = sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
USAGE = sse({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}})
#: Pieces of a response body, each written (as one HTTP chunk) after a pause so that each is its own read.
Script = list[bytes]


class ScriptedUpstream:
    """An OpenAI-compatible server that answers each chat request with the next scripted event stream."""

    def __init__(self, scripts: list[Script]) -> None:
        self.scripts = scripts
        self.connections = 0
        """Connections that carried chat requests (the tokenizer's probes come on others)."""
        self.disconnected = asyncio.Event()
        """Set when a client closed a connection that carried chat requests."""
        self.handlers: set[asyncio.Task[None]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        chat = False
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                length = next(
                    int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length")
                )
                await reader.readexactly(length)
                if b"/chat/completions" not in lines[0]:  # no tokenizer here
                    writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                    continue
                if not chat:
                    chat = True
                    self.connections += 1
                writer.write(STREAM_HEAD)
                for piece in self.scripts.pop(0):
                    writer.write(http_chunk(piece))
                    await writer.drain()
                    await asyncio.sleep(0.05)
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        if chat and reader.at_eof():  # the client went away
            self.disconnected.set()
        writer.close()


@contextlib.asynccontextmanager
async def scripted_backend(
    *scripts: Script, **kwargs: float
) -> AsyncIterator[tuple[OpenAICompatBackend, ScriptedUpstream]]:
    upstream = ScriptedUpstream(list(scripts))
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
    backend = backend_for(
        f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", **{"max_retries": 0, **kwargs}
    )
    try:
        yield backend, upstream
    finally:
        await backend.aclose()
        server.close()
        # Let the handlers see their clients go rather than be cancelled by the loop's teardown.
        await asyncio.wait_for(asyncio.gather(*upstream.handlers, return_exceptions=True), 2)


async def deltas_of(backend: OpenAICompatBackend) -> list[TextDelta | StreamEnd]:
    return [delta async for delta in backend.stream(LONG_PROMPT, SamplingParams(max_tokens=5))]


async def test_events_of_one_read_merge_into_one_delta() -> None:
    together = text_event("a") + text_event("b") + text_event("c")
    script = [
        sse({"choices": [{"index": 0, "delta": {"role": "assistant"}}]}),
        together,
        text_event("d"),
        FINISH + USAGE + b"data: [DONE]\n\n",
    ]
    async with scripted_backend(script) as (backend, _):
        deltas = await deltas_of(backend)
    assert deltas == [TextDelta("abc"), TextDelta("d"), StreamEnd("stop", Usage(7, 3))]


#: The text events of a reply that one read brings whole (a burst), ~1 kB of SSE.
BURST_WORDS = [f"word{i} " for i in range(12)]


async def test_first_text_of_a_burst_goes_out_before_the_rest_is_read() -> None:
    # A read that brings a whole reply at once: its first words are a delta of their own (what follows them is
    # not decoded on the first text's way), the rest of that read is the next; later reads merge as before.
    words = BURST_WORDS
    first = math.ceil(FIRST_TEXT_CHARS / len(words[0]))
    burst = b"".join(text_event(w) for w in words) + FINISH + USAGE
    later = text_event("x") + text_event("y") + b"data: [DONE]\n\n"
    async with scripted_backend([burst, later]) as (backend, _):
        deltas = await deltas_of(backend)
    assert 1 < first < len(words)
    assert deltas == [
        TextDelta("".join(words[:first])), TextDelta("".join(words[first:])), TextDelta("xy"),
        StreamEnd("stop", Usage(7, 3)),
    ]  # fmt: skip


async def test_a_busy_backend_takes_each_burst_whole() -> None:
    # With more requests in flight than FIRST_TEXT_MAX_BUSY, splitting would cost every reply a delta and a write.
    words = BURST_WORDS
    role = sse({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})
    burst = b"".join(text_event(w) for w in words) + FINISH + b"data: [DONE]\n\n"
    streams = FIRST_TEXT_MAX_BUSY + 1
    async with scripted_backend(*[[role, burst] for _ in range(streams)]) as (backend, _):
        replies = await asyncio.gather(*[deltas_of(backend) for _ in range(streams)])
    assert all(deltas == [TextDelta("".join(words)), StreamEnd("stop", None)] for deltas in replies), replies


async def test_an_error_in_a_burst_after_its_first_text_is_a_mid_stream_error() -> None:
    error = sse({"error": {"message": "the engine died", "type": "server_error", "code": 500}})
    words = BURST_WORDS
    async with scripted_backend([b"".join(text_event(w) for w in words) + error]) as (backend, _):
        received: list[str] = []
        with pytest.raises(BackendResponseError, match=r"mid-stream.*the engine died"):
            async for delta in backend.stream(LONG_PROMPT, SamplingParams(max_tokens=5)):
                assert isinstance(delta, TextDelta)
                received.append(delta.text)
    # The first words went out; the error came with the rest of their read (never shown), after them.
    assert received == ["".join(words[: math.ceil(FIRST_TEXT_CHARS / len(words[0]))])]


async def test_events_split_across_reads_with_crlf_and_comments() -> None:
    event = text_event("héllo").replace(b"\n", b"\r\n")
    cut = event.index("é".encode()) + 1  # inside a UTF-8 sequence: text is decoded per event, not per read
    script = [
        b": keep-alive\r\n\r\n" + event[:cut],
        event[cut:-1],
        event[-1:] + FINISH + b"data: [DONE]\r\n\r\n",
    ]
    async with scripted_backend(script) as (backend, _):
        deltas = await deltas_of(backend)
    assert deltas == [TextDelta("héllo"), StreamEnd("stop", None)]


async def test_error_event_mid_stream_keeps_partial_text() -> None:
    error = sse({"error": {"message": "the engine died", "type": "server_error", "code": 500}})
    async with scripted_backend([text_event("Hi"), error]) as (backend, _):
        received: list[str] = []
        with pytest.raises(BackendResponseError, match=r"mid-stream.*the engine died") as info:
            async for delta in backend.stream(LONG_PROMPT, SamplingParams(max_tokens=5)):
                assert isinstance(delta, TextDelta)
                received.append(delta.text)
    assert received == ["Hi"] and info.value.status_code == 500


async def test_llama_cpp_error_line_before_the_first_token_is_retried() -> None:
    error = b'error: {"code": 503, "message": "loading model", "type": "unavailable_error"}\n\n'
    async with scripted_backend(
        [error], [text_event("ok") + b"data: [DONE]\n\n"], max_retries=1, retry_backoff=0.01
    ) as (backend, upstream):
        completion = await backend.complete(LONG_PROMPT, SamplingParams(max_tokens=5))
    assert completion.text == "ok"
    assert upstream.connections == 2  # the errored response was abandoned: its connection closed


async def test_malformed_chunk_is_a_response_error() -> None:
    async with scripted_backend([b"data: {not json}\n\n"]) as (backend, _):
        with pytest.raises(BackendResponseError, match=r"malformed response \(before the first token\)"):
            await deltas_of(backend)


async def test_http_error_body_message_and_status() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = b'{"error": {"message": "slow down", "type": "rate_limit", "code": 429}}'
        writer.write(b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n")
        writer.write(f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode() + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    backend = backend_for(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", max_retries=0)
    try:
        with pytest.raises(BackendResponseError, match="HTTP 429: slow down") as info:
            await backend.complete(LONG_PROMPT, SamplingParams(max_tokens=5))
    finally:
        await backend.aclose()
        server.close()
    assert info.value.status_code == 429


async def test_finished_streams_reuse_a_connection_and_abandoned_ones_close_it() -> None:
    whole = [text_event("a") + FINISH, b"data: [DONE]\n\n"]  # the end of the body comes after [DONE]
    long = [text_event(str(i)) for i in range(30)]
    async with scripted_backend(whole, whole, long, whole) as (backend, upstream):
        await deltas_of(backend)
        await deltas_of(backend)
        assert upstream.connections == 1
        stream = backend.stream(LONG_PROMPT, SamplingParams(max_tokens=5))
        assert await anext(stream) == TextDelta("0")
        await stream.aclose()
        # The half-read response's connection is closed, not put back in the pool: the server sees it go.
        await asyncio.wait_for(upstream.disconnected.wait(), 1)
        assert (await backend.complete(LONG_PROMPT, SamplingParams(max_tokens=5))).text == "a"
        assert upstream.connections == 2


# --- hostile servers ----------------------------------------------------------------------------------------

Answer = Callable[[asyncio.StreamWriter], Awaitable[None]]
"""Writes one chat request's answer (what it writes, with pauses as it likes)."""


@dataclass
class ChatRequest:
    at: float
    """When it arrived (``time.monotonic()``)."""
    head: bytes


@contextlib.asynccontextmanager
async def answering(
    *answers: bytes | Answer, userinfo: str = "", path: str = "/v1", **kwargs: Any
) -> AsyncIterator[tuple[OpenAICompatBackend, list[ChatRequest]]]:
    """A backend whose server answers its n-th chat request with ``answers[n]`` (the last repeats), keeping each
    connection open; yields the backend and the chat requests the server read. ``userinfo`` and ``path`` go into
    the backend's base URL."""
    requests: list[ChatRequest] = []
    handlers: set[asyncio.Task[Any]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                await reader.readexactly(length)
                if b"/chat/completions" not in head.split(b"\r\n")[0]:  # no tokenizer here
                    writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                    continue
                requests.append(ChatRequest(time.monotonic(), head))
                answer = answers[min(len(requests), len(answers)) - 1]
                if isinstance(answer, bytes):
                    writer.write(answer)
                else:
                    await answer(writer)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://{userinfo}{'@' if userinfo else ''}127.0.0.1:{server.sockets[0].getsockname()[1]}{path}"
    backend = OpenAICompatBackend(base_url=url, model="m", **{"max_retries": 0, **kwargs})
    try:
        yield backend, requests
    finally:
        await backend.aclose()
        server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)


def whole(head: bytes, body: bytes) -> bytes:
    """A response with ``head``'s status line and headers and ``body`` framed by its length."""
    return head + b"content-length: %d\r\n\r\n" % len(body) + body


COMPLETION = json.dumps({"choices": [{"message": {"role": "assistant", "content": "Hi"}}]}).encode()
SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (whole(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n", COMPLETION), "not an event stream"),
        (whole(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n", b"<html>Bad gateway</html>"), "not an event stream"),
        (whole(b"HTTP/1.1 200 OK\r\n", COMPLETION), "not an event stream.*without a single event"),
        (whole(SSE_HEAD + b"content-encoding: gzip\r\n", gzip.compress(text_event("Hi"))), "'gzip'-encoded"),
        (whole(b"HTTP/1.1 302 Found\r\nlocation: https://llm.example/v1/chat/completions\r\n", b""),
         "HTTP 302: redirected to 'https://llm.example/v1/chat/completions'"),
    ],
    ids=["json", "html", "json-untyped", "gzip", "redirect"],
)  # fmt: skip
async def test_a_success_that_is_not_an_event_stream_is_an_error(reply: bytes, error: str) -> None:
    # Taken as an empty reply, such a response would pass for a model with nothing to say.
    async with answering(reply) as (backend, requests):
        with pytest.raises(BackendResponseError, match=error):
            await deltas_of(backend)
    assert b"accept-encoding: identity" in requests[0].head.lower()


async def test_stream_with_a_bom_keeps_its_first_event() -> None:
    body = b"\xef\xbb\xbf" + text_event("Hello") + text_event(" world") + FINISH + b"data: [DONE]\n\n"
    async with answering(whole(SSE_HEAD, body)) as (backend, _):
        assert await deltas_of(backend) == [TextDelta("Hello world"), StreamEnd("stop", None)]


def trickling(piece: bytes) -> Answer:
    """A stream that sends one text, then ``piece`` every 50 ms: bytes keep coming, events do not."""

    async def answer(writer: asyncio.StreamWriter) -> None:
        writer.write(STREAM_HEAD + http_chunk(text_event("Hi")))
        while True:
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(http_chunk(piece))

    return answer


@pytest.mark.parametrize("piece", [b": ping\n\n", b"d"], ids=["comments", "an-endless-line"])
async def test_stall_timeout_counts_from_the_last_event_not_the_last_read(piece: bytes) -> None:
    async with answering(trickling(piece), stall_timeout=0.3) as (backend, _):
        received: list[str] = []
        started = time.monotonic()
        with pytest.raises(BackendTimeout, match="mid-stream"):
            async with asyncio.timeout(3):
                async for delta in backend.stream(LONG_PROMPT, SamplingParams(max_tokens=5)):
                    received.append(delta.text)  # type: ignore[union-attr]
    assert received == ["Hi"] and time.monotonic() - started < 1.5


async def test_events_keep_a_slow_stream_alive() -> None:
    async def slow(writer: asyncio.StreamWriter) -> None:
        writer.write(STREAM_HEAD)
        for i in range(6):  # 0.6 s in all, each event within the stall timeout of the one before
            writer.write(http_chunk(text_event(str(i)) if i % 2 else FINISH))  # events without text count too
            await writer.drain()
            await asyncio.sleep(0.1)
        writer.write(http_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")

    async with answering(slow, stall_timeout=0.25, first_token_timeout=1) as (backend, _):
        completion = await backend.complete(LONG_PROMPT, SamplingParams(max_tokens=5))
    assert completion.text == "135"


async def test_a_line_longer_than_the_decoder_holds_is_a_malformed_response() -> None:
    async def endless_line(writer: asyncio.StreamWriter) -> None:
        writer.write(STREAM_HEAD + http_chunk(text_event("Hi")) + http_chunk(b'data: {"choices": "'))
        piece = http_chunk(b"x" * 65536)
        for _ in range(MAX_LINE_BYTES // 65536 + 2):
            writer.write(piece)
            await writer.drain()

    async with answering(endless_line) as (backend, _):
        received: list[str] = []
        with pytest.raises(BackendResponseError, match=r"malformed response \(mid-stream\).*longer than"):
            async for delta in backend.stream(LONG_PROMPT, SamplingParams(max_tokens=5)):
                received.append(delta.text)  # type: ignore[union-attr]
    assert received == ["Hi"]


def unavailable(
    retry_after: int, body: bytes = b'{"error": {"message": "overloaded"}}', cut: int = 0
) -> bytes:
    """A 503 that asks to come back in ``retry_after`` seconds; its body stalls ``cut`` bytes before its end."""
    head = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: %d\r\n" % retry_after
    return whole(head, body)[: len(whole(head, body)) - cut]


async def test_stalled_error_body_and_a_retry_after_past_the_deadline_fail_at_once() -> None:
    stalled = unavailable(30, cut=10)  # a wait longer than the first-token deadline has room for: no retry
    async with answering(stalled, first_token_timeout=10, max_retries=2) as (backend, requests):
        started = time.monotonic()
        with pytest.raises(BackendResponseError, match="HTTP 503") as info:
            await deltas_of(backend)
    assert info.value.status_code == 503 and len(requests) == 1
    assert time.monotonic() - started < 5  # the body is given a second, not the whole 10 s deadline


async def test_retry_after_sets_the_wait_before_the_next_try() -> None:
    ok = STREAM_HEAD + http_chunk(text_event("ok") + b"data: [DONE]\n\n") + b"0\r\n\r\n"
    async with answering(unavailable(1), ok, max_retries=1, retry_backoff=0.01) as (backend, requests):
        completion = await backend.complete(LONG_PROMPT, SamplingParams(max_tokens=5))
    assert completion.text == "ok"
    assert 1 <= requests[1].at - requests[0].at < 2


async def test_api_key_is_trimmed_and_kept_out_of_errors() -> None:
    async def echo_key(writer: asyncio.StreamWriter) -> None:  # a proxy that echoes what it got
        body = json.dumps({"error": {"message": f"bad key in {requests[-1].head!r}"}}).encode()
        writer.write(whole(b"HTTP/1.1 401 Unauthorized\r\n", body))

    async with answering(echo_key, api_key="sk-test-0123456789\n") as (backend, requests):  # read from a file
        with pytest.raises(BackendResponseError, match=r"HTTP 401: bad key in .*Bearer \*\*\*") as info:
            await deltas_of(backend)
    assert b"\r\nAuthorization: Bearer sk-test-0123456789\r\n" in requests[0].head
    assert "sk-test-0123456789" not in str(info.value)


@pytest.mark.parametrize(
    "key", ["sk-test-0123456789\r\nX-Injected: 1", "sk-test-0123456789\x00", "sk-tést-0123456789"]
)
def test_api_key_with_characters_a_header_cannot_carry_is_refused(key: str) -> None:
    with pytest.raises(ConfigError, match="API key") as info:
        OpenAICompatBackend(base_url="http://127.0.0.1:1/v1", model="m", api_key=key)
    assert "0123456789" not in str(info.value)


OK_STREAM = STREAM_HEAD + http_chunk(text_event("ok") + FINISH + b"data: [DONE]\n\n") + b"0\r\n\r\n"


async def test_credentials_in_the_base_url_are_sent_as_basic_auth() -> None:
    # vLLM behind a proxy with basic auth: the chat request sent only "Bearer EMPTY" (401), health checks passed.
    async with answering(OK_STREAM, userinfo="user:p%40ss") as (backend, requests):
        assert [d.text for d in await deltas_of(backend) if isinstance(d, TextDelta)] == ["ok"]
        assert "p%40ss" not in backend.base_url and "user" not in backend.base_url
    basic = base64.b64encode(b"user:p@ss").decode()
    assert f"\r\nAuthorization: Basic {basic}\r\n".encode() in requests[0].head
    assert b"Bearer" not in requests[0].head


def test_credentials_in_the_base_url_and_an_api_key_are_refused() -> None:
    with pytest.raises(ConfigError, match="either") as info:
        OpenAICompatBackend(base_url="http://u:pw123@127.0.0.1:1/v1", model="m", api_key="sk-test-0123456789")
    assert "pw123" not in str(info.value) and "0123456789" not in str(info.value)


async def test_a_base_url_path_is_percent_encoded() -> None:
    async with answering(OK_STREAM, path="/my models/модель/v1") as (backend, requests):
        await deltas_of(backend)
    assert requests[0].head.startswith(
        b"POST /my%20models/%D0%BC%D0%BE%D0%B4%D0%B5%D0%BB%D1%8C/v1/chat/completions "
    )


@pytest.mark.parametrize("key", ["40", "token", "EMPTY"])
async def test_a_short_api_key_does_not_garble_error_messages(key: str) -> None:
    message = "This model's maximum context length is 4096 tokens; you asked for 5000 tokens (EMPTY prompt)"
    body = json.dumps({"error": {"message": message}}).encode()
    async with answering(whole(b"HTTP/1.1 400 Bad Request\r\n", body), api_key=key) as (backend, _):
        with pytest.raises(BackendResponseError) as info:
            await deltas_of(backend)
    assert message in str(info.value)


def test_an_api_key_is_hidden_as_a_whole_token() -> None:
    assert hide_secret("key 40 of 4096, 40.", "40") == "key *** of 4096, ***."
    assert hide_secret("sent sk-abc123xyz here", "sk-abc123xyz") == "sent *** here"
    assert hide_secret("EMPTY key", "EMPTY") == "EMPTY key"  # the placeholder is no secret


async def test_an_api_key_echoed_in_an_error_event_is_hidden() -> None:
    event = sse({"error": {"message": "invalid key sk-proj-SECRET0123 for this model", "code": 401}})
    async with answering(STREAM_HEAD + http_chunk(event) + b"0\r\n\r\n", api_key="sk-proj-SECRET0123") as (
        backend,
        _,
    ):
        with pytest.raises(BackendResponseError, match=r"invalid key \*\*\* for") as info:
            await deltas_of(backend)
    assert "SECRET0123" not in str(info.value)


async def _timed_texts(backend: OpenAICompatBackend) -> list[tuple[float, str]]:
    loop = asyncio.get_running_loop()
    return [(loop.time(), d.text) async for d in backend.stream(LONG_PROMPT, SamplingParams(max_tokens=5))
            if isinstance(d, TextDelta)]  # fmt: skip


#: A reply whose pieces come 50 ms apart (each its own read), as a GPU server's tokens do.
PACED = [sse({"choices": [{"index": 0, "delta": {"role": "assistant"}}]}), *map(text_event, "abcdef"),
         FINISH + b"data: [DONE]\n\n"]  # fmt: skip


async def test_under_load_text_after_the_first_is_read_in_batches() -> None:
    interval = 0.12
    async with scripted_backend(list(PACED), batch_interval=interval, batch_after=0) as (backend, _):
        texts = await _timed_texts(backend)
    assert "".join(t for _, t in texts) == "abcdef"  # nothing lost, nothing twice, in order
    assert texts[0][1] == "a"  # the first text is never held
    assert len(texts) < 6  # the pieces that came meanwhile went on together
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(texts)]
    assert all(gap >= interval - 0.005 for gap in gaps), gaps


async def test_below_the_load_every_piece_goes_on_as_it_comes() -> None:
    async with scripted_backend(list(PACED), batch_interval=0.12, batch_after=1) as (backend, _):
        texts = await _timed_texts(backend)  # one request in flight: not more than batch_after
    assert [t for _, t in texts] == list("abcdef")


async def test_a_batched_stream_still_times_out_when_it_stalls() -> None:
    async with stalling_server(send_first_chunk=True) as url:
        backend = backend_for(url, stall_timeout=0.3, max_retries=0, batch_interval=0.05, batch_after=0)
        received: list[str] = []
        started = time.perf_counter()
        with pytest.raises(BackendTimeout, match="mid-stream"):
            async for delta in backend.stream(LONG_PROMPT, SamplingParams(max_tokens=5)):
                if isinstance(delta, TextDelta):
                    received.append(delta.text)
        assert received == ["Hi"] and time.perf_counter() - started < 3
        await backend.aclose()

"""Upstream faults and abandoned streams, through the real gateway over a real llama.cpp server."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import httpx
import openai
import pytest

from tests.conftest import LlamaServer, free_port
from tests.gateway.conftest import GatewayServer

pytestmark = pytest.mark.integration

FIRST_CHUNK = "你好呀，欢迎来到直播间！今天我们聊聊游戏。"
LONG = [
    {"role": "user", "content": "Write a very long story about a dragon and a knight, with many chapters."}
]


def upstream_env(base_url: str, **extra: str) -> dict[str, str]:
    return {"VSTREAMER_BACKEND": "openai", "VSTREAMER_BASE_URL": base_url, "VSTREAMER_MODEL": "smollm2",
            "VSTREAMER_MAX_TOKENS": "1500", "VSTREAMER_CONTEXT_WINDOW": "4096", **extra}  # fmt: skip


async def _one_prompt_time(server: GatewayServer) -> float:
    """How long the upstream takes to evaluate the long prompt and give one token (also warms its caches)."""
    async with openai.AsyncOpenAI(
        base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=120
    ) as sdk:
        started = time.perf_counter()
        await sdk.chat.completions.create(model="nova", max_tokens=1, messages=LONG)
        return time.perf_counter() - started


async def _abandon_then_fresh(server: GatewayServer, streams: int) -> tuple[float, set[str]]:
    """Open ``streams`` long streams at once, abandon them after 0.5 s; time a fresh short request."""
    sdk = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=120)

    async def abandon(index: int) -> None:
        with contextlib.suppress(asyncio.TimeoutError, openai.APIError):
            async with asyncio.timeout(0.5):
                stream = await sdk.chat.completions.create(
                    model="nova", stream=True, max_tokens=1500, messages=LONG,
                    extra_headers={"X-Session-Id": f"abandon-{index}"},
                )  # fmt: skip
                async for _ in stream:
                    pass

    await asyncio.gather(*(abandon(i) for i in range(streams)))
    started = time.perf_counter()
    reply = await sdk.chat.completions.create(
        model="nova", max_tokens=8, messages=[{"role": "user", "content": "Hi"}]
    )
    elapsed = time.perf_counter() - started
    await sdk.close()
    assert reply.choices[0].message.content
    statuses = set()
    for index in range(streams):
        turns = await asyncio.to_thread(server.messages, f"abandon-{index}")
        statuses |= {t.status for t in turns if t.role == "assistant"}
    # Every abandoned reply that started is stored: interrupted, or complete when the model finished it within
    # the 0.5 s — or when llama.cpp's server, which ends a stream early once another request waits, cut it short.
    assert statuses and statuses <= {"interrupted", "complete"}
    return elapsed, statuses


async def test_abandoned_streams_stop_embedded_generation(start_gateway, smollm2_gguf) -> None:  # type: ignore[no-untyped-def]
    server: GatewayServer = start_gateway({"VSTREAMER_BACKEND": "local", "VSTREAMER_MAX_TOKENS": "1500"})
    one_prompt = await _one_prompt_time(server)
    elapsed, statuses = await _abandon_then_fresh(server, streams=16)
    assert "interrupted" in statuses
    # One model, one worker; queued abandoned requests are skipped, a running one stops within a token.
    # Had they gone on, 16 x 1500 tokens would take minutes.
    assert elapsed < 5 + one_prompt, f"fresh request took {elapsed:.1f}s (one prompt: {one_prompt:.1f}s)"


async def test_abandoned_streams_stop_llama_server(start_gateway, llama_server: LlamaServer) -> None:  # type: ignore[no-untyped-def]
    server: GatewayServer = start_gateway(upstream_env(llama_server.base_url))
    one_prompt = await _one_prompt_time(server)
    streams = 4
    elapsed, _ = await _abandon_then_fresh(server, streams=streams)
    # llama.cpp's server only notices a gone client after evaluating its queued prompt, so each abandoned request
    # still costs about one prompt evaluation there (vLLM aborts queued requests at once: see tests/vllm). Had
    # generation gone on, each would add ~1500 tokens (>15 s).
    assert elapsed < 5 + streams * (one_prompt + 0.5), (
        f"fresh request took {elapsed:.1f}s (prompt {one_prompt:.1f}s)"
    )


def test_backend_down_at_start(start_gateway) -> None:  # type: ignore[no-untyped-def]
    server = start_gateway(upstream_env(f"http://127.0.0.1:{free_port()}/v1", VSTREAMER_CONNECT_TIMEOUT="1",
                                        VSTREAMER_MAX_RETRIES="1"))  # fmt: skip
    sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    started = time.perf_counter()
    with pytest.raises(openai.APIStatusError) as info:
        sdk.chat.completions.create(
            model="nova",
            messages=[{"role": "user", "content": "hello?"}],
            extra_headers={"X-Session-Id": "down"},
        )
    assert info.value.status_code == 503
    assert "cannot reach" in str(info.value)
    assert time.perf_counter() - started < 10
    stored = server.messages("down")
    assert [(t.role, t.status) for t in stored] == [("user", "complete"), ("assistant", "failed")]
    assert httpx.get(f"{server.url}/readyz").status_code == 503


def test_circuit_opens_then_fails_fast(start_gateway) -> None:  # type: ignore[no-untyped-def]
    server = start_gateway(upstream_env(f"http://127.0.0.1:{free_port()}/v1", VSTREAMER_CONNECT_TIMEOUT="1",
                                        VSTREAMER_MAX_RETRIES="0", VSTREAMER_CIRCUIT_THRESHOLD="2"))  # fmt: skip
    sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    for _ in range(2):
        with pytest.raises(openai.APIStatusError):
            sdk.chat.completions.create(model="nova", messages=[{"role": "user", "content": "x"}])
    started = time.perf_counter()
    with pytest.raises(openai.APIStatusError, match="circuit open"):
        sdk.chat.completions.create(model="nova", messages=[{"role": "user", "content": "x"}])
    # Failed fast: no connection tried (the timeout is 1 s); the bound leaves room for a busy CI machine.
    assert time.perf_counter() - started < 5


def test_fallback_to_embedded_model_when_upstream_down(start_gateway) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("llama_cpp")
    server = start_gateway(upstream_env(f"http://127.0.0.1:{free_port()}/v1", VSTREAMER_CONNECT_TIMEOUT="1",
                                        VSTREAMER_MAX_RETRIES="0", VSTREAMER_FALLBACK="local",
                                        VSTREAMER_MAX_TOKENS="16"))  # fmt: skip
    sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=60)
    reply = sdk.chat.completions.create(model="nova", messages=[{"role": "user", "content": "Hello!"}])
    assert reply.choices[0].message.content


def test_killed_mid_stream_ends_sse_with_error(start_gateway, private_llama_server: LlamaServer) -> None:  # type: ignore[no-untyped-def]
    server = start_gateway(upstream_env(private_llama_server.base_url, VSTREAMER_STALL_TIMEOUT="3",
                                        VSTREAMER_MAX_RETRIES="0"))  # fmt: skip
    lines: list[str] = []
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", timeout=30, headers={"X-Session-Id": "killed"},
                      json={"model": "nova", "stream": True, "messages": LONG, "max_tokens": 1500}) as response:  # fmt: skip
        assert response.status_code == 200
        for line in response.iter_lines():
            if line:
                lines.append(line)
            if len(lines) == 5:
                assert private_llama_server.process is not None
                private_llama_server.process.kill()
    assert lines[-1] == "data: [DONE]"
    assert '"error"' in lines[-2]
    reply = server.messages("killed")[-1]
    assert reply.status == "failed" and reply.content and reply.error


@contextlib.asynccontextmanager
async def stalling_upstream(send_first_chunk: bool) -> AsyncIterator[str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            head = await reader.readuntil(b"\r\n\r\n")
            request_line = head.split(b"\r\n")[0]
            if b"/chat/completions" not in request_line:  # a live server whose generation hangs
                writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                await writer.drain()
                writer.close()
                return
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
            )
            if send_first_chunk:
                event = (b'data: {"id":"x","object":"chat.completion.chunk","created":0,"model":"m",'
                         b'"choices":[{"index":0,"delta":{"content":"' + FIRST_CHUNK.encode() + b'"},"finish_reason":null}]}\n\n')  # fmt: skip
                writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
            await writer.drain()
            await asyncio.sleep(60)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    finally:
        server.close()


async def test_slow_first_token_and_stalled_stream(start_gateway) -> None:  # type: ignore[no-untyped-def]
    async with stalling_upstream(send_first_chunk=False) as url:
        server = start_gateway(upstream_env(url, VSTREAMER_FIRST_TOKEN_TIMEOUT="1", VSTREAMER_MAX_RETRIES="0"),
                               name="slow")  # fmt: skip
        async with httpx.AsyncClient(timeout=30) as http:
            started = time.perf_counter()
            response = await http.post(f"{server.url}/v1/chat/completions",
                                       json={"model": "nova", "messages": LONG}, headers={"X-Session-Id": "slow"})  # fmt: skip
            assert response.status_code == 504
            assert "did not answer within 1s" in response.json()["error"]["message"]
            assert time.perf_counter() - started < 5
            metrics = (await http.get(f"{server.url}/metrics")).text
        assert [t.status for t in await asyncio.to_thread(server.messages, "slow")] == ["complete", "failed"]
        assert 'vstreamer_replies_total{status="failed"} 1.0' in metrics
    async with stalling_upstream(send_first_chunk=True) as url:
        server = start_gateway(upstream_env(url, VSTREAMER_STALL_TIMEOUT="1", VSTREAMER_MAX_RETRIES="0"),
                               name="stalled")  # fmt: skip
        async with httpx.AsyncClient(timeout=30) as http:
            payload = {"model": "nova", "stream": True, "messages": LONG}
            async with http.stream("POST", f"{server.url}/v1/chat/completions", json=payload,
                                   headers={"X-Session-Id": "stalled"}) as response:  # fmt: skip
                lines = [line async for line in response.aiter_lines() if line]
            metrics = (await http.get(f"{server.url}/metrics")).text
        assert lines[-1] == "data: [DONE]" and "mid-stream" in lines[-2]
        assert 'vstreamer_replies_total{status="failed"} 1.0' in metrics
        assert 'status="complete"' not in metrics.partition("vstreamer_replies_total")[2]
        reply = (await asyncio.to_thread(server.messages, "stalled"))[-1]
        # What was shown before the stall is kept (the output guard may hold back a few last characters).
        assert reply.status == "failed" and reply.content and FIRST_CHUNK.startswith(reply.content)


def test_stop_strings_and_penalties_reach_the_model(start_gateway, llama_server: LlamaServer) -> None:  # type: ignore[no-untyped-def]
    """OpenAI's ``stop``, ``presence_penalty`` and ``frequency_penalty`` were accepted and dropped: a client's stop
    string did not stop the reply. Greedy, the same prompt gives the same words: with a stop string from the middle
    of the free reply, the reply ends right before it."""
    server = start_gateway(upstream_env(llama_server.base_url))
    sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=120)
    ask = {"model": "nova", "temperature": 0, "seed": 1, "max_tokens": 40,
           "messages": [{"role": "user", "content": "Count from one to twenty in words, please."}]}  # fmt: skip
    free = sdk.chat.completions.create(**ask).choices[0].message.content or ""
    words = free.split()
    assert len(words) >= 6, free
    stop = max(words[len(words) // 2 :], key=len)  # a word of the second half
    cut = sdk.chat.completions.create(**ask, stop=[stop], presence_penalty=0.0, frequency_penalty=0.0)
    text = cut.choices[0].message.content or ""
    assert stop not in text and free.startswith(text.rstrip()) and len(text) < free.index(stop) + 1, (
        free,
        text,
    )
    refused = httpx.post(f"{server.url}/v1/chat/completions", json=ask | {"stop": ["a"] * 5})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "stop"  # at most 4, as OpenAI's

"""The openai backend's client cost: ``OpenAICompatBackend.stream`` against raw aiohttp, on the same fake upstream.

    .venv/bin/python bench/bench_upstream_client.py [--requests 2000] [--rounds 3] [--chunks 16]

Starts ``bench/fake_upstream.py`` and streams chat completions from it, in one run, with raw aiohttp (one pooled
session, the body read to its end and not parsed: the transport's floor) and through the backend (SSE parsing,
JSON decoding, timeouts, deltas). Prints streamed requests/s at 1, 50 and 200 concurrent streams, and the time
per request and to the first text at one stream (p50/p99).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import orjson
from yarl import URL

from common import free_port
from vstreamer.llm.base import ChatMessage, SamplingParams, TextDelta
from vstreamer.llm.openai_compat import OpenAICompatBackend

HERE = Path(__file__).resolve().parent
MESSAGES = [ChatMessage("system", "You are Nova, a streamer."), ChatMessage("user", "Hello there!")]
PARAMS = SamplingParams(max_tokens=64)
#: One request: returns (time to first text, whole time) in seconds.
Request = Callable[[], Awaitable[tuple[float, float]]]


async def wait_ready(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            try:
                async with session.get(f"{url}/models") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
    raise TimeoutError(f"{url} not ready")


def raw_client(session: aiohttp.ClientSession, url: str, model: str) -> Request:
    """The transport alone: the body is read to its end, not parsed."""
    chat_url = URL(f"{url}/chat/completions")
    body = orjson.dumps(
        {"model": model, "messages": [m.as_dict() for m in MESSAGES], "stream": True, "max_tokens": 64}
    )

    async def one() -> tuple[float, float]:
        started = time.perf_counter()
        first = 0.0
        response = await session.post(chat_url, data=body)
        while await response.content.readany():
            first = first or time.perf_counter() - started
        response.release()
        return first, time.perf_counter() - started

    return one


def backend_client(backend: OpenAICompatBackend) -> Request:
    async def one() -> tuple[float, float]:
        started = time.perf_counter()
        first = 0.0
        async for delta in backend.stream(MESSAGES, PARAMS):
            if isinstance(delta, TextDelta) and not first:
                first = time.perf_counter() - started
        return first, time.perf_counter() - started

    return one


async def throughput(request: Request, concurrency: int, total: int) -> float:
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await request()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - started)


async def latency(request: Request, count: int) -> tuple[list[float], list[float]]:
    firsts, wholes = [], []
    for _ in range(count):
        first, whole = await request()
        firsts.append(first * 1000)
        wholes.append(whole * 1000)
    return firsts, wholes


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1]


async def run(url: str, requests: int, rounds: int) -> None:
    backend = OpenAICompatBackend(base_url=url, model="fake", max_retries=0)
    headers = {"Content-Type": "application/json", "Authorization": "Bearer x"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), headers=headers) as session:
        clients = {"raw aiohttp": raw_client(session, url, "fake"), "backend": backend_client(backend)}
        for request in clients.values():  # warm up: connections, the tokenizer probe
            await throughput(request, 200, 400)
        print(
            f"{'':12} {'1 stream':>10} {'50 streams':>11} {'200 streams':>12}   (streamed req/s, best of {rounds})"
        )
        rates: dict[str, list[float]] = {name: [0.0, 0.0, 0.0] for name in clients}
        for _ in range(rounds):  # interleaved, so that both clients see the same machine
            for name, request in clients.items():
                for index, concurrency in enumerate((1, 50, 200)):
                    count = requests if concurrency > 1 else requests // 4
                    rate = await throughput(request, concurrency, count)
                    rates[name][index] = max(rates[name][index], rate)
        for name, (one, fifty, two_hundred) in rates.items():
            print(f"{name:12} {one:10,.0f} {fifty:11,.0f} {two_hundred:12,.0f}")
        print(f"\n{'one stream, ms':16} {'request p50':>11} {'p99':>7} {'first text p50':>15} {'p99':>7}")
        for name, request in clients.items():
            firsts, wholes = await latency(request, requests // 4)
            print(
                f"{name:16} {statistics.median(wholes):11.3f} {pct(wholes, 99):7.3f}"
                f" {statistics.median(firsts):15.3f} {pct(firsts, 99):7.3f}"
            )
    await backend.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per concurrency level")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each measurement; the best is shown")
    parser.add_argument("--chunks", type=int, default=16, help="text chunks per streamed reply")
    args = parser.parse_args()
    port = free_port()
    upstream = subprocess.Popen([sys.executable, str(HERE / "fake_upstream.py"), str(port), str(args.chunks)])
    try:
        url = f"http://127.0.0.1:{port}/v1"
        asyncio.run(wait_ready(url))
        asyncio.run(run(url, args.requests, args.rounds))
    finally:
        upstream.terminate()
        upstream.wait()


if __name__ == "__main__":
    main()

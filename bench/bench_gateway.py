"""Gateway overhead: the same fast fake OpenAI upstream, called directly and through ``vstreamer serve``.

    .venv/bin/python bench/bench_gateway.py [--requests 300] [--chunks 16]

Prints the time to first token (p50/p99) at one stream and streamed requests/s at 1, 50 and 200 concurrent
streams, for both paths, in one run. The gateway runs as configured for production use: persistence (SQLite),
moderation of input and output, metrics. Goals from the issue: <= 0.5 ms p50 / <= 2 ms p99 added TTFT at one
stream, >= 1,500 streamed req/s on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise TimeoutError(url)


async def one_stream(
    client: httpx.AsyncClient, url: str, model: str, user: str | None
) -> tuple[float, float]:
    body: dict[str, object] = {
        "model": model,
        "stream": True,
        "messages": [{"role": "user", "content": "hi there"}],
    }
    if user:
        body["user"] = user
    started = time.perf_counter()
    first = 0.0
    async with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not first and '"content":"' in line and '"content":""' not in line:
                first = time.perf_counter()
    return first - started, time.perf_counter() - started


async def ttft(url: str, model: str, requests: int, user: str | None) -> list[float]:
    async with httpx.AsyncClient(timeout=60) as client:
        for _ in range(20):  # warm-up
            await one_stream(client, url, model, user)
        return [(await one_stream(client, url, model, user))[0] for _ in range(requests)]


async def throughput(url: str, model: str, concurrency: int, requests: int, users: bool) -> float:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for index in range(requests):
            queue.put_nowait(index)

        async def worker(worker_id: int) -> None:
            while not queue.empty():
                queue.get_nowait()
                await one_stream(client, url, model, f"bench-{worker_id}" if users else None)

        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        return requests / (time.perf_counter() - started)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--chunks", type=int, default=16)
    args = parser.parse_args()
    up_port, gw_port = free_port(), free_port()
    data = tempfile.mkdtemp(prefix="vstreamer-bench-")
    upstream = subprocess.Popen(
        [sys.executable, str(HERE / "fake_upstream.py"), str(up_port), str(args.chunks)]
    )
    env = os.environ | {
        "VSTREAMER_DATA_DIR": data, "VSTREAMER_BACKEND": "openai", "VSTREAMER_MODEL": "fake",
        "VSTREAMER_BASE_URL": f"http://127.0.0.1:{up_port}/v1",
    }  # fmt: skip
    gateway = subprocess.Popen([sys.executable, "-m", "vstreamer", "serve", "--no-auth", "--port", str(gw_port)],
                               env=env, stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_ready(f"http://127.0.0.1:{up_port}/v1/models")
        wait_ready(f"http://127.0.0.1:{gw_port}/healthz")
        direct = f"http://127.0.0.1:{up_port}/v1/chat/completions"
        through = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
        d = asyncio.run(ttft(direct, "fake", args.requests, None))
        g = asyncio.run(ttft(through, "nova", args.requests, "bench-ttft"))
        print(
            f"upstream: fake OpenAI server, {args.chunks} chunks per reply; {args.requests} sequential requests"
        )
        print(f"{'path':<10} {'TTFT p50 ms':>12} {'TTFT p99 ms':>12}")
        print(f"{'direct':<10} {pct(d, 0.5) * 1e3:>12.2f} {pct(d, 0.99) * 1e3:>12.2f}")
        print(f"{'gateway':<10} {pct(g, 0.5) * 1e3:>12.2f} {pct(g, 0.99) * 1e3:>12.2f}")
        print(f"added by the gateway: p50 {(pct(g, .5) - pct(d, .5)) * 1e3:.2f} ms, "
              f"p99 {(pct(g, .99) - pct(d, .99)) * 1e3:.2f} ms (goal <= 0.5 / <= 2 ms)")  # fmt: skip
        print(f"\n{'streams':>8} {'direct req/s':>13} {'gateway req/s':>14}")
        for concurrency in (1, 50, 200):
            n = max(args.requests, concurrency * 2)
            rd = asyncio.run(throughput(direct, "fake", concurrency, n, users=False))
            rg = asyncio.run(throughput(through, "nova", concurrency, n, users=True))
            print(f"{concurrency:>8} {rd:>13.0f} {rg:>14.0f}")
        print("goal: >= 1,500 streamed req/s through the gateway on 2 cores")
        print(
            f"(median direct TTFT {statistics.median(d) * 1e3:.2f} ms; client, upstream and gateway share 2 cores)"
        )
    finally:
        gateway.terminate()
        upstream.terminate()
        gateway.wait(10)
        upstream.wait(10)


if __name__ == "__main__":
    main()

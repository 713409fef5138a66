"""Gateway overhead: the same fast fake OpenAI upstream, called directly, through a bare relay on the gateway's stack,
through ``vstreamer serve`` and (when installed) through LiteLLM's proxy, in one run.

    .venv/bin/python bench/bench_gateway.py [--requests 1000] [--rounds 5] [--chunks 16] [--first-token-ms 0]
                                            [--reply-language en|zh] [--token-ms 0] [--workers 1,2]
                                            [--client lean|aiohttp] [--litellm PATH|none] [--baseline SRC]

Prints the time to first token (p50/p99) at one stream and streamed requests/s at 1, 50 and 200 concurrent
streams for every path; both are measured in rounds that visit every path in turn (requests/s: the median round). The gateway runs as configured for production use: persistence (SQLite), moderation of
input and output, persona drift watch, metrics; every request is a turn of a stored session. The relay
(``bench/relay.py``: uvicorn, raw ASGI, the gateway's HTTP/1.1 client, nothing else) is the floor of that stack, so
the time vstreamer adds splits into the stack's and its own. ``--workers 1,2`` runs one gateway per count of worker
processes (``serve --workers``), all measured. The client (``bench/loadgen.py``) is a lean HTTP/1.1 one, a
keep-alive connection per stream: client, upstream and servers share the machine's cores, and aiohttp (``--client
aiohttp``, what earlier numbers used) spent ~450 µs of CPU per request that the servers then did not get (httpx's
pool collapsed under concurrency: it capped the direct path at ~230 req/s at 50 streams). The client's own CPU per
request is printed too.

LiteLLM's proxy is the peer (no database, no moderation: a plain relay); install it beside, not into, the project:
``python3 -m venv ~/.cache/vstreamer/litellm-venv && ~/.cache/vstreamer/litellm-venv/bin/pip install 'litellm[proxy]'``.
Goals from the issue: <= 0.5 ms p50 / <= 2 ms p99 added TTFT at one stream, >= 1,500 streamed req/s on 2 cores.

``--upstream URL`` measures against a running OpenAI-compatible server instead of the fake one (real vLLM on a GPU:
``--upstream http://127.0.0.1:8000/v1 --max-tokens 16``); it must listen on 127.0.0.1. The gateway's prompt then
holds the persona and the session's history, the direct one two words: with real compute "added" includes that
longer prefill, not only the gateway's own work.

``--baseline SRC`` runs a second gateway from another source tree (``SRC`` is its ``src`` folder, e.g. a
``git worktree`` of an older commit) as one more path, measured in the same rounds: on a shared machine whose speed
swings by half within minutes, a change is only judged against a baseline measured alongside it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import httpx
import orjson

from common import free_port, pct
from loadgen import Connection

HERE = Path(__file__).resolve().parent
DEFAULT_LITELLM = Path.home() / ".cache" / "vstreamer" / "litellm-venv" / "bin" / "litellm"


def wait_ready(url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(url)


@dataclass(frozen=True)
class Target:
    name: str
    url: str
    model: str
    sessions: bool
    """Send a session id (the gateway keeps each worker's history)."""
    pid: int | None = None
    """The server's process, for its CPU time per request (None: the fake upstream itself)."""


#: ``max_tokens`` of every request (None: the upstream's own length; the fake's replies are short).
MAX_TOKENS: int | None = None
#: Requests per path before the timed ones.
WARMUP = 50
#: ``lean`` (bench/loadgen.py) or ``aiohttp``.
CLIENT = "lean"


class Client:
    """Streamed requests to one path, over one keep-alive connection (``lean``) or an aiohttp session's pool."""

    def __init__(self, path: Target, limit: int = 1) -> None:
        self.path = path
        split = urlsplit(path.url)
        if CLIENT == "lean":
            self._connection: Connection | None = Connection(
                split.hostname or "127.0.0.1", split.port or 80, split.path, {"Authorization": "Bearer bench"}
            )
            self._session: aiohttp.ClientSession | None = None
        else:
            self._connection = None
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit))

    def body(self, user: str | None) -> dict[str, object]:
        body: dict[str, object] = {
            "model": self.path.model, "stream": True, "messages": [{"role": "user", "content": "hi there"}],
        }  # fmt: skip
        if user and self.path.sessions:
            body["user"] = user
        if MAX_TOKENS is not None:
            body["max_tokens"] = MAX_TOKENS
        return body

    async def stream(self, user: str | None) -> float:
        """One streamed request; returns the time to the first content chunk (the whole body is read)."""
        if self._connection is not None:
            started, first = await self._connection.post(orjson.dumps(self.body(user)))
        else:
            assert self._session is not None
            started, first = await _aiohttp_stream(self._session, self.path, self.body(user))
        if not first:
            raise RuntimeError(f"{self.path.name}: no content in the reply")
        return first - started

    async def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
        if self._session is not None:
            await self._session.close()


async def _aiohttp_stream(
    session: aiohttp.ClientSession, path: Target, body: dict[str, object]
) -> tuple[float, float]:
    started = time.perf_counter()
    first = 0.0
    async with session.post(path.url, json=body, headers={"Authorization": "Bearer bench"}) as response:
        if response.status != 200:
            raise RuntimeError(f"{path.name}: HTTP {response.status}: {(await response.text())[:300]}")
        async for line in response.content:
            if not first and b'"content":"' in line and b'"content":""' not in line:
                first = time.perf_counter()
    return started, first


async def ttft(path: Target, requests: int) -> list[float]:
    return (await ttft_rounds([path], requests, 1))[path.name]


async def ttft_rounds(paths: list[Target], requests: int, rounds: int) -> dict[str, list[float]]:
    """Time to first token of ``requests`` sequential requests per path, taken in ``rounds`` that visit every path in
    turn: a machine that gets slower or faster meanwhile (a shared VM does) weighs on every path alike."""
    clients = {path.name: Client(path) for path in paths}
    samples: dict[str, list[float]] = {path.name: [] for path in paths}
    try:
        for path in paths:
            for _ in range(WARMUP):  # warm-up (connections, caches, the session's first turns)
                await clients[path.name].stream("bench-ttft")
        for share in _shares(requests, rounds):
            for path in paths:
                client = clients[path.name]
                samples[path.name] += [await client.stream("bench-ttft") for _ in range(share)]
    finally:
        for client in clients.values():
            await client.close()
    return samples


async def throughput(path: Target, concurrency: int, requests: int) -> float:
    """Streamed requests/s of ``concurrency`` streams: lean, each on a connection of its own; aiohttp, all through one
    session's pool of that many connections."""
    if CLIENT == "lean":
        clients = [Client(path) for _ in range(concurrency)]
    else:
        clients = [Client(path, concurrency)] * concurrency
    try:
        await asyncio.gather(*(client.stream(f"bench-{i}") for i, client in enumerate(clients)))  # warm-up
        left = requests

        async def worker(worker_id: int) -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await clients[worker_id].stream(f"bench-{worker_id}")

        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        return requests / (time.perf_counter() - started)
    finally:
        for client in set(clients):
            await client.close()


def rate_rounds(
    paths: list[Target], concurrency: int, requests: int, rounds: int
) -> tuple[dict[str, list[float]], dict[str, float], dict[str, float]]:
    """Streamed requests/s of every path, ``requests`` each, taken in ``rounds`` that visit every path in turn (as
    :func:`ttft_rounds`: a slow spell of a shared machine weighs on every path alike); per path the rate of each
    round, the server's CPU time per request (µs, its workers' included) and the client's, over all of them."""
    rates: dict[str, list[float]] = {path.name: [] for path in paths}
    cpu = {path.name: 0.0 for path in paths if path.pid}
    client = {path.name: 0.0 for path in paths}
    measured = {path.name: 0 for path in paths}
    for share in _shares(requests, rounds):
        share = max(share, concurrency * 10)  # each stream makes ten requests a round at least
        for path in paths:
            before, mine = cpu_seconds(path.pid), _own_cpu()
            rates[path.name].append(asyncio.run(throughput(path, concurrency, share)))
            client[path.name] += _own_cpu() - mine
            if path.pid:
                cpu[path.name] += cpu_seconds(path.pid) - before
            measured[path.name] += share + concurrency  # the warm-up's requests too
    per_request = {name: seconds / measured[name] * 1e6 for name, seconds in cpu.items()}
    return rates, per_request, {name: seconds / measured[name] * 1e6 for name, seconds in client.items()}


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _shares(total: int, rounds: int) -> list[int]:
    """How many of ``total`` requests each round takes (they differ by one at most)."""
    return [total // rounds + (round_ < total % rounds) for round_ in range(rounds)]


def _split(samples: list[float], rounds: int) -> list[list[float]]:
    """``samples`` back into the rounds :func:`ttft_rounds` took them in."""
    out, start = [], 0
    for share in _shares(len(samples), rounds):
        out.append(samples[start : start + share])
        start += share
    return out


def cpu_seconds(pid: int | None) -> float:
    """CPU time (user + system) a process and its live children (a gateway's workers) have used so far; 0 where
    /proc is not there."""
    if pid is None:
        return 0.0
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def start_gateway(port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``vstreamer serve`` on ``port``, from the source tree that ``env`` (its ``PYTHONPATH``) selects."""
    return subprocess.Popen(
        [sys.executable, "-m", "vstreamer", "serve", "--no-auth", "--port", str(port)], env=env,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip


def start_litellm(executable: Path, port: int, upstream: int, model: str) -> subprocess.Popen[bytes]:
    env = os.environ | {
        "OPENAI_API_KEY": "EMPTY", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true", "LITELLM_LOG": "ERROR",
    }  # fmt: skip
    command = [str(executable), "--model", f"openai/{model}", "--api_base", f"http://127.0.0.1:{upstream}/v1",
               "--port", str(port), "--telemetry", "False"]  # fmt: skip
    return subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tempfile.gettempdir()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5, help="rounds the TTFT requests are split into, every "
                        "path measured in each round")  # fmt: skip
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--first-token-ms", type=float, default=0.0, help="the fake upstream's time to first token "
                        "(0: none, the issue's setting; a GPU server's is tens of ms, which the gateway's own work "
                        "before the first text overlaps)")  # fmt: skip
    parser.add_argument("--token-ms", type=float, default=0.0, help="the fake upstream's time between tokens "
                        "(0: all at once; a GPU decodes one every 10-20 ms, so text a gateway holds back waits that "
                        "long for the next)")  # fmt: skip
    parser.add_argument("--reply-language", choices=("en", "zh"), default="en", help="what the fake upstream "
                        "replies: English word pieces, or a Chinese streamer's reply (what production's are: the "
                        "output guard's work depends on the script)")  # fmt: skip
    parser.add_argument("--litellm", default=str(DEFAULT_LITELLM), help="LiteLLM's executable, or 'none'")
    parser.add_argument(
        "--baseline", type=Path, help="another source tree's src folder, run as one more gateway"
    )
    parser.add_argument("--upstream", help="a running OpenAI-compatible server's /v1 URL on 127.0.0.1, instead of "
                        "the fake one")  # fmt: skip
    parser.add_argument("--warmup", type=int, default=50, help="requests per path before the timed ones")
    parser.add_argument(
        "--streams", default="1,50,200", help="concurrent streams of the req/s runs (comma-separated)"
    )
    parser.add_argument("--max-tokens", type=int, help="max_tokens of every request (a real model's replies)")
    parser.add_argument("--workers", default="1,2", help="the gateway's worker processes (comma-separated: one "
                        "gateway each)")  # fmt: skip
    parser.add_argument("--client", choices=("lean", "aiohttp"), default="lean", help="the load generator")
    args = parser.parse_args()
    streams = [int(n) for n in args.streams.split(",")]
    worker_counts = [int(n) for n in args.workers.split(",")]
    global MAX_TOKENS, WARMUP, CLIENT
    MAX_TOKENS, WARMUP, CLIENT = args.max_tokens, args.warmup, args.client
    gw_port, ll_port, relay_port = free_port(), free_port(), free_port()
    data = tempfile.mkdtemp(prefix="vstreamer-bench-")
    processes: list[subprocess.Popen[bytes]] = []
    if args.upstream:
        up_url = args.upstream.rstrip("/")
        parsed = urlsplit(up_url)
        if parsed.hostname != "127.0.0.1" or parsed.port is None:
            parser.error("--upstream: give a URL on 127.0.0.1 with its port (http://127.0.0.1:8000/v1)")
        up_port = parsed.port
        model = httpx.get(f"{up_url}/models", timeout=10).json()["data"][0]["id"]
        described = f"{up_url} serving {model}, max_tokens {args.max_tokens}"
    else:
        up_port, model = free_port(), "fake"
        up_url = f"http://127.0.0.1:{up_port}/v1"
        described = (
            f"fake OpenAI server, {args.chunks} chunks per reply, first after {args.first_token_ms:g} ms"
        )
        processes.append(subprocess.Popen(
            [sys.executable, str(HERE / "fake_upstream.py"), str(up_port), str(args.chunks), str(args.first_token_ms),
             args.reply_language, str(args.token_ms)]
        ))  # fmt: skip
    env = os.environ | {
        "VSTREAMER_DATA_DIR": data, "VSTREAMER_BACKEND": "openai", "VSTREAMER_MODEL": model,
        "VSTREAMER_BASE_URL": up_url,
    }  # fmt: skip
    # One gateway per count of workers, each over its own database.
    gateways = {
        ("vstreamer" if count == 1 else f"vstreamer-w{count}"): (
            port := gw_port if i == 0 else free_port(),
            start_gateway(port, env | {"VSTREAMER_GATEWAY_WORKERS": str(count),
                                       "VSTREAMER_DATA_DIR": tempfile.mkdtemp(prefix="vstreamer-bench-")}),
        )
        for i, count in enumerate(worker_counts)
    }  # fmt: skip
    relay = subprocess.Popen([sys.executable, str(HERE / "relay.py"), str(up_port), str(relay_port)])
    processes += [process for _, process in gateways.values()] + [relay]
    base_port = free_port() if args.baseline is not None else 0
    if args.baseline is not None:
        if not (args.baseline / "vstreamer").is_dir():
            parser.error(f"--baseline: no vstreamer package in {args.baseline}")
        base_env = env | {"VSTREAMER_DATA_DIR": tempfile.mkdtemp(prefix="vstreamer-bench-base-"),
                          "PYTHONPATH": str(args.baseline.resolve())}  # fmt: skip
        processes.append(start_gateway(base_port, base_env))
    paths = [
        Target("direct", f"{up_url}/chat/completions", model, False),
        Target("relay", f"http://127.0.0.1:{relay_port}/v1/chat/completions", model, False, relay.pid),
        *(Target(name, f"http://127.0.0.1:{port}/v1/chat/completions", "nova", True, process.pid)
          for name, (port, process) in gateways.items()),
    ]  # fmt: skip
    if args.baseline is not None:
        paths.append(Target(
            "baseline", f"http://127.0.0.1:{base_port}/v1/chat/completions", "nova", True, processes[-1].pid
        ))  # fmt: skip
    litellm = Path(args.litellm)
    if args.litellm != "none" and litellm.exists():
        processes.append(start_litellm(litellm, ll_port, up_port, model))
        paths.append(
            Target(
                "litellm",
                f"http://127.0.0.1:{ll_port}/v1/chat/completions",
                f"openai/{model}",
                False,
                processes[-1].pid,
            )  # fmt: skip
        )
    else:
        print(f"(LiteLLM not found at {litellm}: no peer; see the docstring to install it)")
    try:
        wait_ready(f"{up_url}/models")
        for port, _ in gateways.values():
            wait_ready(f"http://127.0.0.1:{port}/healthz")
        wait_ready(f"http://127.0.0.1:{relay_port}/healthz")
        if args.baseline is not None:
            wait_ready(f"http://127.0.0.1:{base_port}/healthz")
        if paths[-1].name == "litellm":
            wait_ready(f"http://127.0.0.1:{ll_port}/health/liveliness")
        rounds = max(1, min(args.rounds, args.requests))
        print(f"upstream: {described}; {args.requests} sequential requests per path, in {rounds} rounds")
        print(f"{'path':<12} {'TTFT p50 ms':>12} {'TTFT p99 ms':>12} {'added p50':>10} {'added p99':>10}")
        samples = asyncio.run(ttft_rounds(paths, args.requests, rounds))
        base = samples["direct"]
        for path in paths:
            t = samples[path.name]
            print(f"{path.name:<12} {pct(t, .5) * 1e3:>12.2f} {pct(t, .99) * 1e3:>12.2f} "
                  f"{(pct(t, .5) - pct(base, .5)) * 1e3:>10.2f} {(pct(t, .99) - pct(base, .99)) * 1e3:>10.2f}")  # fmt: skip
        if not args.upstream:
            print("goal for vstreamer: added <= 0.5 ms p50 / <= 2 ms p99")
        if rounds > 1:
            for name in [*gateways, *(["baseline"] if args.baseline is not None else [])]:
                added = [pct(v, .5) - pct(d, .5) for v, d in zip(_split(samples[name], rounds),
                                                                   _split(base, rounds), strict=True)]  # fmt: skip
                print(f"{name} added p50 per round (ms): " + " ".join(f"{a * 1e3:.2f}" for a in added))
            # The direct path does not change between rounds: how far its p50 moves is the machine's own noise.
            direct = [pct(d, 0.5) for d in _split(base, rounds)]
            print(
                "direct TTFT p50 per round (ms), the machine's noise: "
                + " ".join(f"{d * 1e3:.2f}" for d in direct)
            )
        print(f"\n{'streams':>8} " + " ".join(f"{p.name + ' req/s':>16}" for p in paths))
        cpu: dict[str, list[float]] = {p.name: [] for p in paths if p.pid}
        client_cpu: dict[str, list[float]] = {p.name: [] for p in paths}
        for concurrency in streams:
            rates, used, clients = rate_rounds(paths, concurrency, args.requests, rounds)
            for name, per_request in used.items():
                cpu[name].append(per_request)
            for name, per_request in clients.items():
                client_cpu[name].append(per_request)
            print(
                f"{concurrency:>8} " + " ".join(f"{statistics.median(rates[p.name]):>16.0f}" for p in paths)
            )
            if rounds > 1:
                print(
                    f"{'':>8} "
                    + " ".join(f"{min(rates[p.name]):>7.0f}-{max(rates[p.name]):<8.0f}" for p in paths)
                )
        print(
            f"(the median of {rounds} rounds, each visiting every path; below it the rounds' lowest-highest)"
            if rounds > 1
            else ""
        )
        if not args.upstream:
            print("goal for vstreamer: >= 1,500 streamed req/s; client, upstream and servers share the machine's "
                  f"{os.cpu_count()} cores")  # fmt: skip
        for name, per_request in cpu.items():
            print(f"{name} server CPU per request at {' / '.join(map(str, streams))} streams (µs): "
                  + " / ".join(f"{us:.0f}" for us in per_request))  # fmt: skip
        for name, per_request in client_cpu.items():
            print(f"client ({CLIENT}) CPU per request of {name} at {' / '.join(map(str, streams))} streams (µs): "
                  + " / ".join(f"{us:.0f}" for us in per_request))  # fmt: skip
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(10)


if __name__ == "__main__":
    main()

"""Time to first token and decode speed of one model through our engine on three backends, in one run.

    .venv/bin/python bench/bench_backends.py [--model smollm2|qwen2.5-0.5b] [--runs 5] [--max-tokens 128]

The same GGUF (the embedded SmolLM2 by default) is served three ways and driven through ``DialogueEngine`` with
the same persona, prompt and greedy sampling: in-process llama.cpp (``LocalBackend``), llama.cpp's OpenAI-compatible
server, and vLLM CPU (the production server code, model converted to Hugging Face format). The backends run one
after another so they never share the CPU. TTFT is measured from ``engine.reply()`` to the first streamed text
(prompt building and token counting included); tok/s is the decode rate after the first token.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from common import free_port
from vstreamer.engine import ContextBudget, Conversation, DialogueEngine
from vstreamer.llm import vllm_cpu
from vstreamer.llm.base import LLMBackend, SamplingParams
from vstreamer.llm.local import LocalBackend
from vstreamer.llm.openai_compat import OpenAICompatBackend
from vstreamer.persona import PersonaLibrary

#: Asks for more than ``max_tokens`` so every backend generates the same number of tokens (finish "length").
PROMPT = "Tell the chat a very long story about your favourite game, with many chapters and details."


@dataclass
class Run:
    ttft_s: float
    tokens: int
    decode_s: float


@dataclass
class Result:
    name: str
    runs: list[Run]
    note: str = ""

    def row(self) -> str:
        ttft = statistics.median(r.ttft_s for r in self.runs) * 1000
        rates = [(r.tokens - 1) / r.decode_s for r in self.runs if r.decode_s > 0 and r.tokens > 1]
        rate = statistics.median(rates) if rates else float("nan")
        tokens = statistics.median(r.tokens for r in self.runs)
        return f"| {self.name:<34} | {ttft:>9.0f} | {rate:>7.1f} | {tokens:>6.0f} | {self.note}"


async def measure(backend: LLMBackend, runs: int, max_tokens: int) -> list[Run]:
    persona = PersonaLibrary(None).get("nova")
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, seed=1)
    engine = DialogueEngine(backend, ContextBudget(2048, max_tokens), defaults=params)
    results: list[Run] = []
    for index in range(runs + 1):  # the first run warms caches and is not counted
        conversation = Conversation(persona.id, user_name="Sam")
        started = time.perf_counter()
        first = last = 0.0
        async for event in engine.reply(conversation, persona, PROMPT):
            if event.kind == "delta":
                last = time.perf_counter()
                first = first or last
        usage = conversation.turns[-1].usage
        tokens = usage.completion_tokens if usage else 0
        if index:
            results.append(Run(first - started, tokens, last - first))
    await backend.aclose()
    return results


def start_llama_server(gguf: Path, alias: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", alias,
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--verbose", "False"]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(300):
        if process.poll() is not None:
            raise RuntimeError(f"llama.cpp server exited; see {log}")
        try:
            if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"llama.cpp server not ready; see {log}")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def say(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


async def bench_embedded(gguf: Path, args: argparse.Namespace) -> Result:
    say("embedded (in-process llama.cpp) ...")
    return Result(
        "embedded llama.cpp (LocalBackend)",
        await measure(LocalBackend(gguf, n_ctx=2048), args.runs, args.max_tokens),
    )


async def bench_llama_server(gguf: Path, args: argparse.Namespace, logs: Path) -> Result:
    say("llama.cpp server ...")
    process, url = start_llama_server(gguf, args.model, logs / "llama-server.log")
    try:
        backend = OpenAICompatBackend(base_url=url, model=args.model)
        return Result("llama.cpp server (OpenAICompat)", await measure(backend, args.runs, args.max_tokens))
    finally:
        stop(process)


async def bench_vllm(args: argparse.Namespace, logs: Path) -> Result:
    say("vLLM CPU (setting up if needed) ...")
    prepared = vllm_cpu.prepare(args.model, progress=say)
    launch = vllm_cpu.build_cpu_command(
        prepared.python, prepared.model_dir, served_model_name=prepared.served_name, port=free_port()
    )
    server = vllm_cpu.VLLMCPUServer(launch, logs / "vllm.log")
    started = time.monotonic()
    await asyncio.to_thread(server.start, progress=say)
    ready = time.monotonic() - started
    try:
        backend = OpenAICompatBackend(base_url=server.base_url, model=prepared.served_name)
        runs = await measure(backend, args.runs, args.max_tokens)
        return Result(f"vLLM CPU {vllm_cpu.VLLM_CPU_VERSION} (OpenAICompat)", runs, f"ready in {ready:.0f}s")
    finally:
        server.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(vllm_cpu.SERVED_NAMES), default="smollm2")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--only", nargs="*", choices=["embedded", "llama-server", "vllm"])
    args = parser.parse_args()
    gguf = vllm_cpu.gguf_for(args.model)
    logs = Path(tempfile.mkdtemp(prefix="bench-backends-"))
    chosen = set(args.only or ["embedded", "llama-server", "vllm"])
    steps: list[tuple[str, Callable[[], object]]] = [
        ("embedded", lambda: bench_embedded(gguf, args)),
        ("llama-server", lambda: bench_llama_server(gguf, args, logs)),
        ("vllm", lambda: bench_vllm(args, logs)),
    ]
    results = [await step() for name, step in steps if name in chosen]  # type: ignore[misc]
    print(f"\nmodel {gguf.name}; {args.runs} runs each (median), greedy, max_tokens {args.max_tokens}, "
          f"{os.cpu_count()} CPU cores, load average at the end {os.getloadavg()[0]:.1f}; logs in {logs}")  # fmt: skip
    print(f"| {'backend':<34} | TTFT (ms) | tok/s   | tokens | note")
    print(f"|{'-' * 36}|{'-' * 11}|{'-' * 9}|{'-' * 8}|------")
    for result in results:
        print(result.row())


if __name__ == "__main__":
    asyncio.run(main())

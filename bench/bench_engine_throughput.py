"""Tokens/s of the embedded model: llama.cpp called directly vs through vstreamer's engine, in one run.

    .venv/bin/python bench/bench_engine_throughput.py [--rounds 5] [--max-tokens 128] [--model FILE.gguf]

Both sides use the same GGUF, the same prompt (the engine's own, persona included) and greedy decoding, so they
generate the same tokens; the ratio shows what the engine (worker thread, queue, event loop, context building)
costs. Goal: ratio >= 0.9.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

from llama_cpp import Llama

from vstreamer.engine import ContextBudget, Conversation, DialogueEngine, Turn
from vstreamer.llm.base import SamplingParams
from vstreamer.llm.local import LocalBackend
from vstreamer.llm.models import smollm2_path
from vstreamer.persona import PersonaLibrary

QUESTION = "Tell me about your favourite games and why you like streaming them."


def direct_run(llama: Llama, messages: list[dict[str, str]], max_tokens: int) -> tuple[float, float, int]:
    started = time.perf_counter()
    first = 0.0
    tokens = 0
    for chunk in llama.create_chat_completion(
        messages=messages, stream=True, max_tokens=max_tokens, temperature=0.0, top_p=1.0, seed=1
    ):
        if chunk["choices"][0]["delta"].get("content"):
            tokens += 1
            first = first or time.perf_counter()
    ended = time.perf_counter()
    return first - started, tokens / (ended - first) if tokens > 1 else 0.0, tokens


async def engine_prompt(engine: DialogueEngine) -> list[dict[str, str]]:
    persona = PersonaLibrary(None).get("nova")
    conversation = Conversation(persona.id, user_name="Sam", turns=[Turn("user", QUESTION)])
    return [m.as_dict() for m in (await engine.build_context(conversation, persona)).messages]


async def engine_run(engine: DialogueEngine) -> tuple[float, float, int]:
    persona = PersonaLibrary(None).get("nova")
    conversation = Conversation(persona.id, user_name="Sam")
    started = time.perf_counter()
    first = 0.0
    async for event in engine.reply(conversation, persona, QUESTION):
        if event.kind == "delta":
            first = first or time.perf_counter()
    ended = time.perf_counter()
    # Tokens as the model generated them (the engine may merge pieces it held back into one delta).
    usage = conversation.turns[-1].usage
    tokens = usage.completion_tokens if usage else 0
    return first - started, tokens / (ended - first) if tokens > 1 else 0.0, tokens


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--model", type=Path, default=None)
    args = parser.parse_args()
    model = args.model or smollm2_path()
    n_ctx = 4096

    backend = LocalBackend(model, n_ctx=n_ctx)
    engine = DialogueEngine(
        backend,
        ContextBudget(n_ctx, args.max_tokens),
        defaults=SamplingParams(temperature=0.0, top_p=1.0, max_tokens=args.max_tokens, seed=1),
    )
    direct = Llama(model_path=str(model), n_ctx=n_ctx, verbose=False)
    messages = await engine_prompt(engine)  # the exact prompt the engine sends, replayed directly
    await engine_run(engine)  # warm-up both
    direct_run(direct, messages, args.max_tokens)

    rows: dict[str, list[tuple[float, float, int]]] = {"llama.cpp direct": [], "vstreamer engine": []}
    for _ in range(args.rounds):
        rows["llama.cpp direct"].append(direct_run(direct, messages, args.max_tokens))
        rows["vstreamer engine"].append(await engine_run(engine))

    print(f"model: {model.name}   rounds: {args.rounds}   max_tokens: {args.max_tokens}   greedy")
    print(f"{'path':<18} {'TTFT p50 ms':>12} {'tok/s p50':>10} {'tokens':>7}")
    medians = {}
    for name, runs in rows.items():
        ttft = statistics.median(r[0] for r in runs) * 1000
        rate = statistics.median(r[1] for r in runs)
        medians[name] = rate
        print(f"{name:<18} {ttft:>12.1f} {rate:>10.1f} {runs[-1][2]:>7}")
    ratio = medians["vstreamer engine"] / medians["llama.cpp direct"]
    print(
        f"engine / direct tokens/s ratio: {ratio:.3f}  (goal >= 0.9: {'met' if ratio >= 0.9 else 'NOT met'})"
    )


if __name__ == "__main__":
    asyncio.run(main())

"""Memory costs with the fake backend: per-turn prompt building vs history length, summaries, extraction, drift.

Run: PYTHONPATH=src python bench/bench_memory.py [--turns 5000]
The engine builds each prompt from the newest turns back to the budget, with token counts cached on the turns,
and memory recall reads a capped set of facts: the per-turn cost should stay flat as the history grows. In the
same run, a naive baseline that re-counts the whole history every turn (what a builder without caching or an
early stop does) shows the growth that this avoids.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vstreamer.engine import ContextBudget, Conversation, DialogueEngine, MemoryManager, Turn  # noqa: E402
from vstreamer.engine.drift import DriftDetector  # noqa: E402
from vstreamer.engine.extract import EXTRACT_TAG, parse_facts  # noqa: E402
from vstreamer.engine.summary import SUMMARY_TAG  # noqa: E402
from vstreamer.llm import FakeBackend  # noqa: E402
from vstreamer.llm.base import ChatMessage, SamplingParams  # noqa: E402
from vstreamer.llm.estimate import MESSAGE_OVERHEAD, estimate_tokens  # noqa: E402
from vstreamer.persona import PersonaLibrary  # noqa: E402

CHECKPOINTS = (100, 500, 1000, 2000, 5000, 10000)
WINDOW = 50


def respond(messages: Sequence[ChatMessage]) -> str:
    first = messages[0].content
    if first.startswith(SUMMARY_TAG):
        return "阿明下周考试；大家在聊游戏。"
    if first.startswith(EXTRACT_TAG):
        return json.dumps({"facts": ["下周考试"]}, ensure_ascii=False)
    return "好呀～今天我们继续玩星露谷！"


def viewer_says(index: int) -> str:
    if index % 40 == 0:
        return f"我第{index}次来直播间啦，我下周考试"
    return f"第{index}条弹幕：主播今天玩什么游戏？What game today?"


async def engine_turns(turns: int) -> dict[int, float]:
    """Milliseconds from the viewer's message to the built prompt (memory recall + context), per checkpoint."""
    persona = PersonaLibrary(None).get("xiaoxing")
    budget = ContextBudget(4096, 256)
    backend = FakeBackend(respond)
    engine = DialogueEngine(
        backend, budget, defaults=SamplingParams(max_tokens=32), memory=MemoryManager(backend, budget)
    )
    conversation = Conversation(persona.id, user_name="阿明", platform="bilibili", viewer_id="42")
    samples: list[float] = []
    for index in range(1, turns + 1):
        started = time.perf_counter()
        async for event in engine.reply(conversation, persona, viewer_says(index)):
            if event.kind == "started":
                samples.append((time.perf_counter() - started) * 1000)
        if index % 25 == 0:
            await engine.tasks.drain()
    await engine.aclose()
    print(f"  summaries written: {engine.stats.summaries}, facts remembered: {engine.stats.facts_added}")
    return {n: statistics.median(samples[n - WINDOW : n]) for n in CHECKPOINTS if n <= turns}


def naive_turns(turns: int) -> dict[int, float]:
    """Baseline: count every turn of the history again for each prompt (no cache, no early stop)."""
    history: list[Turn] = []
    samples: list[float] = []
    for index in range(1, turns + 1):
        history.append(Turn("user", viewer_says(index)))
        started = time.perf_counter()
        sum(estimate_tokens(t.content) + MESSAGE_OVERHEAD for t in history)
        samples.append((time.perf_counter() - started) * 1000)
        history.append(Turn("assistant", "好呀～今天我们继续玩星露谷！"))
    return {n: statistics.median(samples[n - WINDOW : n]) for n in CHECKPOINTS if n <= turns}


async def timings() -> None:
    persona = PersonaLibrary(None).get("xiaoxing")
    budget = ContextBudget(4096, 256)
    backend = FakeBackend(respond)
    memory = MemoryManager(backend, budget)
    turns = [Turn("user" if i % 2 == 0 else "assistant", viewer_says(i)) for i in range(16)]
    repeats = 200
    started = time.perf_counter()
    for _ in range(repeats):
        await memory.summarizer.fold(persona, "阿明", "之前的摘要。", turns)
    print(
        f"summary fold of 16 turns (fake model):        {(time.perf_counter() - started) / repeats * 1000:7.3f} ms"
    )
    conversation = Conversation(persona.id, viewer_id="42")
    started = time.perf_counter()
    for index in range(repeats):
        await memory.learn(conversation, persona, Turn("user", f"我下周考试{index}"))
    print(
        f"fact extraction + dedupe + store (fake model): {(time.perf_counter() - started) / repeats * 1000:7.3f} ms"
    )
    answers = ['{"facts": ["喜欢猫"]}', 'Sure! ```json\n{"facts": ["likes cats"]}\n```', "not json at all {"]
    started = time.perf_counter()
    for _ in range(2000):
        for answer in answers:
            with contextlib.suppress(ValueError):
                parse_facts(answer)
    print(
        f"parse + validate one extraction answer:        {(time.perf_counter() - started) / 6000 * 1000:7.3f} ms"
    )
    detector = DriftDetector("小星")
    reply = "哈哈，今天我们继续玩星露谷物语！作为一个主播，我要把农场种满草莓～" * 3
    started = time.perf_counter()
    for _ in range(200):
        stream = detector.stream()
        for char in reply:
            stream.feed(char)
        stream.finish()
    per_token = (time.perf_counter() - started) / (200 * len(reply)) * 1e6
    print(f"drift guard per streamed token:                {per_token:7.2f} µs")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=5000)
    args = parser.parse_args()
    print(f"per-turn prompt building (median of {WINDOW} turns), {args.turns} turns, fake backend:")
    ours = asyncio.run(engine_turns(args.turns))
    naive = naive_turns(args.turns)
    print(f"{'history turns':>14} | {'engine: recall + build':>23} | {'naive full recount':>19}")
    for n in ours:
        print(f"{n:>14} | {ours[n]:>20.3f} ms | {naive[n]:>16.3f} ms")
    first, last = next(iter(ours.values())), list(ours.values())[-1]
    print(f"engine cost ratio last/first checkpoint: {last / first:.2f} (flat ≈ 1)")
    asyncio.run(timings())


if __name__ == "__main__":
    main()

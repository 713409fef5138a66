"""Building a turn's prompt against vLLM: before (a ``/tokenize`` request for the whole prompt, each new message
counted on the turn that needs it) and now (the sum of the messages' exact shares; a reply's share counted in the
background as the engine does when the reply ends), in one run on the same server.

    .venv/bin/python bench/bench_prompt_count.py [--turns 80] [--model smollm2|qwen2.5-0.5b]

Starts vLLM CPU (``scripts/vllm-cpu setup`` builds it once) and grows one conversation turn by turn; each turn's
prompt is built twice, once each way, and both counts are checked against each other. Prints the time per build
(p50 / p99) and how many HTTP requests each way made. On a GPU server the saved request is the same: one round trip
through vLLM's API server and its tokenizer per turn, before generation can start.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from common import free_port, pct
from vstreamer.engine import ContextBudget, ContextBuilder, Conversation, Turn
from vstreamer.llm import vllm_cpu
from vstreamer.llm.openai_compat import OpenAICompatBackend
from vstreamer.persona import PersonaLibrary

LINES = [
    ("user", "小星晚上好！今天直播玩什么游戏呀？Any plans for tonight?"),
    ("assistant", "晚上好呀～今天我们继续玩星露谷物语，争取把温室修好！Let's farm together~"),
]


class WholePromptCount(OpenAICompatBackend):
    """The same backend, counting every prompt with one ``/tokenize`` request (what the builder did before)."""

    @property
    def counts_add_up(self) -> bool:
        return False


async def run(base_url: str, model: str, turns: int) -> None:
    persona = PersonaLibrary(None).get("xiaoxing")
    budget = ContextBudget(context_window=2048, max_tokens=128)
    backends = {
        "before": WholePromptCount(base_url=base_url, model=model),
        "now": OpenAICompatBackend(base_url=base_url, model=model),
    }
    builders = {name: ContextBuilder(backend, budget) for name, backend in backends.items()}
    requests = dict.fromkeys(backends, 0)
    for name, backend in backends.items():
        send = backend._http.send

        async def counted(*args: object, _name: str = name, _send: object = send, **kwargs: object) -> object:
            requests[_name] += 1
            return await _send(*args, **kwargs)  # type: ignore[operator]

        backend._http.send = counted  # type: ignore[method-assign]
    conversations = {name: Conversation(persona.id, user_name="小明") for name in backends}
    times: dict[str, list[float]] = {name: [] for name in backends}
    for i in range(turns):
        role, text = LINES[i % 2]
        counts = []
        for name, builder in builders.items():
            conversation = conversations[name]
            conversation.turns.append(turn := Turn(role, f"{text} #{i}"))  # type: ignore[arg-type]
            if role != "user":
                if name == "now":
                    await builder.count_turn(turn)  # the engine's background job, after the reply
                continue
            started = time.perf_counter()
            built = await builder.build(conversation, persona)
            times[name].append(time.perf_counter() - started)
            counts.append(built.prompt_tokens)
        if counts and len(set(counts)) != 1:
            raise SystemExit(f"turn {i}: the counts differ: {counts}")
    print(f"vLLM CPU ({model}); {turns} turns; every prompt count agreed both ways")
    print(f"{'counting':<14} {'build p50 ms':>13} {'build p99 ms':>13} {'HTTP requests':>14}")
    for name, values in times.items():
        warm = values[3:]  # the first builds measure the template and count the persona once
        print(f"{name:<14} {pct(warm, 0.5) * 1e3:>13.2f} {pct(warm, 0.99) * 1e3:>13.2f} {requests[name]:>14}")
    for backend in backends.values():
        await backend.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=80)
    parser.add_argument("--model", default="smollm2", choices=["smollm2", "qwen2.5-0.5b"])
    args = parser.parse_args()
    prepared = vllm_cpu.prepare(args.model)
    launch = vllm_cpu.build_cpu_command(
        prepared.python, prepared.model_dir, served_model_name=prepared.served_name, port=free_port()
    )
    server = vllm_cpu.VLLMCPUServer(launch, Path(tempfile.mkdtemp()) / "vllm.log")
    server.start(wait_s=240)
    try:
        asyncio.run(run(server.base_url, server.served_name, args.turns))
    finally:
        server.stop()


if __name__ == "__main__":
    main()

"""Rolling summaries: folded in the background, never delaying a reply, cancellable, within their budget."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from pathlib import Path

import pytest

from tests.memory.conftest import ScriptedBackend
from vstreamer.engine import ContextBudget, Conversation, DialogueEngine, MemoryManager, MemoryPolicy, Turn
from vstreamer.engine.facts import Fact, ViewerKey
from vstreamer.engine.memory import InMemoryFacts
from vstreamer.engine.summary import Summarizer
from vstreamer.engine.window import MAX_HISTORY_TURNS
from vstreamer.errors import BackendUnavailable
from vstreamer.llm.base import SamplingParams
from vstreamer.persona import Persona
from vstreamer.store import open_store


async def chat(engine: DialogueEngine, conversation: Conversation, persona: Persona, text: str) -> str:
    return "".join([e.text async for e in engine.reply(conversation, persona, text) if e.kind == "delta"])


def filler(index: int) -> str:
    return f"第{index}条弹幕：今天直播间好热闹啊，大家都在刷礼物和弹幕呢，主播加油！"


async def test_replies_never_wait_for_a_summary_and_shutdown_cancels_it(
    xiaoxing: Persona, small_budget: ContextBudget
) -> None:
    gate = (
        asyncio.Event()
    )  # the summary request hangs until the gate opens: only a blocking engine would stall
    backend = ScriptedBackend(summary_gate=gate)
    engine = DialogueEngine(backend, small_budget, memory=MemoryManager(backend, small_budget))
    conversation = Conversation(xiaoxing.id)
    for index in range(150):
        await asyncio.wait_for(chat(engine, conversation, xiaoxing, filler(index)), 5)
    assert engine.tasks.running(f"summary:{conversation.id}")  # one fold in flight, no pile-up
    assert len(engine.tasks) == 1 and engine.stats.summaries == 0
    await engine.aclose()
    assert len(engine.tasks) == 0 and engine.stats.summaries == 0 and not conversation.summary


async def test_summary_covers_what_left_and_is_used_in_later_prompts(
    xiaoxing: Persona, small_budget: ContextBudget
) -> None:
    backend = ScriptedBackend()
    engine = DialogueEngine(backend, small_budget, memory=MemoryManager(backend, small_budget))
    conversation = Conversation(xiaoxing.id, user_name="阿明")
    await chat(engine, conversation, xiaoxing, "我叫阿明，答应我下次直播唱歌！")
    for index in range(120):
        await chat(engine, conversation, xiaoxing, filler(index))
        await engine.tasks.drain()
    assert engine.stats.summaries >= 1 and "阿明" in conversation.summary
    covered = [t.id for t in conversation.turns].index(conversation.summary_until)
    last_prompt = backend.kinds["reply"][-1]
    assert "阿明" in last_prompt[0].content and "答应我" not in "".join(m.content for m in last_prompt[1:])
    assert covered < len(conversation.turns) - 2
    folded = "\n".join(m.content for p in backend.kinds["summary"] for m in p)
    assert xiaoxing.render(xiaoxing.description, "阿明")[:30] not in folded  # the persona is never summarised


async def test_folds_that_fall_behind_catch_up_in_order_and_skip_no_turn(xiaoxing: Persona) -> None:
    """A summariser slow for a hundred turns: the folds after it take the oldest unfolded turns first, so every turn
    that left the window ends up in some fold (before, the ones beyond one fold's reach were skipped for good)."""
    gate = asyncio.Event()
    backend = ScriptedBackend(summary=lambda _: "（闲聊）", summary_gate=gate)
    budget = ContextBudget(context_window=3072, max_tokens=128, reserve_tokens=16)
    engine = DialogueEngine(backend, budget, memory=MemoryManager(backend, budget))
    conversation = Conversation(xiaoxing.id)
    for index in range(100):
        await chat(engine, conversation, xiaoxing, filler(index))
    gate.set()
    await engine.tasks.drain()
    for index in range(100, 220):
        await chat(engine, conversation, xiaoxing, filler(index))
        await engine.tasks.drain()
    folded = {
        int(n)
        for prompt in backend.kinds["summary"]
        for n in re.findall(r"第(\d+)条弹幕", prompt[-1].content)
    }
    covered = [t.id for t in conversation.turns].index(conversation.summary_until)
    left = [t for t in conversation.turns[: covered + 1] if t.role == "user"]
    assert len(left) > 150
    assert {int(re.search(r"第(\d+)条", t.content).group(1)) for t in left} <= folded  # type: ignore[union-attr]


async def test_summary_of_summaries_stays_within_budget(xiaoxing: Persona) -> None:
    long_answer = "阿明说了很多很多话。" * 200
    backend = ScriptedBackend(summary=lambda m: long_answer if "压缩" not in m[0].content else "阿明：要点。")
    summarizer = Summarizer(backend, max_tokens=64)
    text = await summarizer.fold(xiaoxing, "阿明", "旧摘要", [Turn("user", "你好"), Turn("assistant", "嗨")])
    assert text == "阿明：要点。"
    assert len(backend.kinds["summary"]) == 2  # fold, then compress (a summary of the summary)


async def test_failed_or_empty_summaries_leave_the_fold_to_the_caller(xiaoxing: Persona) -> None:
    """No digest of raw turns stands in for a summary: the fold answers ``None`` and the caller keeps the old one."""
    backend = ScriptedBackend(summary=lambda m: "   ")
    summarizer = Summarizer(backend, max_tokens=128)
    assert await summarizer.fold(xiaoxing, "阿明", "", [Turn("user", "我下周考试")]) is None
    assert summarizer.failures == 1

    class Down(ScriptedBackend):
        async def complete(self, messages, params):  # type: ignore[no-untyped-def]
            raise BackendUnavailable("down")

    summarizer = Summarizer(Down(), max_tokens=16)
    assert (
        await summarizer.fold(xiaoxing, "阿明", "第一行\n第二行", [Turn("user", "最新的一条消息" * 5)])
        is None
    )
    assert summarizer.failures == 1


async def test_memory_off_switches_keep_prompts_plain(xiaoxing: Persona, small_budget: ContextBudget) -> None:
    backend = ScriptedBackend()
    policy = MemoryPolicy(summaries=False, facts=False)
    engine = DialogueEngine(
        backend, small_budget, defaults=SamplingParams(max_tokens=32),
        memory=MemoryManager(backend, small_budget, policy=policy),
    )  # fmt: skip
    conversation = Conversation(xiaoxing.id, viewer_id="v1")
    for index in range(100):
        await chat(engine, conversation, xiaoxing, "我" + filler(index))
    await engine.tasks.drain()
    assert backend.kinds["summary"] == [] and backend.kinds["facts"] == []


def _numbers(texts: Iterable[str]) -> set[int]:
    return {int(n) for text in texts for n in re.findall(r"msg(\d+)\b", text)}


@pytest.mark.parametrize("stalled", [0, 250], ids=["summariser-keeps-up", "summariser-stalls-for-a-while"])
@pytest.mark.parametrize("session_cache", [None, 0], ids=["cached", "read-each-turn"])
async def test_long_sessions_summarise_every_turn_that_leaves_the_prompt(
    xiaoxing: Persona, tmp_path: Path, session_cache: int | None, stalled: int
) -> None:
    """Short messages in a wide context: hundreds of turns would fit. The prompt takes a bounded window, the store
    keeps every turn not summarised yet (its cache trims, a read of the session goes back to the summary), so each
    message is either in the last prompt or in a fold, never in both, never in neither; also when the summariser
    hangs for a few hundred turns."""
    store = await open_store(None, tmp_path, session_cache=session_cache)
    gate = asyncio.Event()
    backend = ScriptedBackend(reply=lambda m: "ok", summary=lambda m: "（闲聊）", summary_gate=gate)
    budget = ContextBudget(context_window=8192, max_tokens=256)
    memory = MemoryManager(backend, budget, summaries=store, policy=MemoryPolicy(facts=False))
    engine = DialogueEngine(backend, budget, store=store, memory=memory)
    record = await store.create_session(xiaoxing.id, owner="o")
    sent = max(stalled, 200) + 60
    try:
        for index in range(sent):
            conversation = await store.load_conversation(record.id)  # as the gateway does on every request
            await chat(engine, conversation, xiaoxing, f"msg{index}")
            if index >= stalled:
                gate.set()
                await engine.tasks.drain()
    finally:
        await engine.aclose()
        await store.close()
    raw = _numbers(m.content for m in backend.kinds["reply"][-1][1:])
    folded = _numbers(prompt[-1].content for prompt in backend.kinds["summary"])
    assert len(raw) <= MAX_HISTORY_TURNS and not raw & folded and len(backend.kinds["summary"]) > 5
    waiting = set(range(sent)) - raw - folded  # left the window since the last fold: fewer than a fold takes
    assert all(max(folded) < n < min(raw) for n in waiting) and 2 * len(waiting) < memory.policy.summary_batch


async def test_a_raid_of_messages_left_out_of_prompts_does_not_stop_the_summary(
    xiaoxing: Persona, small_budget: ContextBudget
) -> None:
    """A fold waits for enough turns that prompts carried; a stretch of blocked ones longer than a fold's reach
    moves the summary past them instead of holding it there for good."""
    backend = ScriptedBackend(summary=lambda m: "（闲聊）")
    engine = DialogueEngine(backend, small_budget, memory=MemoryManager(backend, small_budget))
    conversation = Conversation(xiaoxing.id)
    for _ in range(40):
        conversation.add(Turn("user", "刷屏", status="blocked"))
        conversation.add(Turn("assistant", "请文明发言", status="blocked"))
    for index in range(150):
        await chat(engine, conversation, xiaoxing, f"msg{index} " + filler(index))
        await engine.tasks.drain()
    folded = _numbers(prompt[-1].content for prompt in backend.kinds["summary"])
    window = _numbers(m.content for m in backend.kinds["reply"][-1][1:])
    waiting = set(range(150)) - window - folded
    assert folded and all(max(folded) < n < min(window) for n in waiting) and len(waiting) < 6


async def test_summarised_turns_never_come_back_raw_beside_their_summary(
    xiaoxing: Persona, small_budget: ContextBudget
) -> None:
    """A wider window (the system message got smaller again) would have room for turns already folded: they stay
    out, the summary speaks for them."""
    backend = ScriptedBackend()
    engine = DialogueEngine(backend, small_budget, memory=MemoryManager(backend, small_budget))
    conversation = Conversation(xiaoxing.id)
    for index in range(6):
        conversation.add(Turn("user", f"msg{index}"))
        conversation.add(Turn("assistant", "好呀"))
    conversation.summary, conversation.summary_until = "他们聊了 msg0 到 msg3", conversation.turns[7].id
    await chat(engine, conversation, xiaoxing, "msg6")
    prompt = backend.kinds["reply"][-1]
    assert "msg0 到 msg3" in prompt[0].content
    assert _numbers(m.content for m in prompt[1:]) == {4, 5, 6}


class HeldFacts(InMemoryFacts):
    """Facts whose reads wait at ``hold`` once it is set (a database read or a query embedding in flight)."""

    def __init__(self) -> None:
        super().__init__()
        self.hold: asyncio.Event | None = None
        self.reading = asyncio.Event()

    async def viewer_facts(self, viewer: ViewerKey, *, limit: int = 200) -> list[Fact]:
        if self.hold is not None:
            self.reading.set()
            await self.hold.wait()
        return await super().viewer_facts(viewer, limit=limit)


async def test_a_fold_ending_while_facts_are_read_leaves_no_turn_out_of_the_prompt(xiaoxing: Persona) -> None:
    """Recall read the summary, then awaited the viewer's facts, then where the summary ends: a fold ending in
    between paired the old summary with the new one's end, so the turns it folded were in neither the prompt's
    summary nor its history (here the facts were deleted meanwhile: the history has room to reach back to them),
    and the reply was stored with the id of a summary its prompt never carried."""
    gate = asyncio.Event()
    backend = ScriptedBackend(
        summary=lambda m: " ".join(re.findall(r"第\d+条", m[-1].content)) or "（闲聊）", summary_gate=gate
    )
    budget = ContextBudget(context_window=4096, max_tokens=128, reserve_tokens=16)
    facts, viewer = HeldFacts(), ViewerKey("web", "v1")
    await facts.add_facts(
        viewer, [Fact(viewer, f"养了一只叫团子{k}号的橘猫，每天晚上都陪着看直播") for k in range(12)]
    )
    memory = MemoryManager(
        backend, budget, policy=MemoryPolicy(summary_batch=2, facts_tokens=256), facts=facts
    )
    engine = DialogueEngine(backend, budget, memory=memory)
    conversation = Conversation(xiaoxing.id, viewer_id=viewer.user_id)
    sent = 0
    while not engine.tasks.running(f"summary:{conversation.id}"):
        await chat(engine, conversation, xiaoxing, f"第{sent}条：今天直播间好热闹啊大家都在刷礼物")
        sent += 1
    assert not conversation.summary and "团子" in backend.kinds["reply"][-1][0].content
    facts.hold = asyncio.Event()
    racing = asyncio.create_task(chat(engine, conversation, xiaoxing, f"第{sent}条：今天直播间好热闹啊"))
    await facts.reading.wait()  # recall is reading the facts: the fold ends, the viewer's facts are deleted
    await facts.delete_facts(viewer)
    gate.set()
    await engine.tasks.drain()  # the fold ends (the message's own jobs start only once its reply has)
    assert conversation.summary
    facts.hold.set()
    await racing
    prompt = backend.kinds["reply"][-1]
    carried = {int(n) for n in re.findall(r"第(\d+)条", prompt[0].content)}
    history = {int(n) for m in prompt[1:] for n in re.findall(r"第(\d+)条", m.content)}
    assert history and set(range(min(history))) <= carried
    assert conversation.turns[-1].summary_id == (conversation.summary_id if carried else None)

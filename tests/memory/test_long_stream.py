"""Acceptance: a 2,000-turn scripted stream stays within budget, keeps the persona pinned, summarises in the
background and still knows at turn 2,000 what the viewer said at turn 10."""

from __future__ import annotations

import pytest

from tests.engine.turn_reads import TurnReads
from tests.memory.conftest import ScriptedBackend, facts_json
from vstreamer.engine import ContextBudget, Conversation, DialogueEngine, MemoryManager
from vstreamer.llm.base import SamplingParams
from vstreamer.persona import Persona

TURNS = 2000


def viewer_says(index: int) -> str:
    if index == 10:
        return "我叫阿明，我下周三要考试，我最喜欢的动物是猫"
    if index % 97 == 0:
        return f"我今天吃了第{index}碗面"
    return f"第{index}条弹幕：主播今天玩什么游戏？What game today?"


def extraction(text: str) -> str:
    if "考试" in text:
        return facts_json("昵称是阿明", "下周三考试", "最喜欢的动物是猫")
    if "碗面" in text:
        return "当然！这位观众今天吃了面。"  # not JSON: must be survived
    return facts_json()


async def test_two_thousand_turns(
    xiaoxing: Persona, small_budget: ContextBudget, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = ScriptedBackend(facts=extraction)
    memory = MemoryManager(backend, small_budget)
    engine = DialogueEngine(backend, small_budget, defaults=SamplingParams(max_tokens=64), memory=memory)
    conversation = Conversation(xiaoxing.id, user_name="阿明", platform="bilibili", viewer_id="uid-42")
    reads = TurnReads(monkeypatch)
    turns_read: list[int] = []  # per reply, the turns read until its prompt was built
    for index in range(1, TURNS + 1):
        reads.start()
        async for event in engine.reply(conversation, xiaoxing, viewer_says(index)):
            if event.kind == "started":
                turns_read.append(reads.stop())
                assert event.prompt_tokens <= small_budget.prompt_budget
        assert conversation.turns[-1].status == "complete"
        if index % 50 == 0:
            await engine.tasks.drain()  # let background work catch up now and then, as idle moments would
    await engine.tasks.drain()

    prompts = backend.kinds["reply"]
    pinned = xiaoxing.render(xiaoxing.description, "阿明").strip()[:40]
    assert len(prompts) == TURNS
    for prompt in prompts:
        assert await backend.count_tokens(prompt) <= small_budget.prompt_budget
        assert pinned in prompt[0].content  # the persona is pinned, every turn
    last_system = prompts[-1][0].content
    assert "考试" in last_system and "猫" in last_system  # turn 10, remembered at turn 2,000
    assert "第10条" not in "".join(m.content for m in prompts[-1][1:])  # ... though long out of the window
    assert engine.stats.summaries > 20 and backend.kinds["summary"]
    assert conversation.summary and conversation.turns[-1].summary_id is not None  # traceable per turn
    assert engine.stats.extraction_failures >= 1  # the garbage answers were survived
    facts = await memory.facts.viewer_facts(memory_viewer(conversation))
    assert {f.text for f in facts} >= {"昵称是阿明", "下周三考试", "最喜欢的动物是猫"}
    # The per-turn cost of building the prompt stays flat as the history grows: counted in turns read, not timed (a
    # busy machine cannot fail it), a reply reads as few at turn 2,000 as at turn 200, not the 4,000 turns held.
    early, late = sorted(turns_read[100:300])[100], sorted(turns_read[-200:])[100]
    assert late <= early * 2 + 2, (early, late)


def memory_viewer(conversation: Conversation):  # type: ignore[no-untyped-def]
    from vstreamer.engine.memory import viewer_of

    viewer = viewer_of(conversation)
    assert viewer is not None
    return viewer

"""Memory in the store (SQLite file and PostgreSQL): summary history, traceability, viewer facts, restarts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.memory.conftest import ScriptedBackend, facts_json
from vstreamer.engine import ContextBudget, DialogueEngine, Fact, MemoryManager, Turn, ViewerKey
from vstreamer.errors import StoreError
from vstreamer.persona import PersonaLibrary
from vstreamer.store import Store, open_store

ALICE = ViewerKey("bilibili", "111")
BOB = ViewerKey("bilibili", "222")


async def test_summary_versions_are_kept_and_restored(store: Store) -> None:
    record = await store.create_session("xiaoxing", owner="o", platform="bilibili", viewer_id="111")
    conversation = await store.load_conversation(record.id)
    assert (conversation.platform, conversation.viewer_id, conversation.summary_id) == (
        "bilibili",
        "111",
        None,
    )
    turn = Turn("user", "你好")
    await store.save_turn(conversation, turn)
    first = await store.save_summary(record.id, "阿明来了", covers_until=turn.id)
    second = await store.save_summary(record.id, "阿明来了，答应唱歌", covers_until=turn.id)
    loaded = await store.load_conversation(record.id)
    assert (loaded.summary, loaded.summary_id, loaded.summary_until) == (
        "阿明来了，答应唱歌",
        second,
        turn.id,
    )
    assert [s.id for s in await store.summary_history(record.id)] == [first, second]
    assert (await store.get_summary(first)).text == "阿明来了"  # type: ignore[union-attr]
    reply = Turn("assistant", "嗨", summary_id=second)
    await store.save_turn(loaded, reply)
    assert (await store.list_messages(record.id))[-1].summary_id == second
    assert await store.delete_session(record.id)
    assert await store.summary_history(record.id) == []


async def test_facts_are_per_viewer_deduplicated_pruned_and_deletable(store: Store) -> None:
    added = await store.add_facts(
        ALICE, [Fact(ALICE, "喜欢猫"), Fact(ALICE, "喜欢 猫！"), Fact(ALICE, "下周考试")]
    )
    assert [f.text for f in added] == ["喜欢猫", "下周考试"]
    assert await store.add_facts(ALICE, [Fact(ALICE, "喜欢猫")]) == []
    await store.add_facts(BOB, [Fact(BOB, "喜欢狗")])
    assert {f.text for f in await store.viewer_facts(ALICE)} == {"喜欢猫", "下周考试"}
    assert [f.text for f in await store.viewer_facts(BOB)] == ["喜欢狗"]
    assert await store.viewer_facts(ViewerKey("douyin", "111")) == []
    for index in range(5):
        await store.add_facts(ALICE, [Fact(ALICE, f"爱好{index}")], keep=3)
    assert [f.text for f in await store.viewer_facts(ALICE)] == ["爱好4", "爱好3", "爱好2"]
    exported = await store.export_facts()
    assert {(f.viewer, f.text) for f in exported} >= {(BOB, "喜欢狗"), (ALICE, "爱好4")}
    assert [f.viewer for f in await store.export_facts(platform="douyin")] == []
    one = (await store.viewer_facts(ALICE))[0]
    assert await store.delete_facts(BOB, fact_id=one.id) == 0  # not Bob's
    assert await store.delete_facts(ALICE, fact_id=one.id) == 1
    assert await store.delete_facts(ALICE) == 2  # forget me
    assert await store.viewer_facts(ALICE) == [] and len(await store.viewer_facts(BOB)) == 1


async def test_memory_survives_a_restart(tmp_path: Path) -> None:
    persona = PersonaLibrary(None).get("xiaoxing")
    budget = ContextBudget(3072, 128, 16)
    store = await open_store(None, tmp_path)
    backend = ScriptedBackend(facts=lambda t: facts_json("下周考试") if "考试" in t else facts_json())
    memory = MemoryManager(backend, budget, facts=store, summaries=store)
    engine = DialogueEngine(backend, budget, store=store, memory=memory)
    record = await store.create_session(
        persona.id, owner="o", platform="bilibili", viewer_id="111", user_name="阿明"
    )
    conversation = await store.load_conversation(record.id)
    texts = ["我叫阿明，我下周考试"] + [
        f"第{i}条弹幕：今天直播间好热闹，大家都在刷弹幕呢主播加油呀" for i in range(90)
    ]
    for text in texts:
        async for _ in engine.reply(conversation, persona, text):
            pass
        await engine.tasks.drain()
    assert engine.stats.summaries >= 1
    await engine.aclose()
    await store.close()

    reopened = await open_store(None, tmp_path)
    restored = await reopened.load_conversation(record.id)
    assert restored.summary == conversation.summary and restored.summary_id == conversation.summary_id
    assert "阿明" in restored.summary
    history = await reopened.summary_history(record.id)
    used = {t.summary_id for t in await reopened.list_messages(record.id, limit=5000) if t.summary_id}
    assert used and used <= {s.id for s in history}  # every turn's summary can be looked up
    assert [f.text for f in await reopened.viewer_facts(ALICE)] == ["下周考试"]
    backend = ScriptedBackend()
    engine = DialogueEngine(
        backend, budget, store=reopened, memory=MemoryManager(backend, budget, facts=reopened)
    )
    async for _ in engine.reply(restored, persona, "还记得我吗"):
        pass
    system = backend.kinds["reply"][-1][0].content
    assert "下周考试" in system and restored.summary in system
    await engine.aclose()
    await reopened.close()


async def test_two_extractions_for_one_viewer_at_once_both_keep_their_new_facts(store: Store) -> None:
    """Two sessions of one viewer learn facts at the same moment, one of them the same: each keeps its new ones (the
    second batch failed as a whole on the duplicate's unique constraint)."""
    viewer = ViewerKey("bilibili", "111")
    first = [Fact(viewer, "喜欢猫"), Fact(viewer, "下周考试")]
    second = [Fact(viewer, "喜欢猫"), Fact(viewer, "住在上海"), Fact(viewer, "养了一只狗")]
    added = await asyncio.gather(store.add_facts(viewer, first), store.add_facts(viewer, second))
    assert sorted(f.text for batch in added for f in batch) == [
        "下周考试",
        "住在上海",
        "养了一只狗",
        "喜欢猫",
    ]
    remembered = sorted(f.text for f in await store.viewer_facts(viewer))
    assert remembered == ["下周考试", "住在上海", "养了一只狗", "喜欢猫"]


async def test_text_with_nul_characters_is_stored_without_them(store: Store) -> None:
    """A model's output may hold NUL, which PostgreSQL refuses in text: a reply, a summary or a fact holding one
    failed to store (a whole reply lost at its end); every database now keeps the text without it."""
    record = await store.create_session("nova", owner="o")
    conversation = await store.load_conversation(record.id)
    turn = conversation.add(Turn("assistant", "hello\x00world"))
    await store.save_turn(conversation, turn)
    await store.save_summary(record.id, "they\x00 met", covers_until=turn.id)
    viewer = ViewerKey("bilibili", "222")
    await store.add_facts(viewer, [Fact(viewer, "likes\x00 cats")])
    assert [t.content for t in await store.list_messages(record.id)] == ["helloworld"]
    assert (await store.load_conversation(record.id)).summary == "they met"
    assert [f.text for f in await store.viewer_facts(viewer)] == ["likes cats"]


async def test_a_summary_of_a_deleted_session_never_reaches_a_new_one_under_its_id(store: Store) -> None:
    """A fold still running when its session is deleted ends after a client made the session again (same id): its
    summary, of the old talk, is refused, and neither the new session's rows nor its cached copy get it."""
    record = await store.create_session("xiaoxing", owner="o", session_id="s-1")
    old = await store.load_conversation(record.id)
    turn = Turn("user", "my secret is 42")
    old.turns.append(turn)
    await store.save_turn(old, turn)
    assert await store.delete_session(record.id)
    await store.create_session("xiaoxing", owner="o", session_id="s-1")
    new = await store.load_conversation("s-1")
    with pytest.raises(StoreError):
        await store.save_summary("s-1", "they said their secret is 42", covers_until=turn.id)
    assert await store.summary_history("s-1") == []
    assert new.summary == "" and new.summary_until is None
    assert (await store.load_conversation("s-1")).summary == ""
    fresh = Turn("user", "hello again")
    new.turns.append(fresh)
    await store.save_turn(new, fresh)
    await store.save_summary("s-1", "they said hello", covers_until=fresh.id)  # its own turns: stored
    assert [s.text for s in await store.summary_history("s-1")] == ["they said hello"]

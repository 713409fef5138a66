"""Two gateway workers over one SQLite file, each with its session cache: what one commits, the other serves.

The workers are two stores in this process with two views of one table of change counters, as ``serve --workers 2``
gives its forked workers (tests/gateway/test_workers.py runs the real processes).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from vstreamer.engine import Fact, Turn, ViewerKey
from vstreamer.store import Store, open_store
from vstreamer.store.shared import SharedVersions

ALICE = ViewerKey("bilibili", "111")


@pytest.fixture
async def workers(tmp_path: Path) -> AsyncIterator[tuple[Store, Store]]:
    table = SharedVersions(2, slots=64)  # few slots: keys that share one must still be told apart
    a, b = await open_store(None, tmp_path), await open_store(None, tmp_path)
    a.cache.shared, b.cache.shared = table.view(0), table.view(1)
    assert a.cache.enabled and b.cache.enabled
    yield a, b
    await a.close()
    await b.close()


async def _talk(store: Store, sid: str, *said: str) -> None:
    conversation = await store.load_conversation(sid)
    for text in said:
        for turn in (Turn("user", text), Turn("assistant", f"收到：{text}")):
            await store.save_turn(conversation, conversation.add(turn))


def _texts(store_conversation: tuple[object, object] | None) -> list[str]:
    assert store_conversation is not None
    _, conversation = store_conversation
    return [t.content for t in conversation.turns]  # type: ignore[attr-defined]


async def test_each_worker_serves_the_turns_the_other_committed(workers: tuple[Store, Store]) -> None:
    a, b = workers
    await a.create_session("xiaoxing", owner="o", session_id="s1")
    await _talk(a, "s1", "一")
    await _talk(b, "s1", "二")  # b reads it from the file: a's turns are there
    assert _texts(await a.open_conversation("s1")) == [
        "一",
        "收到：一",
        "二",
        "收到：二",
    ]  # a's copy was cached
    await _talk(a, "s1", "三")
    assert _texts(await b.open_conversation("s1")) == ["一", "收到：一", "二", "收到：二", "三", "收到：三"]
    # Nothing changed meanwhile: a hit is served from memory, the same object each time.
    assert (await b.open_conversation("s1")) is not None
    assert (await b.open_conversation("s1"))[1] is (await b.open_conversation("s1"))[1]  # type: ignore[index]


async def test_a_session_deleted_by_one_worker_is_gone_for_the_other(workers: tuple[Store, Store]) -> None:
    a, b = workers
    await a.create_session("xiaoxing", owner="o", session_id="s1")
    await _talk(a, "s1", "秘密")
    assert await b.delete_session("s1")
    assert await a.get_session("s1") is None
    assert await a.open_conversation("s1") is None
    # Made again under the same id (a client naming its session does): none of the old talk comes back.
    await b.create_session("xiaoxing", owner="o", session_id="s1")
    assert _texts(await a.open_conversation("s1")) == []


async def test_summaries_viewers_and_titles_of_the_other_worker_are_seen(
    workers: tuple[Store, Store],
) -> None:
    a, b = workers
    await a.create_session("xiaoxing", owner="o", platform="bilibili", session_id="s1")
    await _talk(a, "s1", "我叫阿明")
    first = (await b.list_messages("s1"))[0]
    await b.save_summary("s1", "阿明来了", covers_until=first.id)
    found = await a.open_conversation("s1")
    assert found is not None and found[1].summary == "阿明来了"
    assert await b.take_viewer("s1", "111") == "111"
    record = await a.get_session("s1")
    assert record is not None and record.viewer_id == "111"
    await b.rename_session("s1", "阿明的直播间")
    record = await a.get_session("s1")
    assert record is not None and record.title == "阿明的直播间"


async def test_facts_one_worker_learns_or_forgets_reach_the_other(workers: tuple[Store, Store]) -> None:
    a, b = workers
    assert await a.viewer_facts(ALICE) == []  # cached empty
    await b.add_facts(ALICE, [Fact(ALICE, "喜欢猫")])
    assert [f.text for f in await a.viewer_facts(ALICE)] == ["喜欢猫"]
    await b.delete_facts(ALICE)
    assert await a.viewer_facts(ALICE) == []


async def test_without_the_shared_table_a_worker_serves_its_stale_copy(tmp_path: Path) -> None:
    """What the table is for: the same two workers without it answer from a copy the other made stale."""
    a, b = await open_store(None, tmp_path), await open_store(None, tmp_path)
    try:
        await a.create_session("xiaoxing", owner="o", session_id="s1")
        await _talk(a, "s1", "一")
        await _talk(b, "s1", "二")
        assert _texts(await a.open_conversation("s1")) == ["一", "收到：一"]
    finally:
        await a.close()
        await b.close()

"""Regressions of the third review of the store: several writers of one database, deletes, old databases."""

from __future__ import annotations

from datetime import timedelta

from vstreamer.engine import Turn
from vstreamer.store import Store
from vstreamer.store.writer import Write


async def test_a_write_committed_late_does_not_move_updated_at_back(store: Store) -> None:
    """Two instances (or the gateway and the web UI) reply in one session: the one that took its time first but
    committed last (its writer waited for the other's lock) set ``updated_at`` back, and the session sank in the
    list below sessions older than its last reply."""
    record = await store.create_session("nova", owner="o")
    conversation = await store.load_conversation(record.id)
    conversation.turns.append(first := Turn("user", "hello"))
    await store.save_turn(conversation, first)
    conversation.turns.append(reply := Turn("assistant", "hi"))
    await store.save_turn(conversation, reply)
    latest = (await store.list_sessions(owner="o"))[0].updated_at
    # Another instance's reply, timed before this one's, committed only now.
    late = Write(record.id, latest - timedelta(seconds=5), turn=Turn("assistant", "late"))
    await store.writer.submit(late)
    assert (await store.list_sessions(owner="o"))[0].updated_at == latest


async def test_a_failed_reply_whose_error_holds_half_an_emoji_is_stored(store: Store) -> None:
    """A reply that failed is stored with its partial text and its error, which quotes the LLM server (its JSON may
    say ``"\\ud83d"``): the error's lone surrogate failed the write, and the partial reply was lost with it."""
    record = await store.create_session("nova", owner="o")
    conversation = await store.load_conversation(record.id)
    conversation.turns.append(question := Turn("user", "hello"))
    await store.save_turn(conversation, question)
    reply = Turn("assistant", "partial", status="failed", error="upstream_error: bad token \ud83d")
    conversation.turns.append(reply)
    await store.save_turn(conversation, reply)
    stored = (await store.list_messages(record.id))[-1]
    assert (stored.content, stored.status, stored.error) == (
        "partial",
        "failed",
        "upstream_error: bad token \ufffd",
    )

"""The history window kept between turns gives exactly the window of the plain walk, whatever happens to the list."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vstreamer.engine import Conversation, Turn
from vstreamer.engine.window import HistoryIndex, fit_history, walk


async def _count(turn: Turn) -> int:
    turn.prompt_tokens = len(turn.content) % 13 + 1
    return turn.prompt_tokens


_contents = st.sampled_from(["", "  ", "hi", "你好呀", "a longer line of chat", "x" * 40])
_ops = st.one_of(
    st.tuples(
        st.just("turn"),
        st.sampled_from(["user", "assistant"]),
        _contents,
        st.sampled_from(["complete", "complete", "interrupted", "failed", "blocked", "streaming"]),
        st.one_of(st.none(), st.integers(1, 30)),
    ),  # fmt: skip
    st.tuples(st.just("settle"), st.integers(0, 400), st.sampled_from(["complete", "failed", "interrupted"])),
    st.tuples(st.just("trim"), st.integers(1, 30)),
    st.tuples(st.just("fit"), st.integers(0, 300), st.integers(0, 60), st.sampled_from([2, 5, 128])),
    st.tuples(st.just("reset")),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_ops, max_size=120))
def test_kept_window_is_the_walked_window(ops: list[tuple[object, ...]]) -> None:
    async def run() -> None:
        conversation = Conversation("p")
        turns = conversation.turns
        for op in ops:
            if op[0] == "turn":
                _, role, content, status, tokens = op
                turns.append(Turn(role, content, status=status, prompt_tokens=tokens))  # type: ignore[arg-type]
            elif op[0] == "settle":
                streaming = [t for t in turns if t.status == "streaming"]
                if streaming:
                    turn = streaming[int(op[1]) % len(streaming)]  # type: ignore[call-overload]
                    turn.content += " and more"
                    turn.status = op[2]  # type: ignore[assignment]
            elif op[0] == "trim":
                del turns[: int(op[1])]  # type: ignore[call-overload]  # the session cache trims long sessions
            elif op[0] == "reset":
                conversation.reset()
            else:
                turns.append(Turn("user", "now?"))  # the message to answer
                room, start, limit = (int(v) for v in op[1:])  # type: ignore[call-overload]
                kept = await fit_history(conversation, room, _count, start=start, limit=limit)
                walked, _ = await walk(turns, len(turns) - 1, room, _count, start=start, limit=limit)
                assert len(walked.indices) <= limit and all(i >= start for i in walked.indices)
                assert kept.indices == walked.indices
                assert kept.used == walked.used <= room
                assert all(a is b for a, b in zip(kept.messages, walked.messages, strict=True))

    asyncio.run(run())


@pytest.mark.parametrize("seed", range(40))
async def test_kept_window_is_the_walked_window_in_long_chats(seed: int) -> None:
    """Long random chats: replies that stream across other turns, failures, trims, a room that moves."""
    rng = random.Random(seed)
    conversation = Conversation("p")
    turns = conversation.turns
    room = 120
    start, limit = 0, rng.choice([7, 30, 128])
    fast = 0
    for _ in range(600):
        roll = rng.random()
        if roll < 0.35:
            content = rng.choice(["", " ", "hi", "你好呀", "a longer line of chat", "x" * 40])
            tokens = rng.choice([None, rng.randint(1, 30)])
            turns.append(Turn(rng.choice(["user", "assistant"]), content, prompt_tokens=tokens))
        elif roll < 0.5:
            status = rng.choice(["streaming", "streaming", "failed", "blocked", "interrupted"])
            turns.append(Turn("assistant", "", status=status))  # type: ignore[arg-type]
        elif roll < 0.65:
            streaming = [t for t in turns if t.status == "streaming"]
            if streaming:
                turn = rng.choice(streaming)
                turn.content = rng.choice(["", "ok", "a reply that took long"])
                turn.status = rng.choice(["complete", "interrupted", "failed"])
        elif roll < 0.67:
            del turns[: rng.randint(1, 60)]
        elif roll < 0.68:
            room = rng.randint(0, 400)
        elif roll < 0.70:  # the summary moved on (now and then back: a session read again)
            start = rng.randint(0, len(turns)) if rng.random() < 0.8 else rng.randint(0, start)
        else:
            turns.append(Turn("user", "now?"))
            index = conversation.history_index
            kept = await fit_history(conversation, room, _count, start=start, limit=limit)
            fast += conversation.history_index is index
            walked, _ = await walk(turns, len(turns) - 1, room, _count, start=start, limit=limit)
            assert (kept.indices, kept.used) == (walked.indices, walked.used)
            assert all(a is b for a, b in zip(kept.messages, walked.messages, strict=True))
    assert fast > 50  # the index was used, not rebuilt each time


async def test_a_long_conversation_reuses_its_index() -> None:
    conversation = Conversation("p")
    for i in range(300):
        conversation.turns += [
            Turn("user", f"message {i}", prompt_tokens=5),
            Turn("assistant", "ok", prompt_tokens=3),
        ]
    conversation.turns.append(Turn("user", "now?"))
    first = await fit_history(conversation, 100, _count)
    index = conversation.history_index
    assert isinstance(index, HistoryIndex) and len(first.messages) == 25
    conversation.turns[-1:] = [
        conversation.turns[-1],
        Turn("assistant", "ok", prompt_tokens=3),
        Turn("user", "and?"),
    ]
    second = await fit_history(conversation, 100, _count)
    assert conversation.history_index is index  # the index grew; nothing was walked again
    assert second.indices[-1] == len(conversation.turns) - 2 and second.used <= 100
    del conversation.turns[:100]  # trimmed: the index no longer holds, and the walk rebuilds it
    third = await fit_history(conversation, 100, _count)
    assert conversation.history_index is not index and third.indices == [i - 100 for i in second.indices]


async def test_a_reply_that_ends_after_the_window_passed_it_can_still_join() -> None:
    """A reply still streaming when the window was built, older than the window: once it ends, a prompt with room
    for it takes it (the index must not jump over it)."""
    conversation = Conversation("p")
    late = Turn("assistant", "", status="streaming")
    conversation.turns += [
        Turn("user", "long ago", prompt_tokens=50),
        late,
        Turn("user", "b", prompt_tokens=10),
    ]
    conversation.turns.append(Turn("user", "now?", prompt_tokens=5))
    assert (await fit_history(conversation, 20, _count)).indices == [2]
    late.content, late.status, late.prompt_tokens = "ok", "complete", 3
    conversation.turns.append(Turn("user", "and now?", prompt_tokens=1))
    assert (await fit_history(conversation, 20, _count)).indices == [1, 2, 3]


async def test_a_reply_still_streaming_at_the_start_can_join_once_it_ends() -> None:
    """The walk reached the first turn (nothing stopped it) past a reply still streaming: once that reply ends, it
    joins the prompts that have room (found by hypothesis)."""
    conversation = Conversation("p")
    early = Turn("user", "", status="streaming")
    conversation.turns += [early, Turn("user", "now?")]
    assert (await fit_history(conversation, 0, _count)).indices == []
    early.content, early.status = " and more", "complete"
    conversation.turns += [Turn("user", ""), Turn("user", "now?")]
    assert (await fit_history(conversation, 15, _count)).indices == [0, 1]

"""Which history turns go into a prompt: the newest ones that fit in the room the persona leaves.

The rule (:func:`walk`): from the newest turn back, skip the turns that are not in prompts, stop at the first one
that does not fit. Each turn of a long conversation repeats that walk over the same ~100 turns, so each
conversation keeps a :class:`HistoryIndex` of its settled turns (their messages and running token totals): a turn
then visits only the turns that came since the last one and finds where its window starts by bisection. The index
gives the very window the walk gives; where it cannot know (the list was trimmed, more room than it covers), the walk
runs and rebuilds it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from vstreamer.engine.conversation import Conversation, Turn
from vstreamer.llm.base import ChatMessage

Count = Callable[[Turn], Awaitable[int]]
"""A turn's share of a prompt, in tokens (cached on ``turn.prompt_tokens``)."""

_COMPACT_AFTER = 64
"""Index entries that have left every window are dropped once there are this many."""


@dataclass(slots=True)
class Window:
    """The history part of one prompt, oldest first."""

    messages: list[ChatMessage]
    indices: list[int]
    """Where each message's turn is in ``conversation.turns``."""
    used: int
    """Tokens the messages take."""


async def fit_history(conversation: Conversation, room: int, count: Count) -> Window:
    """The window for answering the conversation's last turn: its newest earlier turns that fit in ``room``."""
    turns = conversation.turns
    end = len(turns) - 1
    index = conversation.history_index
    if isinstance(index, HistoryIndex) and index.holds(turns, end):
        for i in range(index.covered, end):  # usually none: a reply is counted when it ends
            turn = turns[i]
            if turn.prompt_tokens is None and turn.in_prompt:
                await count(turn)
        if len(turns) == end + 1 and index.holds(turns, end):  # nothing changed meanwhile
            window = index.fit(turns, end, room)
            if window is not None:
                return window
    window, stop = await walk(turns, end, room, count)
    if len(turns) == end + 1:
        conversation.history_index = HistoryIndex.after_walk(turns, end, window, stop)
    return window


async def walk(turns: list[Turn], end: int, room: int, count: Count) -> tuple[Window, int | None]:
    """The rule itself, over ``turns[:end]``; also returns where it stopped (the turn that did not fit, or None)."""
    messages: list[ChatMessage] = []
    indices: list[int] = []
    left = room
    for i in range(end - 1, -1, -1):
        turn = turns[i]
        if not turn.in_prompt:
            continue
        cost = turn.prompt_tokens
        if cost is None:
            cost = await count(turn)
        if cost > left:
            messages.reverse()
            indices.reverse()
            return Window(messages, indices, room - left), i
        left -= cost
        messages.append(turn.as_message())
        indices.append(i)
    messages.reverse()
    indices.reverse()
    return Window(messages, indices, room - left), None


class HistoryIndex:
    """The settled in-prompt turns of ``turns[base:covered]`` with their messages and running token totals.

    A turn is settled once it is not streaming any more: its text, status and share never change after that (a reply
    still streaming stops the index; it is walked over until it ends). The index only grows at the end; a list that
    was trimmed or replaced (the anchor turn moved) is not held any more.
    """

    __slots__ = ("anchor", "base", "before", "covered", "indices", "messages", "totals", "turns")

    def __init__(self, turns: list[Turn], base: int, before: int | None) -> None:
        self.turns = turns
        self.base = self.covered = base
        self.before = before
        """The share of the nearest in-prompt turn before ``base`` (None: there is none)."""
        self.anchor = turns[base - 1] if base else None
        """``turns[covered - 1]`` (trimming the list's front or replacing its turns moves it: then nothing holds)."""
        self.indices: list[int] = []
        self.messages: list[ChatMessage] = []
        self.totals = [0]
        """``totals[k]``: the tokens of the first ``k`` entries (plus the dropped ones')."""

    @classmethod
    def after_walk(cls, turns: list[Turn], end: int, window: Window, stop: int | None) -> HistoryIndex:
        """The index from the window the walk just chose (``stop``: where it stopped)."""
        base = window.indices[0] if window.indices else end
        gap = turns[0 if stop is None else stop + 1 : base]
        before: int | None
        if any(t.status == "streaming" for t in gap):
            before = -1  # a turn still streaming before the window may join later prompts: walk then
        else:
            before = None if stop is None else turns[stop].prompt_tokens
        index = cls(turns, base, before)
        index.extend(end)
        return index

    def holds(self, turns: list[Turn], end: int) -> bool:
        covered = self.covered
        return turns is self.turns and covered <= end and (covered == 0 or turns[covered - 1] is self.anchor)

    def extend(self, end: int) -> None:
        """Take in the settled turns from ``covered`` up to ``end`` (stopping at the first one still streaming)."""
        turns = self.turns
        i = self.covered
        while i < end:
            turn = turns[i]
            if turn.status == "streaming":
                break
            if turn.in_prompt:
                if turn.prompt_tokens is None:
                    break
                self.indices.append(i)
                self.messages.append(turn.as_message())
                self.totals.append(self.totals[-1] + turn.prompt_tokens)
            i += 1
        if i > self.covered:
            self.covered = i
            self.anchor = turns[i - 1]

    def fit(self, turns: list[Turn], end: int, room: int) -> Window | None:
        """The walk's window, or None when it may reach before the index (the walk must run)."""
        self.extend(end)
        messages: list[ChatMessage] = []
        indices: list[int] = []
        left = room
        # After the index: a reply still streaming and what follows it.
        for i in range(end - 1, self.covered - 1, -1):
            turn = turns[i]
            if not turn.in_prompt:
                continue
            cost = turn.prompt_tokens
            assert cost is not None  # counted by fit_history
            if cost > left:
                messages.reverse()
                indices.reverse()
                return Window(messages, indices, room - left)
            left -= cost
            messages.append(turn.as_message())
            indices.append(i)
        totals = self.totals
        top = totals[-1]
        first = bisect_left(totals, top - left)  # the oldest entry from which all fit
        if (
            first == 0
            and self.before is not None
            and (self.before < 0 or self.before <= left - top + totals[0])
        ):
            return None  # every entry fits, and maybe older turns too
        messages.reverse()
        indices.reverse()
        window = Window(
            self.messages[first:] + messages,
            self.indices[first:] + indices,
            room - left + top - totals[first],
        )
        if first >= _COMPACT_AFTER:
            self._drop(first)
        return window

    def _drop(self, count: int) -> None:
        """Forget the oldest ``count`` entries (they left the window; a wider one makes the walk run)."""
        self.before = self.totals[count] - self.totals[count - 1]
        del self.indices[:count], self.messages[:count], self.totals[:count]
        self.base = self.indices[0] if self.indices else self.covered

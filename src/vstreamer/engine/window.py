"""Which history turns go into a prompt: the newest ones that fit in the room the persona leaves.

The rule (:func:`walk`): from the newest turn back, skip the turns that are not in prompts, stop at the first one
that does not fit, at the :data:`MAX_HISTORY_TURNS`-th, or at the first that the running summary already holds
(``start``: a summarised turn never comes back raw beside its summary). Each turn of a long conversation repeats that walk over the same ~100 turns, so each
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

MAX_HISTORY_TURNS = 128
"""The most history turns one prompt carries, whatever room is left: older ones leave the window and are folded into
the running summary. The store keeps and reloads a session's newest turns (more than this), so every turn that
left no summary yet is still at hand, not only where the budget would have let hundreds of short turns in."""

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


async def fit_history(
    conversation: Conversation, room: int, count: Count, *, start: int = 0, limit: int = MAX_HISTORY_TURNS
) -> Window:
    """The window for answering the conversation's last turn: its newest earlier turns from ``start`` on that fit in
    ``room``, ``limit`` at most."""
    turns = conversation.turns
    end = len(turns) - 1
    index = conversation.history_index
    if isinstance(index, HistoryIndex) and index.holds(turns, end) and index.limit == limit:
        for i in range(index.covered, end):  # usually none: a reply is counted when it ends
            turn = turns[i]
            if turn.prompt_tokens is None and turn.in_prompt:
                await count(turn)
        if len(turns) == end + 1 and index.holds(turns, end):  # nothing changed meanwhile
            window = index.fit(turns, end, room, start)
            if window is not None:
                return window
    window, stop = await walk(turns, end, room, count, start=start, limit=limit)
    if len(turns) == end + 1:
        conversation.history_index = HistoryIndex.after_walk(turns, end, window, stop, start, limit)
    return window


async def walk(
    turns: list[Turn], end: int, room: int, count: Count, *, start: int = 0, limit: int = MAX_HISTORY_TURNS
) -> tuple[Window, int | None]:
    """The rule itself, over ``turns[start:end]``; also returns where it stopped: the turn that did not fit, the
    first left out for the ``limit`` (as its bitwise inverse, below zero), or None (it reached ``start``)."""
    messages: list[ChatMessage] = []
    indices: list[int] = []
    left = room
    stop: int | None = None
    for i in range(end - 1, max(start, 0) - 1, -1):
        turn = turns[i]
        if not turn.in_prompt:
            continue
        if len(indices) >= limit:
            stop = ~i
            break
        cost = turn.prompt_tokens
        if cost is None:
            cost = await count(turn)
        if cost > left:
            stop = i
            break
        left -= cost
        messages.append(turn.as_message())
        indices.append(i)
    messages.reverse()
    indices.reverse()
    return Window(messages, indices, room - left), stop


class HistoryIndex:
    """The settled in-prompt turns of ``turns[base:covered]`` with their messages and running token totals.

    A turn is settled once it is not streaming any more: its text, status and share never change after that (a reply
    still streaming stops the index; it is walked over until it ends). The index only grows at the end; a list that
    was trimmed or replaced (the anchor turn moved) is not held any more.
    """

    __slots__ = (
        "anchor",
        "base",
        "before",
        "covered",
        "indices",
        "limit",
        "messages",
        "start",
        "totals",
        "turns",
    )

    def __init__(
        self, turns: list[Turn], base: int, before: int | None, start: int = 0, limit: int = MAX_HISTORY_TURNS
    ) -> None:
        self.turns = turns
        self.base = self.covered = base
        self.before = before
        """The share of the nearest in-prompt turn from ``start`` to ``base`` (None: there is none; -1: walk to
        know)."""
        self.start = start
        """The ``start`` the walk was given: an earlier one may let older turns in (then the walk runs again)."""
        self.limit = limit
        self.anchor = turns[base - 1] if base else None
        """``turns[covered - 1]`` (trimming the list's front or replacing its turns moves it: then nothing holds)."""
        self.indices: list[int] = []
        self.messages: list[ChatMessage] = []
        self.totals = [0]
        """``totals[k]``: the tokens of the first ``k`` entries (plus the dropped ones')."""

    @classmethod
    def after_walk(
        cls, turns: list[Turn], end: int, window: Window, stop: int | None, start: int = 0,
        limit: int = MAX_HISTORY_TURNS,
    ) -> HistoryIndex:  # fmt: skip
        """The index from the window the walk just chose (``stop``: where it stopped, as :func:`walk` says)."""
        base = window.indices[0] if window.indices else end
        before: int | None
        if stop is None:
            gap, before = turns[max(start, 0) : base], None
        elif stop < 0:  # the limit: the turn left out may join once the window holds fewer turns
            gap, before = turns[~stop + 1 : base], -1
        else:
            gap, before = turns[stop + 1 : base], turns[stop].prompt_tokens
        if any(t.status == "streaming" for t in gap):
            before = -1  # a turn still streaming before the window may join later prompts: walk then
        index = cls(turns, base, before, start, limit)
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

    def fit(self, turns: list[Turn], end: int, room: int, start: int = 0) -> Window | None:
        """The walk's window, or None when it may reach before the index (the walk must run)."""
        if start < self.start:
            return None  # turns the index left out may be in
        self.extend(end)
        messages: list[ChatMessage] = []
        indices: list[int] = []
        left, limit = room, self.limit
        # After the index: a reply still streaming and what follows it.
        for i in range(end - 1, max(self.covered, start) - 1, -1):
            turn = turns[i]
            if not turn.in_prompt:
                continue
            if len(indices) >= limit:
                messages.reverse()
                indices.reverse()
                return Window(messages, indices, room - left)
            cost = turn.prompt_tokens
            assert cost is not None  # counted by fit_history
            if cost > left:
                messages.reverse()
                indices.reverse()
                return Window(messages, indices, room - left)
            left -= cost
            messages.append(turn.as_message())
            indices.append(i)
        if start >= self.covered:  # the index's turns are all before ``start``
            messages.reverse()
            indices.reverse()
            return Window(messages, indices, room - left)
        totals = self.totals
        top = totals[-1]
        first = bisect_left(totals, top - left)  # the oldest entry from which all fit
        if start > self.base:
            first = max(first, bisect_left(self.indices, start))
        first = max(first, len(self.indices) - (limit - len(indices)))
        if (
            first == 0
            and len(self.indices) + len(indices) < limit
            and start <= self.base
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

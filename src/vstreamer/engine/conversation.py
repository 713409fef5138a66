"""A conversation: a persona, a viewer, and the turns so far."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Literal

from vstreamer.errors import VStreamerError
from vstreamer.llm.base import ChatMessage, Usage

_PER_SECOND = 1_000_000
"""A turn's time is stored to the microsecond."""

TurnStatus = Literal["complete", "interrupted", "failed", "blocked", "streaming"]
RESENT = "resent"
"""The :attr:`Turn.error_code` of a user message that failed because it was sent again, unanswered (the engine
answers the later copy)."""
UNDELIVERED = "undelivered"
"""The :attr:`Turn.error_code` of a reply that was cut off or failed before any of it was delivered: one that its
adapter delivers whole once it ends (a non-streamed API response) and whose client left, or which broke, first.
Nobody read it, so it answered nothing: it is in no later prompt, and its message sent again replaces the copy it
answered (the engine's ``delivery="whole"``)."""


def new_id() -> str:
    """A version-7 UUID (RFC 9562) as 32 hex digits: the time in milliseconds, then 74 random bits.

    Rows get ids in the order they are made, so a table's unique index on them grows at its end: with random ids
    (version 4) every insert touched a page anywhere in the index, which took a third more pages per commit to the
    SQLite log at 50 streams, and, once an index outgrows the page cache, a read from disk per insert. Made without
    the ``UUID`` object (a third of the cost; two are made on the way to every reply's first text)."""
    raw = bytearray((time.time_ns() // 1_000_000).to_bytes(6, "big") + os.urandom(10))
    raw[6] = raw[6] & 0x0F | 0x70  # version 7
    raw[8] = raw[8] & 0x3F | 0x80  # the RFC 9562 variant
    return raw.hex()


@dataclass(slots=True)
class Turn:
    """One message of the conversation. Mutable while the reply streams, then left alone."""

    role: Literal["user", "assistant"]
    """``user`` for the viewer, ``assistant`` for the persona."""
    content: str
    """The text as shown (a partial reply keeps what was streamed before it stopped)."""
    status: TurnStatus = "complete"
    """``interrupted``: cancelled mid-reply; ``failed``: the backend broke; ``blocked``: moderation stopped it. An
    ``interrupted`` turn has an ``error`` only when it was never delivered (:data:`UNDELIVERED`)."""
    id: str = field(default_factory=new_id)
    created_at: float = field(default_factory=time.time)
    usage: Usage | None = None
    """Tokens the generation used (assistant turns)."""
    error: str | None = None
    """Why the turn failed, for operators: ``<code>: <message>`` for a vstreamer error (see :meth:`fail`)."""
    finish_reason: str | None = None
    """Why generation ended (``stop``, ``length``...), as the backend said."""
    first_token_ms: int | None = None
    """Milliseconds from the request to the first streamed text (assistant turns)."""
    duration_ms: int | None = None
    """Milliseconds the whole reply took (assistant turns)."""
    prompt_tokens: int | None = None
    """Cached share of the prompt this turn takes (filled by the context builder; not stored)."""
    summary_id: str | None = None
    """The running-summary version the prompt of this reply carried (assistant turns; traceability)."""
    _message: ChatMessage | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def in_prompt(self) -> bool:
        """Whether later prompts should include this turn (a user message whose reply is in none reaches them joined
        with the next one: :func:`vstreamer.llm.roles.alternating`)."""
        content, status = self.content, self.status
        if not content or content.isspace():
            return False
        return status == "complete" or status == "interrupted" and not self.undelivered

    @property
    def undelivered(self) -> bool:
        """Whether the turn is a reply nobody read: cut off or failed before any of it was delivered
        (:data:`UNDELIVERED`)."""
        return self.error_code == UNDELIVERED

    def mark_undelivered(self) -> None:
        """Mark a reply that ended early (``interrupted`` or ``failed``) as never delivered: :data:`UNDELIVERED` leads
        its ``error``, followed by the failure's own code and message if it failed."""
        why = self.error or "cut off before it was delivered"
        self.error = f"{UNDELIVERED}: {why}"

    def fail(self, exc: BaseException) -> None:
        """Mark the turn failed by ``exc``; a vstreamer error's code leads its ``error``, so that an adapter can word
        a stored turn's failure as it worded the live one (:attr:`error_code`)."""
        message = str(exc) or type(exc).__name__
        self.status = "failed"
        self.error = f"{exc.code}: {message}" if isinstance(exc, VStreamerError) else message

    @property
    def error_code(self) -> str | None:
        """The code :meth:`fail` put first in ``error`` (``backend_unavailable``...), if any."""
        code, colon, _ = (self.error or "").partition(": ")
        return code if colon and code.isidentifier() else None  # older rows: the message alone

    def as_message(self) -> ChatMessage:
        """The turn as a prompt message (made once per content: every later prompt repeats the turn)."""
        message = self._message
        if message is None or message.content is not self.content:
            message = self._message = ChatMessage(self.role, self.content)
        return message


@dataclass(slots=True, weakref_slot=True)
class Conversation:
    """A persona talking with one viewer (or one live room)."""

    persona_id: str
    user_name: str = "观众"
    id: str = field(default_factory=new_id)
    turns: list[Turn] = field(default_factory=list)
    summary: str = ""
    """A running summary of turns that left the context window (filled by the memory layer)."""
    summary_id: str | None = None
    """The stored version of ``summary`` (``None``: not stored, or no summary yet)."""
    summary_until: str | None = None
    """Id of the newest turn folded into ``summary``."""
    summary_index: int | None = field(default=None, repr=False, compare=False)
    """Where ``summary_until`` sits in ``turns`` (a cache of the memory layer; not stored)."""
    platform: str = "web"
    """Where the viewer comes from (``web``, ``api``, a live platform): with ``viewer_id``, whose memory to use."""
    viewer_id: str | None = None
    """The viewer's stable id on ``platform``; ``None`` keeps no long-term memory about them."""
    history_index: object | None = field(default=None, repr=False, compare=False)
    """What the context builder keeps between turns (:class:`~vstreamer.engine.window.HistoryIndex`; not stored)."""
    replying: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False, compare=False)
    """Held while the engine makes a reply: a conversation's replies take turns (not stored)."""

    def add(self, turn: Turn) -> Turn:
        """Append ``turn``, after the last one in time too: turns are stored and read back in the order of their
        ``created_at``, so a turn made in the same microsecond as the last, or after the wall clock stepped back,
        is moved just after it (by one microsecond, the stored resolution)."""
        # Whole microseconds, as stored (``last + 1e-6`` in floats was often stored as ``last`` again): on that grid
        # the float rounds back to its own microsecond, so turns compare here as they will in the database.
        moment = round(turn.created_at * _PER_SECOND)
        if self.turns and moment <= (last := round(self.turns[-1].created_at * _PER_SECOND)):
            moment = last + 1
        turn.created_at = moment / _PER_SECOND
        self.turns.append(turn)
        return turn

    def summarised_index(self) -> int | None:
        """Where ``summary_until`` sits in ``turns`` (``None``: no summary, or its turn is not held), kept in
        ``summary_index`` between calls."""
        until, turns = self.summary_until, self.turns
        if until is None:
            return None
        hint = self.summary_index
        if hint is not None and 0 <= hint < len(turns) and turns[hint].id == until:
            return hint
        for index in range(len(turns) - 1, -1, -1):
            if turns[index].id == until:
                self.summary_index = index
                return index
        return None

    def reset(self) -> None:
        self.turns.clear()
        self.summary = ""
        self.summary_id = self.summary_until = None
        self.summary_index = None
        self.history_index = None

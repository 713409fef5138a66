"""What the dialogue engine streams to adapters (CLI, gateway, UI, live chat)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vstreamer.engine.conversation import Turn


@dataclass(frozen=True, slots=True)
class ReplyStarted:
    """The prompt is built and generation begins."""

    turn: Turn
    """The assistant turn being written (its content grows as deltas arrive)."""
    prompt_tokens: int
    """Tokens of the prompt sent to the model."""
    kind: Literal["started"] = "started"


@dataclass(frozen=True, slots=True)
class ReplyDelta:
    """New text of the reply, safe to show."""

    text: str
    last: bool = False
    """The reply's last text: :class:`ReplyFinished` comes next, as soon as the reply is stored, so an adapter may
    send the two together (one network write where there would be two)."""
    kind: Literal["delta"] = "delta"


@dataclass(frozen=True, slots=True)
class ReplyFinished:
    """The reply ended normally (``complete``) or was stopped by moderation (``blocked``); with a store, the reply
    is stored by then."""

    turn: Turn
    kind: Literal["finished"] = "finished"


EngineEvent = ReplyStarted | ReplyDelta | ReplyFinished

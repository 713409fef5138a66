"""The dialogue engine: conversations, prompt building within a token budget, streamed replies."""

from vstreamer.engine.context import BuiltContext, ContextBudget, ContextBuilder
from vstreamer.engine.conversation import Conversation, Turn, TurnStatus
from vstreamer.engine.engine import DialogueEngine, SamplingOverrides, TurnStore
from vstreamer.engine.events import EngineEvent, ReplyDelta, ReplyFinished, ReplyStarted

__all__ = [
    "BuiltContext",
    "ContextBudget",
    "ContextBuilder",
    "Conversation",
    "DialogueEngine",
    "EngineEvent",
    "ReplyDelta",
    "ReplyFinished",
    "ReplyStarted",
    "SamplingOverrides",
    "Turn",
    "TurnStore",
    "TurnStatus",
]

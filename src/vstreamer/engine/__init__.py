"""The dialogue engine: conversations, prompt building within a token budget, streamed replies."""

from vstreamer.engine.background import BackgroundTasks
from vstreamer.engine.context import BuiltContext, ContextBudget, ContextBuilder
from vstreamer.engine.conversation import Conversation, Turn, TurnStatus
from vstreamer.engine.drift import DriftDetector, DriftHit
from vstreamer.engine.engine import DialogueEngine, SamplingOverrides, TurnStore
from vstreamer.engine.events import EngineEvent, ReplyDelta, ReplyFinished, ReplyStarted
from vstreamer.engine.facts import Fact, ViewerKey
from vstreamer.engine.memory import FactStore, InMemoryFacts, MemoryManager, MemoryPolicy, Recall
from vstreamer.engine.stats import EngineStats

__all__ = [
    "BackgroundTasks",
    "BuiltContext",
    "ContextBudget",
    "ContextBuilder",
    "Conversation",
    "DialogueEngine",
    "DriftDetector",
    "DriftHit",
    "EngineEvent",
    "EngineStats",
    "Fact",
    "FactStore",
    "InMemoryFacts",
    "MemoryManager",
    "MemoryPolicy",
    "ReplyDelta",
    "ReplyFinished",
    "Recall",
    "ReplyStarted",
    "SamplingOverrides",
    "Turn",
    "TurnStore",
    "TurnStatus",
    "ViewerKey",
]

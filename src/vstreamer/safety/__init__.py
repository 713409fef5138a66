"""Moderation of viewer input and of the streamed output, with injection and leak guards.

The engine calls :meth:`SafetyPipeline.prepare_user_text` before building a prompt and wraps the
LLM text stream in :meth:`SafetyPipeline.output_guard`.
"""

from vstreamer.safety.audit import AuditLog, AuditRecord, JsonlAuditLog, LoggingAuditLog, MemoryAuditLog
from vstreamer.safety.external import (
    ExternalChecker,
    ExternalVerdict,
    LLMJudgeChecker,
    OpenAIModerationChecker,
)
from vstreamer.safety.injection import find_injections, sanitize_control_tokens
from vstreamer.safety.leak import LeakDetector
from vstreamer.safety.normalize import normalize, normalize_with_map
from vstreamer.safety.pipeline import InputDecision, SafetyPipeline
from vstreamer.safety.policy import RulePolicy, SafetyPolicy
from vstreamer.safety.stream_guard import OutputGuard
from vstreamer.safety.types import Direction, Match, ModerationResult, Source

__all__ = [
    "AuditLog",
    "AuditRecord",
    "Direction",
    "ExternalChecker",
    "ExternalVerdict",
    "InputDecision",
    "JsonlAuditLog",
    "LLMJudgeChecker",
    "LeakDetector",
    "LoggingAuditLog",
    "Match",
    "MemoryAuditLog",
    "ModerationResult",
    "OpenAIModerationChecker",
    "OutputGuard",
    "RulePolicy",
    "SafetyPipeline",
    "SafetyPolicy",
    "Source",
    "find_injections",
    "normalize",
    "normalize_with_map",
    "sanitize_control_tokens",
]

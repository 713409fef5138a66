"""What to do with a match, per direction (input, output) and per source (web user, live viewer...)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from vstreamer.safety.lexicon import Action
from vstreamer.safety.types import Direction, Source

StoreMode = Literal["full", "masked", "none"]
InjectionAction = Literal["neutralize", "block", "flag"]


class RulePolicy(BaseModel):
    """The policy for one direction and source."""

    model_config = ConfigDict(extra="forbid")
    actions: dict[str, Action] = {}
    """Per-category overrides of the lexicon's action."""
    min_severity: int = Field(default=1, ge=1, le=3)
    """Matches of categories below this severity are ignored entirely."""
    pii: Action = "mask"
    """What to do with detected personal data."""
    injection: InjectionAction = "neutralize"
    """Input only: what to do with a prompt-injection attempt."""
    store: StoreMode = "masked"
    """What the audit log and the conversation store keep of a moderated message."""
    message_zh: str = "这条消息包含不适合在直播中出现的内容，已被拦截。"
    message_en: str = "This message contains content that is not allowed on stream and was blocked."

    def user_message(self) -> str:
        """The text shown to the sender of a blocked message (Chinese first)."""
        return f"{self.message_zh}\n{self.message_en}"


def _default_input() -> dict[str, RulePolicy]:
    # A viewer's message with self-harm words is a cry to answer with care, not to silence.
    care = {"self_harm": "flag"}
    return {
        "web": RulePolicy(actions=care),
        "api": RulePolicy(actions=care),
        "cli": RulePolicy(actions=care, store="full"),
        "live": RulePolicy(
            actions={**care, "spam": "block"},
            injection="block",
            message_zh="弹幕包含违规或试图操控主播的内容，已被忽略。",
            message_en="This chat message was ignored: it broke the rules or tried to take over the streamer.",
        ),
    }


class SafetyPolicy(BaseModel):
    """The whole moderation policy (input per source, output for every audience)."""

    model_config = ConfigDict(extra="forbid")
    input: dict[Source, RulePolicy] = Field(default_factory=_default_input)
    output: RulePolicy = Field(default_factory=RulePolicy)
    injection_placeholder: str = "[已过滤的指令]"
    """What replaces a neutralised injection phrase in the prompt."""

    def rule(self, direction: Direction, source: Source) -> RulePolicy:
        if direction == "output":
            return self.output
        return self.input.get(source) or RulePolicy()

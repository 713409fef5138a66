"""The values that cross the safety package's boundary."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

Direction = Literal["input", "output"]
Source = Literal["web", "live", "api", "cli"]
Verdict = Literal["pass", "mask", "block"]
MASK_CHAR = "*"


@dataclass(frozen=True, slots=True)
class Match:
    """One rule that fired on a message."""

    start: int
    """Start of the span in the ORIGINAL text."""
    end: int
    """End (exclusive) of the span in the ORIGINAL text."""
    category: str
    """Lexicon category (``drugs``, ``personal_data``, ``injection``...)."""
    term: str
    """The listed term (or the detector name / matched text for PII and patterns)."""
    rule: str
    """Where the rule comes from: ``<folder>/<file>:<line>``, ``pii:<kind>``, ``pattern:<name>``."""

    def to_json(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "category": self.category, "term": self.term}


@dataclass(frozen=True, slots=True)
class ModerationResult:
    """The decision on one message."""

    text: str
    """The text as received."""
    action: Verdict
    """``pass`` (possibly with flagged categories), ``mask`` or ``block``."""
    categories: tuple[str, ...]
    """Every category that matched, flagged ones included, in first-seen order."""
    output: str
    """The text with masked spans replaced (same length as ``text``); ``text`` on pass."""
    matches: tuple[Match, ...]
    """Every match, in text order."""
    reason: str
    """Why: human-readable summary of the rules that decided the action."""

    def to_json(self) -> dict[str, Any]:
        """The ``vstreamer moderate`` line format."""
        return {
            "text": self.text,
            "action": self.action,
            "categories": list(self.categories),
            "output": self.output,
            "matches": [m.to_json() for m in self.matches],
        }


def mask_spans(text: str, spans: Sequence[tuple[int, int]], mask: str = MASK_CHAR) -> str:
    """Replace every character inside the spans by ``mask``; length is preserved."""
    if not spans:
        return text
    chars = list(text)
    for s, e in spans:
        for i in range(max(s, 0), min(e, len(chars))):
            if not chars[i].isspace():
                chars[i] = mask
    return "".join(chars)

"""Emotion cues in replies (``[joy]``, ``<emotion=happy>``) become a badge, never raw text.

A minimal hook until the expression layer defines the cues: the filter works on streamed pieces, holding back
a possible tag until it is complete, so a tag split across pieces never flashes in the chat.
"""

from __future__ import annotations

import re

EMOTIONS: dict[str, str] = {
    "joy": "😊", "happy": "😊", "excited": "🤩", "laugh": "😆", "love": "🥰", "shy": "😳",
    "surprised": "😮", "surprise": "😮", "sad": "😢", "angry": "😠", "fear": "😨", "thinking": "🤔",
    "neutral": "🙂", "calm": "🙂", "playful": "😜", "proud": "😎", "sleepy": "😪",
}  # fmt: skip
"""Known cue names and the badge each shows."""

_TAG = re.compile(r"\[(?P<a>[a-zA-Z_]{2,16})\]|<emotion\s*[=:]\s*\"?(?P<b>[a-zA-Z_]{2,16})\"?\s*/?>")
_PENDING = re.compile(r"\[[a-zA-Z_]*|<(e(m(o(t(i(o(n(\s*[=:]?\s*\"?[a-zA-Z_]*\"?\s*/?)?)?)?)?)?)?)?)?")
"""A prefix of a tag (up to, not with, its ``>``): what :data:`_TAG` allows, closing quote, spaces and ``/`` too."""
_MAX_TAG = 32


def badge(emotion: str) -> str:
    return EMOTIONS.get(emotion, "🙂")


class EmotionFilter:
    """Strips emotion tags from streamed text and remembers the cues it saw."""

    def __init__(self) -> None:
        self.emotions: list[str] = []
        self._held = ""

    def feed(self, piece: str) -> str:
        """The text of ``piece`` that is safe to show now (a tag in progress is held back)."""
        text = self._held + piece
        self._held = ""
        cut = _pending_tag_start(text)
        if cut is not None:
            text, self._held = text[:cut], text[cut:]
        return self._strip(text)

    def flush(self) -> str:
        """Whatever was held back, at the end of the reply."""
        text, self._held = self._held, ""
        return self._strip(text)

    def _strip(self, text: str) -> str:
        def replace(match: re.Match[str]) -> str:
            name = (match.group("a") or match.group("b") or "").lower()
            if name not in EMOTIONS:
                return match.group(0)
            self.emotions.append(name)
            return ""

        return _TAG.sub(replace, text)


def strip_emotions(text: str) -> tuple[str, list[str]]:
    """A whole text without its emotion tags, and the cues found in it."""
    emotion_filter = EmotionFilter()
    clean = emotion_filter.feed(text) + emotion_filter.flush()
    return clean, emotion_filter.emotions


def _pending_tag_start(text: str) -> int | None:
    """Where an unfinished tag starts near the end of ``text`` (``None``: nothing to hold back)."""
    start = max(text.rfind("["), text.rfind("<"))
    if start < 0 or len(text) - start > _MAX_TAG:
        return None
    tail = text[start:]
    if "]" in tail or ">" in tail:
        return None
    if _PENDING.fullmatch(tail):
        return start
    return None

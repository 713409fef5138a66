"""Card macros: ``{{char}}`` / ``{{user}}`` (any case) and the V1 forms ``<BOT>`` / ``<USER>``."""

from __future__ import annotations

import re

_MACRO = re.compile(r"\{\{\s*(char|user)\s*\}\}|<(bot|user|char)>", re.IGNORECASE)


def has_macros(text: str) -> bool:
    """Whether ``text`` holds a character or user macro."""
    return _MACRO.search(text) is not None


def render_macros(text: str, *, char: str, user: str) -> str:
    """Replace the character and user macros; anything else (``{{original}}``...) is left alone."""
    if "{" not in text and "<" not in text:
        return text

    def substitute(match: re.Match[str]) -> str:
        which = (match.group(1) or match.group(2)).lower()
        return user if which == "user" else char

    return _MACRO.sub(substitute, text)

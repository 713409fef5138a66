"""Card macros ("curly braced syntaxes", any case): ``{{char}}`` / ``{{user}}`` and the V1 forms ``<BOT>`` /
``<USER>``; then the Character Card V3 ones: ``{{random:A,B}}``, ``{{pick:A,B}}``, ``{{roll:N}}`` / ``{{roll:dN}}``,
``{{reverse:A}}``, and the comments ``{{// A}}``, ``{{hidden_key:A}}``, ``{{comment:A}}``, which become nothing.
"""

from __future__ import annotations

import random
import re
import zlib

_MACRO = re.compile(r"\{\{\s*(char|user)\s*\}\}|<(bot|user|char)>", re.IGNORECASE)
# The body stops at the first "}}": the names inside (``{{random:{{char}},{{user}}}}``) are filled in first.
_V3 = re.compile(
    r"\{\{\s*(random|pick|roll|reverse|hidden_key|comment)\s*:(.*?)\}\}|\{\{\s*//.*?\}\}", re.I | re.S
)
_ITEM_SEPARATOR = re.compile(r"(?<!\\),")
_DIE = re.compile(r"\s*d?\s*(\d{1,9})\s*", re.IGNORECASE)


def has_macros(text: str) -> bool:
    """Whether ``text`` holds a character or user macro."""
    return _MACRO.search(text) is not None


def render_macros(text: str, *, char: str, user: str) -> str:
    """Replace the macros; anything else (``{{original}}``, an unknown ``{{x}}``...) is left alone.

    ``{{random}}`` and ``{{roll}}`` draw anew at each rendering; ``{{pick}}`` draws the same for the same text, so a
    prompt stays the same from request to request (and the server's prefix cache keeps it)."""
    if "{" not in text and "<" not in text:
        return text

    def names(match: re.Match[str]) -> str:
        which = (match.group(1) or match.group(2)).lower()
        return user if which == "user" else char

    text = _MACRO.sub(names, text)
    if "{{" not in text:
        return text
    return _V3.sub(lambda match: _v3_value(match, text), text)


def _v3_value(match: re.Match[str], text: str) -> str:
    kind = (match.group(1) or "//").lower()
    body = match.group(2) or ""
    if kind in ("//", "hidden_key", "comment"):
        return ""
    if kind == "reverse":
        return body[::-1]
    if kind == "roll":
        die = _DIE.fullmatch(body)
        if die is None or int(die.group(1)) < 1:
            return match.group()  # not a die: left as written
        return str(random.randint(1, int(die.group(1))))  # noqa: S311 - a game's dice, not a secret
    items = [item.replace("\\,", ",") for item in _ITEM_SEPARATOR.split(body.lstrip(":"))]
    if kind == "pick":  # the same text and place: the same choice
        seed = zlib.crc32(f"{match.start()}:{text}".encode("utf-8", "surrogatepass"))
        return random.Random(seed).choice(items)  # noqa: S311
    return random.choice(items)  # noqa: S311

"""Key matchers for lorebook entries: plain substrings and (guarded) regular expressions.

Regex keys come from untrusted cards, so they are compiled defensively: too long, invalid or
backtracking-prone patterns (a repeat inside a repeat, more than one open-ended repeat,
backreferences) never match, and the text they run on is capped. Loaders refuse the unsafe ones
outright (``unsafe_regex_reason``) so the author learns why.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

#: longest regex key accepted
MAX_PATTERN_CHARS = 256
#: regex keys only see the last this-many characters of the scanned text; even a single open-ended
#: repeat costs up to this squared per search, and matching runs on every chat turn
MAX_REGEX_SCAN_CHARS = 1000
#: a repeat allowing more than this many items counts as open-ended (``.{0,5000}`` is like ``.*``)
MAX_BOUNDED_REPEAT = 100
#: plain keys only see the last this-many characters of the scanned text (with MAX_LORE_KEYS keys,
#: a scan stays well under a second)
MAX_PLAIN_SCAN_CHARS = 50_000

_PATTERN_ERRORS = (re.error, RecursionError, OverflowError, ValueError, TypeError, AttributeError)
"""What compiling or parsing a hostile pattern may raise."""
_SLASH_FORM = re.compile(r"^/(.+)/([a-zA-Z]*)$", re.DOTALL)
_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}
_IGNORED_FLAGS = set("guyd")  # JavaScript flags with no meaning for a yes/no search

try:  # the parser is private; without it we only rely on compile + length + text caps
    _sre_parser: Any = importlib.import_module("re._parser")
    _sre_constants: Any = importlib.import_module("re._constants")
except ImportError:  # pragma: no cover - other Python implementations
    _sre_parser = None
    _sre_constants = None


@dataclass(frozen=True, slots=True)
class ScanText:
    """The text scanned for keys, prepared once per activation."""

    raw: str
    folded: str

    @classmethod
    def of(cls, text: str) -> ScanText:
        text = text[-MAX_PLAIN_SCAN_CHARS:]
        return cls(raw=text, folded=text.casefold())


Matcher = Callable[[ScanText], bool]


def _never(_: ScanText) -> bool:
    return False


def _risk(parsed: Any, inside_repeat: bool = False) -> tuple[bool, int]:
    """(nested repeat or backreference found, number of open-ended repeats) of a parsed pattern."""
    c = _sre_constants
    nested, open_ended = False, 0
    for op, arg in parsed:
        subs: list[Any] = []
        inner = inside_repeat
        if op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT):
            _low, high, sub = arg
            repeats = high == c.MAXREPEAT or high > 1
            nested = nested or (repeats and inside_repeat)
            open_ended += high == c.MAXREPEAT or high > MAX_BOUNDED_REPEAT
            subs, inner = [sub], inside_repeat or repeats
        elif op in (c.GROUPREF, c.GROUPREF_EXISTS):
            nested = True
        elif op == c.SUBPATTERN:
            subs = [arg[-1]]
        elif op == c.ATOMIC_GROUP:
            subs = [arg]
        elif op == c.BRANCH:
            subs = list(arg[1])
        elif op in (c.ASSERT, c.ASSERT_NOT):
            subs = [arg[1]]
        for sub in subs:
            sub_nested, sub_open = _risk(sub, inner)
            nested, open_ended = nested or sub_nested, open_ended + sub_open
    return nested, open_ended


def _split_key(key: str, case_sensitive: bool) -> tuple[str, int] | None:
    """(pattern, flags) of a plain or ``/pattern/flags`` key; None for an unknown flag."""
    pattern, flags = key, 0 if case_sensitive else re.IGNORECASE
    slash = _SLASH_FORM.match(key)
    if slash:
        pattern = slash.group(1)
        for flag in slash.group(2):
            if flag in _FLAGS:
                flags |= _FLAGS[flag]
            elif flag not in _IGNORED_FLAGS:
                return None
    return pattern, flags


def unsafe_regex_reason(key: str) -> str | None:
    """Why a regex key could be slow enough to stall chat (refused at import); None when acceptable.

    Keys that merely fail to compile are not reported: like in SillyTavern, they never match.
    """
    split = _split_key(key.strip(), case_sensitive=True)
    if split is None or not split[0]:
        return None
    pattern, flags = split
    if len(pattern) > MAX_PATTERN_CHARS:
        return f"is longer than {MAX_PATTERN_CHARS} characters"
    try:
        return _backtracking_reason(pattern, flags)
    except _PATTERN_ERRORS:
        return None


def _backtracking_reason(pattern: str, flags: int) -> str | None:
    """Why ``pattern`` may backtrack catastrophically; None when it may not (or cannot be checked here).
    Raises what the pattern parser raises."""
    if _sre_parser is None:  # pragma: no cover - other Python implementations
        return None
    nested, open_ended = _risk(_sre_parser.parse(pattern, flags))
    if nested:
        return "may backtrack catastrophically (a repeat inside a repeat, or a backreference)"
    if open_ended > 1:
        return (
            "may backtrack catastrophically (more than one open-ended repeat such as"
            f" '*', '+', '{{n,}}' or a repeat of over {MAX_BOUNDED_REPEAT})"
        )
    return None


def compile_regex(key: str, case_sensitive: bool) -> re.Pattern[str] | None:
    """Compile a regex key (plain or ``/pattern/flags``); None when it is invalid or unsafe."""
    split = _split_key(key, case_sensitive)
    if split is None:
        return None
    pattern, flags = split
    if not pattern or len(pattern) > MAX_PATTERN_CHARS:
        return None
    try:
        compiled = re.compile(pattern, flags)
        if _backtracking_reason(pattern, flags) is not None:
            return None
    except _PATTERN_ERRORS:
        return None
    return compiled


def keys_matcher(keys: Sequence[str], *, case_sensitive: bool, use_regex: bool) -> Matcher:
    """A function telling whether any of ``keys`` occurs in a ScanText."""
    cleaned = [k.strip() for k in keys if k and k.strip()]
    if not cleaned:
        return _never
    if use_regex:
        patterns = [p for p in (compile_regex(k, case_sensitive) for k in cleaned) if p is not None]
        if not patterns:
            return _never

        def match_regex(text: ScanText) -> bool:
            tail = text.raw[-MAX_REGEX_SCAN_CHARS:]
            return any(p.search(tail) is not None for p in patterns)

        return match_regex
    if case_sensitive:
        exact = tuple(dict.fromkeys(cleaned))
        return lambda text: any(k in text.raw for k in exact)
    folded = tuple(dict.fromkeys(k.casefold() for k in cleaned))
    return lambda text: any(k in text.folded for k in folded)

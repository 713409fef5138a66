"""Key matchers for lorebook entries: plain substrings and (guarded) regular expressions.

Regex keys come from untrusted cards, so they are compiled defensively: too long, invalid or
backtracking-prone patterns (a repeat inside a repeat, backreferences) never match, and the text
they run on is capped.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

#: longest regex key accepted
MAX_PATTERN_CHARS = 256
#: regex keys only see the last this-many characters of the scanned text
MAX_REGEX_SCAN_CHARS = 8000
#: plain keys only see the last this-many characters of the scanned text
MAX_PLAIN_SCAN_CHARS = 200_000

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


def _is_risky(parsed: Any, inside_repeat: bool = False) -> bool:
    """True when a pattern may backtrack catastrophically (nested repeats, backreferences)."""
    c = _sre_constants
    for op, arg in parsed:
        if op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT):
            low, high, sub = arg
            repeats = high == c.MAXREPEAT or high > 1
            if repeats and inside_repeat:
                return True
            if _is_risky(sub, inside_repeat or repeats):
                return True
        elif op in (c.GROUPREF, c.GROUPREF_EXISTS):
            return True
        elif op in (c.SUBPATTERN, c.ATOMIC_GROUP):
            sub = arg[-1] if op == c.SUBPATTERN else arg
            if _is_risky(sub, inside_repeat):
                return True
        elif op == c.BRANCH:
            if any(_is_risky(branch, inside_repeat) for branch in arg[1]):
                return True
        elif op in (c.ASSERT, c.ASSERT_NOT) and _is_risky(arg[1], inside_repeat):
            return True
    return False


def compile_regex(key: str, case_sensitive: bool) -> re.Pattern[str] | None:
    """Compile a regex key (plain or ``/pattern/flags``); None when it is invalid or unsafe."""
    pattern, flags = key, 0 if case_sensitive else re.IGNORECASE
    slash = _SLASH_FORM.match(key)
    if slash:
        pattern = slash.group(1)
        for flag in slash.group(2):
            if flag in _FLAGS:
                flags |= _FLAGS[flag]
            elif flag not in _IGNORED_FLAGS:
                return None
    if not pattern or len(pattern) > MAX_PATTERN_CHARS:
        return None
    try:
        compiled = re.compile(pattern, flags)
        if _sre_parser is not None and _is_risky(_sre_parser.parse(pattern, flags)):
            return None
    except (re.error, RecursionError, OverflowError, ValueError, TypeError, AttributeError):
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

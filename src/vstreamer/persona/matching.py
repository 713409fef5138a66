"""Key matchers for lorebook entries: plain substrings and (guarded) regular expressions.

Regex keys come from untrusted cards and run on every chat turn, on the event loop. Two guards:

- a static check of the parsed pattern: too long, invalid or backtracking-prone patterns (a repeat
  of something that can match in more than one way, such as an alternation or another repeat; more
  than one open-ended repeat; backreferences) never match, and loaders refuse them outright
  (``unsafe_regex_reason``) so the author learns why;
- a time bound, because no static check foresees every slow pattern: keys are searched with the
  ``regex`` engine, which can stop a search, and the regex keys of one activation share
  REGEX_BUDGET_S. Past it, the remaining regex keys do not match (that turn).

The text regex keys run on is capped too (MAX_REGEX_SCAN_CHARS).
"""

from __future__ import annotations

import importlib
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import regex

from vstreamer.persona.macros import render_macros

logger = logging.getLogger(__name__)

#: longest regex key accepted
MAX_PATTERN_CHARS = 256
#: regex keys only see the last this-many characters of the scanned text; even a single open-ended
#: repeat costs up to this squared per search, and matching runs on every chat turn
MAX_REGEX_SCAN_CHARS = 1000
#: a repeat allowing more than this many items counts as open-ended (``.{0,5000}`` is like ``.*``)
MAX_BOUNDED_REPEAT = 100
#: most ways the repeats of a key may split the text at one position (an open-ended repeat counts
#: MAX_REGEX_SCAN_CHARS + 1, ``?`` two, ``{0,99}`` a hundred): one open-ended repeat and a few
#: optional parts, or two bounded repeats, but not ``a{0,99}a{0,99}a{0,99}``
MAX_MATCH_WAYS = 20_000
#: seconds of regex searching one lorebook activation may spend, all its keys and scans together
REGEX_BUDGET_S = 0.005
#: plain keys only see the last this-many characters of the scanned text (with MAX_LORE_KEYS keys,
#: a scan stays well under a second)
MAX_PLAIN_SCAN_CHARS = 50_000

_PATTERN_ERRORS = (re.error, RecursionError, OverflowError, ValueError, TypeError, AttributeError)
"""What compiling or parsing a hostile pattern may raise."""
_SLASH_FORM = re.compile(r"^/(.+)/([a-zA-Z]*)$", re.DOTALL)
# what SillyTavern reads as a regex among plain keys (its parseRegexFromString): JavaScript flags only
_ST_REGEX_KEY = re.compile(r"^/(.+)/([gimsuy]*)$", re.DOTALL)
_RE_REPEAT = re.compile(r"\{(?:\d+|\d*,\d*)\}")  # what ``re`` reads as a repeat; any other ``{`` is text
_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}
_IGNORED_FLAGS = set("guyd")  # JavaScript flags with no meaning for a yes/no search

try:  # the parser is private; without it we only rely on compile + length + text caps
    _sre_parser: Any = importlib.import_module("re._parser")
    _sre_constants: Any = importlib.import_module("re._constants")
except ImportError:  # pragma: no cover - other Python implementations
    _sre_parser = None
    _sre_constants = None


@dataclass(slots=True)
class RegexBudget:
    """Search time the regex keys of one activation may still spend (its scans share one)."""

    left_s: float = REGEX_BUDGET_S


@dataclass(frozen=True, slots=True)
class ScanText:
    """The text scanned for keys, prepared once per scan."""

    raw: str
    folded: str
    budget: RegexBudget = field(default_factory=RegexBudget)

    @classmethod
    def of(cls, text: str, budget: RegexBudget | None = None) -> ScanText:
        text = text[-MAX_PLAIN_SCAN_CHARS:]
        return cls(raw=text, folded=text.casefold(), budget=RegexBudget() if budget is None else budget)


Matcher = Callable[[ScanText], bool]


def _never(_: ScanText) -> bool:
    return False


class _Unsafe(Exception):
    """A pattern shape that may backtrack catastrophically; the message says which."""


def _ways(parsed: Any) -> int:
    """How many ways a match attempt at one position may go, at most (capped just past
    MAX_MATCH_WAYS): repeats multiply, alternatives add up. Raises _Unsafe for shapes that are
    exponential whatever the limit."""
    c = _sre_constants
    total = 1
    for op, arg in parsed:
        if op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT):
            total *= _repeat_ways(*arg)
        elif op in (c.GROUPREF, c.GROUPREF_EXISTS):
            raise _Unsafe("a backreference")
        elif op == c.SUBPATTERN:
            total *= _ways(arg[-1])
        elif op == c.ATOMIC_GROUP:
            total *= _ways(arg)
        elif op == c.BRANCH:
            total *= sum(_ways(sub) for sub in arg[1])
        elif op in (c.ASSERT, c.ASSERT_NOT):
            total *= _ways(arg[1])
        total = min(total, MAX_MATCH_WAYS + 1)  # keep the numbers small
    return total


def _repeat_ways(low: int, high: int, body: Any) -> int:
    inner = _ways(body)
    if high <= 1:  # ``x?``: taken or not
        return inner + 1 if low < high else inner
    if inner > 1 and low != high:
        # ``(a|a)*``, ``(a|ab)*``, ``(?:a?a)*``, ``(a+)+``: the ways to split a text multiply per item
        raise _Unsafe(
            "a repeat of something that can match in more than one way:"
            " an alternation '|', an optional part or another repeat"
        )
    if inner > 1:  # ``(?:ab?){3}``; inner >= 2, so 15 items are past the cap already
        return min(inner ** min(low, 15), MAX_MATCH_WAYS + 1)
    open_ended = high == _sre_constants.MAXREPEAT or high > MAX_BOUNDED_REPEAT
    return max((MAX_REGEX_SCAN_CHARS if open_ended else high) - low + 1, 1)


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
    try:
        ways = _ways(_sre_parser.parse(pattern, flags))
    except _Unsafe as exc:
        return f"may backtrack catastrophically ({exc})"
    if ways > MAX_MATCH_WAYS:
        return (
            "may backtrack catastrophically (more than one open-ended repeat such as"
            f" '*', '+', '{{n,}}' or a repeat of over {MAX_BOUNDED_REPEAT}, or too many repeats together)"
        )
    return None


def compile_regex(key: str, case_sensitive: bool) -> Any | None:
    """Compile a regex key (plain or ``/pattern/flags``) for the ``regex`` engine; None when it is
    invalid or unsafe. The syntax is Python's ``re`` (what the safety check reads)."""
    split = _split_key(key, case_sensitive)
    if split is None:
        return None
    pattern, flags = split
    if not pattern or len(pattern) > MAX_PATTERN_CHARS:
        return None
    try:
        re.compile(pattern, flags)
        if _backtracking_reason(pattern, flags) is not None:
            return None
        return regex.compile(_literal_braces_escaped(pattern), flags)  # same flag values as re
    except (*_PATTERN_ERRORS, regex.error):
        return None


def _literal_braces_escaped(pattern: str) -> str:
    """``pattern`` with each ``{`` that ``re`` reads as text escaped, so ``regex`` reads it the same:
    after an item, ``regex`` takes ``{e}``, ``{d}``, ``{s}``, ``{i}`` for fuzzy-matching constraints
    (``hello{e}`` would match "hellx", and ``{desc}`` would not compile)."""
    out: list[str] = []
    i, class_start = 0, -1  # where the open ``[...]`` began; -1 outside one
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if class_start >= 0:
            first = class_start + (2 if pattern[class_start + 1 : class_start + 2] == "^" else 1)
            if ch == "]" and i > first:  # a ``]`` first in the set is one of its characters
                class_start = -1
        elif ch == "[":
            class_start = i
        elif ch == "{" and not _RE_REPEAT.match(pattern, i):
            ch = "\\{"
        out.append(ch)
        i += 1
    return "".join(out)


class _RegexKeys:
    """Matches when any of its compiled keys is found in the tail of a ScanText, within its budget."""

    __slots__ = ("patterns", "warned")

    def __init__(self, patterns: list[Any]) -> None:
        self.patterns = patterns
        self.warned = False

    def __call__(self, text: ScanText) -> bool:
        tail = text.raw[-MAX_REGEX_SCAN_CHARS:]
        return any(self._search(p, tail, text.budget) for p in self.patterns)

    def _search(self, pattern: Any, tail: str, budget: RegexBudget) -> bool:
        if budget.left_s <= 0:
            return False
        start = time.perf_counter()
        try:
            return pattern.search(tail, timeout=budget.left_s) is not None
        except TimeoutError:
            if not self.warned:  # once per key set, not on every chat turn
                self.warned = True
                logger.warning(
                    "lorebook regex key %r ran out of the %.0f ms regex keys get per turn; it and the"
                    " keys after it do not match this turn",
                    pattern.pattern[:80],
                    REGEX_BUDGET_S * 1000,
                )
            return False
        finally:
            budget.left_s -= time.perf_counter() - start


def is_regex_key(key: str, use_regex: bool) -> bool:
    """Whether ``key`` is matched as a regex: all keys of a ``use_regex`` entry, and, as SillyTavern
    does, a ``/pattern/flags`` key (JavaScript flags) of any other entry."""
    return use_regex or _ST_REGEX_KEY.match(key.strip()) is not None


def keys_matcher(
    keys: Sequence[str],
    *,
    case_sensitive: bool,
    use_regex: bool,
    macro_names: tuple[str, str] | None = None,
) -> Matcher:
    """A function telling whether any of ``keys`` occurs in a ScanText (see ``is_regex_key``).

    With ``macro_names`` (char, user), the macros in the keys are filled first. Whether a key is a
    regex is decided on the key as written, and a name is matched as text in a regex too.
    """
    cleaned = [k.strip() for k in keys if k and k.strip()]
    regex_keys = [k for k in cleaned if is_regex_key(k, use_regex)]
    plain_keys = [k for k in cleaned if not is_regex_key(k, use_regex)]
    if macro_names is not None:
        char, user = macro_names
        plain_keys = [render_macros(k, char=char, user=user).strip() for k in plain_keys]
        escaped = {"char": re.escape(char), "user": re.escape(user)}
        regex_keys = [render_macros(k, **escaped) for k in regex_keys]
    plain = _plain_matcher([k for k in plain_keys if k], case_sensitive)
    if not regex_keys:
        return plain
    patterns = [p for p in (compile_regex(k, case_sensitive) for k in regex_keys) if p is not None]
    if not patterns:
        return plain
    found = _RegexKeys(patterns)
    if plain is _never:
        return found
    return lambda text: plain(text) or found(text)


def _plain_matcher(cleaned: list[str], case_sensitive: bool) -> Matcher:
    if not cleaned:
        return _never
    if case_sensitive:
        exact = tuple(dict.fromkeys(cleaned))
        return lambda text: any(k in text.raw for k in exact)
    folded = tuple(dict.fromkeys(k.casefold() for k in cleaned))
    return lambda text: any(k in text.folded for k in folded)

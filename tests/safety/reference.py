"""The straightforward implementations the fast paths replaced, kept to test that they agree.

Each function here is the earlier code, written for clarity: per-character loops, every regular
expression run, the stream guard re-reading its window and rebuilding everything per chunk.
"""

from __future__ import annotations

import re

from vstreamer.safety.matcher import CompiledLexicon
from vstreamer.safety.normalize import (
    _CJK_SEP,
    _LOOKALIKE,
    _LOOKALIKE_MAP,
    _RUNS,
    _SEP,
    _SEP_CHARS,
    NormalizedText,
    char_table,
)
from vstreamer.safety.stream_guard import (
    _CONTEXT,
    _GROW_MAX,
    _HEAD,
    _PATTERN_RULES,
    _TAIL_MAX,
    _TAIL_PATTERNS,
    Analyse,
    partials_of,
)
from vstreamer.safety.types import mask_spans

_NOT_CONTRACTION = "(?<!i'[md])(?!(?<=i)'[md](?![a-z0-9]))"
_SPACED_LETTERS = re.compile(
    f"(?<![a-z0-9])[a-z]{_NOT_CONTRACTION}(?:[{_SEP}]+[a-z]{_NOT_CONTRACTION}){{2,}}(?![a-z0-9])"
)
"""The spaced-letters pattern as first written (look-behind first)."""


def fold_with_map(text: str) -> tuple[str, list[int]]:
    table = char_table()
    chars: list[str] = []
    starts: list[int] = []
    for i, c in enumerate(text):
        for low in c.lower():
            for ch in table.get(ord(low), low):
                chars.append(ch)
                starts.append(i)
    return "".join(chars), starts


def _drop(chars: list[str], starts: list[int], ends: list[int], keep: list[bool]) -> None:
    chars[:] = [c for c, k in zip(chars, keep, strict=True) if k]
    starts[:] = [c for c, k in zip(starts, keep, strict=True) if k]
    ends[:] = [c for c, k in zip(ends, keep, strict=True) if k]


def normalize_with_map(text: str) -> NormalizedText:
    folded, starts = fold_with_map(text)
    chars = list(folded)
    ends = [i + 1 for i in starts]
    s = "".join(chars)
    keep = [True] * len(chars)
    for m in _CJK_SEP.finditer(s):
        keep[m.start() : m.end()] = [False] * (m.end() - m.start())
    _drop(chars, starts, ends, keep)
    s = "".join(chars)
    keep = [True] * len(chars)
    for m in _SPACED_LETTERS.finditer(s):
        for j in range(m.start(), m.end()):
            keep[j] = not _SEP_CHARS.fullmatch(s[j])
    _drop(chars, starts, ends, keep)
    s = "".join(chars)
    for m in _LOOKALIKE.finditer(s):
        chars[m.start()] = _LOOKALIKE_MAP[m.group()]
    s = "".join(chars)
    out_starts: list[int] = []
    out_ends: list[int] = []
    runs: list[int] = []
    out: list[str] = []
    for m in _RUNS.finditer(s):
        out.append(m.group(1))
        out_starts.append(starts[m.start()])
        out_ends.append(ends[m.end() - 1])
        runs.append(m.end() - m.start())
    return NormalizedText("".join(out), tuple(out_starts), tuple(out_ends), tuple(runs))


def tail_starts(folded: str, floor: int) -> tuple[int | None, ...]:
    out: list[int | None] = []
    for pattern in _TAIL_PATTERNS:
        m = pattern.search(folded, floor)
        out.append(m.start() if m and m.start() < m.end() else None)
    return tuple(out)


def growing_suffix(compiled: CompiledLexicon, n: str) -> int:
    for k in range(min(len(n), compiled.max_key_length), 0, -1):
        if compiled.could_grow(n[len(n) - k :]):
            return k
    return 0


class ReferenceGuard:
    """The stream guard's release logic (no leak guard): the whole window re-read per chunk."""

    def __init__(self, compiled: CompiledLexicon, analyse: Analyse) -> None:
        self._compiled = compiled
        self._analyse = analyse
        self._partials = partials_of(compiled)
        self._context = (
            ""  # the model's own text: the start of a mask open at the release point, then the last released
        )
        self._head = 0
        self._pending = ""
        self.blocked = False

    def feed(self, text: str) -> str:
        if self.blocked or not text:
            return ""
        self._pending += text
        return self._advance(final=False)

    def finish(self) -> str:
        return "" if self.blocked else self._advance(final=True)

    def _advance(self, *, final: bool) -> str:
        base = len(self._context)
        t = self._context + self._pending
        found = [(m, a) for m, a in self._analyse(t, final, None) if m.end > base and a != "flag"]
        hold = len(t) if final else self._hold_point(t, base)
        blocks = [m for m, a in found if a == "block"]
        if any(m.end <= hold for m in blocks):
            self.blocked = True
            return ""
        for m in blocks:  # ending in the held tail: decided once it is known what the term grows into
            hold = min(hold, max(base, m.start))
        masks = [(m.start, m.end) for m, a in found if a != "block"]
        if not final:
            floor = max(base, len(t) - _GROW_MAX)
            for m, a in found:  # a pattern's match reaching the end may still grow
                if a != "block" and m.end >= len(t) and m.rule.startswith(_PATTERN_RULES):
                    hold = min(hold, max(floor, m.start))
            for s, e in masks:
                if s < hold < e:
                    hold = max(base, s, min(hold, floor))
        released = mask_spans(t, masks)[base:hold]
        if released:
            recent = max(self._head, hold - _CONTEXT)
            open_at = [s for s, e in masks if s < recent <= hold <= e]
            head = t[min(open_at) : min(min(open_at) + _HEAD, recent)] if open_at else ""
            self._context = head + t[recent:hold]
            self._head = len(head)
        self._pending = t[hold:]
        return released

    def _hold_point(self, t: str, base: int) -> int:
        folded, starts = fold_with_map(t)
        hold = len(t)
        core = len(folded)
        floor = max(0, len(folded) - _TAIL_MAX)
        for i, pattern in enumerate(_TAIL_PATTERNS):
            m = pattern.search(folded, floor)
            if m and m.start() < m.end():
                hold = min(hold, starts[m.start()])
                if i == 0:
                    core = m.start()
        core_text = t[: starts[core]] if core < len(folded) else t
        nm = normalize_with_map(core_text)
        n = nm.text
        for k in range(min(len(n), self._compiled.max_key_length), 0, -1):
            if self._compiled.could_grow(n[len(n) - k :]):
                hold = min(hold, nm.starts[len(n) - k])
                break
        partial = self._partials.start(folded)
        if partial is not None:
            hold = min(hold, starts[partial])
        return max(hold, base)


NOT_A_PATTERN = re.compile("")
"""Matches every text (at its start): a screen that lets everything through to the full check."""

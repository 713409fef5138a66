"""Aho-Corasick matching of a compiled lexicon over normalised text, mapped back to the original.

The automaton comes from a library: ``ahocorasick_rs`` (Rust, fastest) when it is installed,
else ``pyahocorasick``. The pyahocorasick trie is always built too: the streaming guard asks it
whether the end of a partial reply could still grow into a term. Long texts are normalised with
numpy and matched by a second Rust automaton over a renumbered, compact alphabet
(:mod:`vstreamer.safety.automaton`).
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import ahocorasick

from vstreamer.errors import ConfigError
from vstreamer.safety.lexicon import Category, Lexicon, Term
from vstreamer.safety.normalize import (
    VECTOR_MIN_LENGTH,
    NormalizedText,
    fold,
    fold_with_map,
    normalize_runs,
    normalize_short,
    normalize_with_map,
)
from vstreamer.safety.pinyin import PinyinIndex
from vstreamer.safety.types import Match

logger = logging.getLogger(__name__)

_acrs: Any
try:  # optional accelerator
    import ahocorasick_rs as _acrs
except ImportError:  # pragma: no cover - depends on the environment
    _acrs = None
try:  # numpy: the long-text path
    from vstreamer.safety.automaton import CodeAutomaton
    from vstreamer.safety.vector import normalize_codes
except ImportError:  # pragma: no cover - depends on the environment
    CodeAutomaton = None


@dataclass(frozen=True, slots=True)
class _Entry:
    term: Term | None
    """None for an allow-list phrase."""
    part: int
    runs: tuple[int, ...]
    allow_category: str | None = None
    needs_left: bool = False
    needs_right: bool = False


def _is_word_char(c: str) -> bool:
    return c.isascii() and c.isalnum()


class CompiledLexicon:
    """An immutable, shareable matcher for one :class:`Lexicon`."""

    def __init__(self, lexicon: Lexicon, *, backend: str = "auto") -> None:
        self.lexicon = lexicon
        self.categories: dict[str, Category] = dict(lexicon.categories)
        self._keys: list[str] = []
        self._entries: list[list[_Entry]] = []
        index: dict[str, int] = {}
        for term in lexicon.terms:
            for part_no, part in enumerate(term.parts):
                self._add(index, part, term, part_no, None)
        for allow in lexicon.allows:
            self._add(index, allow.phrase, None, 0, allow.category)
        self._patterns = [(c, _compile(p, name), name) for c, p, name in lexicon.patterns]
        self._pattern_screen = _screen([p for _, p, _ in self._patterns])
        pinyin_terms = [t for t in lexicon.terms if (c := self.categories.get(t.category)) and c.pinyin]
        self._pinyin = PinyinIndex(pinyin_terms) if pinyin_terms else None
        self.max_key_length = max((len(k) for k in self._keys), default=0)
        self._reach = trigram_reach(self._keys)
        self.trie = ahocorasick.Automaton()
        for i, key in enumerate(self._keys):
            self.trie.add_word(key, i)
        use_rs = backend == "rs" or (backend == "auto" and _acrs is not None)
        self.backend = "ahocorasick_rs" if use_rs and self._keys else "pyahocorasick"
        self._rs = _acrs.AhoCorasick(self._keys) if self.backend == "ahocorasick_rs" and _acrs else None
        if self._keys:
            self.trie.make_automaton()
        logger.debug("compiled %d keys (%s)", len(self._keys), self.backend)

    def _add(self, index: dict[str, int], raw: str, term: Term | None, part: int, allow: str | None) -> None:
        key, runs = normalize_runs(raw)
        if len(key) < self.lexicon.min_length and term is not None and len(term.parts) == 1:
            return
        if not key:
            return
        entry = _Entry(
            term,
            part,
            runs,
            allow,
            needs_left=term is not None and not term.open_start and _is_word_char(key[0]),
            needs_right=term is not None and not term.open_end and _is_word_char(key[-1]),
        )
        slot = index.get(key)
        if slot is None:
            slot = index[key] = len(self._keys)
            self._keys.append(key)
            self._entries.append([])
        self._entries[slot].append(entry)

    @property
    def size(self) -> int:
        """Number of distinct normalised keys."""
        return len(self._keys)

    def candidates(self, normalized: str) -> list[tuple[int, int, int]]:
        """All (start, end, key index) occurrences in already-normalised text."""
        return [(s, e, k) for k, s, e in self._occurrences(normalized)]

    def _occurrences(self, normalized: str) -> list[tuple[int, int, int]]:
        if not self._keys:
            return []
        if self._rs is not None:
            found: list[tuple[int, int, int]] = self._rs.find_matches_as_indexes(normalized, overlapping=True)
            return found
        return [(k, end + 1 - len(self._keys[k]), end + 1) for end, k in self.trie.iter(normalized)]

    @cached_property
    def _code_automaton(self) -> CodeAutomaton | None:
        if self.backend != "ahocorasick_rs" or CodeAutomaton is None:
            return None
        return CodeAutomaton(self._keys, _acrs)

    def find(self, text: str) -> list[tuple[int, int, int]]:
        """Normalise ``text`` and return every (key index, start, end) occurrence in the normalised
        text (the order ``ahocorasick_rs`` reports them in, to avoid rebuilding a long list)."""
        if len(text) < VECTOR_MIN_LENGTH or self._code_automaton is None:
            return self._occurrences(normalize_short(text))
        return self._code_automaton.find(normalize_codes(text))

    def could_grow(self, normalized_suffix: str) -> bool:
        """Whether some key starts with ``normalized_suffix`` (or equals it)."""
        return bool(self._keys) and self.trie.match(normalized_suffix)

    def growing_suffix(self, normalized: str) -> int:
        """Length of the longest end of ``normalized`` that is the beginning of a key (0: none)."""
        top = min(len(normalized), self.max_key_length)
        if top > 2:
            # A key beginning of length k > 2 holds the text's last three characters at k - 3:
            # no key with them that far in bounds k (most endings are in no key at all: k <= 2).
            top = min(top, max(self._reach.get(normalized[-3:], 0), 2))
        for k in range(top, 0, -1):
            if self.could_grow(normalized[len(normalized) - k :]):
                return k
        return 0

    def scan(
        self, text: str, *, at_end: bool = True, normalized: str | None = None, folded: str | None = None
    ) -> list[Match]:
        """Verified matches in ``text`` (spans in the original text).

        Args:
            text: the original text.
            at_end: whether the text is complete; when False, a Latin term touching the end is
                not reported yet (the next character may make it part of a longer word).
            normalized: :func:`normalize_short` of ``text``, when the caller has it already.
            folded: :func:`fold` of ``text``, when the caller has it already.
        """
        short = len(text) < VECTOR_MIN_LENGTH or self._code_automaton is None
        if short and normalized is None:
            normalized = normalize_short(text)
        elif not short:
            normalized = None
        found: list[tuple[int, int, int]] = []
        if self._keys:
            found = self._occurrences(normalized) if normalized is not None else self.find(text)
        if folded is None:
            folded = fold(text) if self._patterns or self._pinyin is not None else ""
        matches = self._pattern_matches(text, folded) if self._patterns else []
        if self._pinyin is not None:
            matches += self._pinyin.scan(text, at_end=at_end, normalized=normalized, folded=folded)
        if not found:
            return _dedupe(matches) if matches else matches
        return _dedupe(matches + self._verify(normalize_with_map(text), found, at_end))

    def _pattern_matches(self, text: str, folded: str) -> list[Match]:
        if self._pattern_screen is not None and not self._pattern_screen.search(folded):
            return []
        hits = [(c, m, n) for c, p, n in self._patterns for m in p.finditer(folded) if m.end() > m.start()]
        if not hits:
            return []
        _, starts = fold_with_map(text)
        out = []
        for category, m, name in hits:
            s, e = starts[m.start()], starts[m.end() - 1] + 1
            out.append(Match(s, e, category, text[s:e], f"pattern:{name}"))
        return out

    def _verify(self, nm: NormalizedText, found: list[tuple[int, int, int]], at_end: bool) -> list[Match]:
        allowed: list[tuple[int, int, str | None]] = []
        hits: list[tuple[int, int, _Entry]] = []
        for k, s, e in found:
            for entry in self._entries[k]:
                if not _runs_ok(nm.runs, s, entry.runs):
                    continue
                if entry.term is None:
                    allowed.append((s, e, entry.allow_category))
                elif _bounds_ok(nm.text, s, e, entry, at_end):
                    hits.append((s, e, entry))
        hits = [h for h in hits if not _suppressed(h, allowed)]
        parts_seen: dict[Term, dict[int, list[tuple[int, int]]]] = defaultdict(lambda: defaultdict(list))
        for s, e, entry in hits:
            assert entry.term is not None
            parts_seen[entry.term][entry.part].append((s, e))
        out: list[Match] = []
        for term, parts in parts_seen.items():
            if len(parts) < len(term.parts):
                continue
            for spans in parts.values():
                for s, e in spans:
                    os, oe = nm.span(s, e)
                    out.append(Match(os, oe, term.category, term.text, term.rule))
        return out


def _compile(pattern: str, name: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:  # load_lexicon checks its files' patterns; a Lexicon may be built in code
        raise ConfigError(f"invalid regular expression in lexicon rule {name}: {pattern!r}: {exc}") from exc


def _screen(patterns: list[re.Pattern[str]]) -> re.Pattern[str] | None:
    """One expression that matches wherever one of ``patterns`` does (a quick "none of them"), or
    None when they cannot be joined safely (groups: back-references would be renumbered)."""
    if not patterns or any(p.groups or p.flags & ~re.UNICODE for p in patterns):
        return None
    try:
        return re.compile("|".join(f"(?:{p.pattern})" for p in patterns))
    except re.error:  # pragma: no cover - e.g. inline global flags
        return None


def trigram_reach(keys: Sequence[str]) -> dict[str, int]:
    """For each three characters found in a key, the furthest end they have in one (the length of
    the longest key beginning that ends with them)."""
    reach: dict[str, int] = {}
    for key in keys:
        for end in range(3, len(key) + 1):
            tri = key[end - 3 : end]
            if reach.get(tri, 0) < end:
                reach[tri] = end
    return reach


def _runs_ok(runs: Sequence[int], start: int, needed: Sequence[int]) -> bool:
    # "ass" normalises to "as"; the text must have had at least two s's there.
    return all(runs[start + i] >= n for i, n in enumerate(needed) if n > 1)


def _bounds_ok(text: str, s: int, e: int, entry: _Entry, at_end: bool) -> bool:
    if entry.needs_left and s > 0 and _is_word_char(text[s - 1]):
        return False
    if entry.needs_right:
        if e < len(text):
            return not _is_word_char(text[e])
        return at_end
    return True


def _suppressed(hit: tuple[int, int, _Entry], allowed: list[tuple[int, int, str | None]]) -> bool:
    s, e, entry = hit
    assert entry.term is not None
    cat = entry.term.category
    return any(a <= s and e <= b and c in (None, cat) for a, b, c in allowed)


def _dedupe(matches: list[Match]) -> list[Match]:
    seen: set[tuple[int, int, str]] = set()
    out = []
    for m in sorted(matches, key=lambda m: (m.start, -m.end, m.category)):
        key = (m.start, m.end, m.category)
        if key not in seen:
            seen.add(key)
            out.append(m)
    return out

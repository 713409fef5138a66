"""Pinyin and homophone matching, for the lexicon categories that opt in (``pinyin = true``).

Two evasions of a Chinese term are caught, each with a rule that keeps false positives down:

* **homophone characters** ("兵毒" for 冰毒): every character of the normalised text is replaced by
  its pinyin *with the tone* (one token per syllable), so 病毒 (bìng dú) never matches 冰毒 (bīng dú);
  an occurrence written with exactly the listed characters is left to the main matcher, whose
  allow-lists apply;
* **pinyin spelled in Latin letters** ("bing du", "BingDu", "b.i.n.g.d.u"): toneless, so it is only
  accepted on whole syllables: the span starts and ends at word boundaries and every word boundary
  inside it falls between two syllables of the term ("bin gdu" and "xbingdu" do not match).

Readings come from ``pypinyin``: the term's reading in context, the text's
characters in their most common reading.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import ahocorasick

from vstreamer.errors import ConfigError
from vstreamer.safety.lexicon import Term
from vstreamer.safety.normalize import _SEP, fold, fold_with_map, normalize_short, normalize_with_map
from vstreamer.safety.types import Match

_HAN = re.compile(r"[\u4e00-\u9fff]+")
_WORD = re.compile(r"[a-z]+")
_GAP = re.compile(f"[{_SEP}]+")
_NOT_LETTER = re.compile("[^a-z]+")
_ASCII_NOT_LETTER = bytes(c for c in range(128) if not 0x61 <= c <= 0x7A)
_TOKEN_BASE = 0xE000
"""Syllable tokens are private-use characters (the text's own ones are blanked first)."""
_PRIVATE_USE = {cp: 0 for cp in range(0xE000, 0xF900)}


def _pypinyin() -> Any:
    try:
        import pypinyin
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError("pinyin matching needs pypinyin: pip install pypinyin") from exc
    return pypinyin


@cache
def _char_readings() -> dict[str, str]:
    """Each Chinese character's most common toned reading ("bing1")."""
    p = _pypinyin()
    chars = [chr(cp) for cp in range(0x4E00, 0xA000)]
    readings = p.pinyin(
        chars, style=p.Style.TONE3, heteronym=False, neutral_tone_with_five=True, errors=lambda _: [""]
    )
    return {c: r[0] for c, r in zip(chars, readings, strict=True) if r and r[0]}


@dataclass(frozen=True, slots=True)
class _Key:
    term: Term
    syllable_ends: frozenset[int]
    """Offsets (in letters) where a syllable of the toneless spelling ends."""
    text: str
    """The term, normalised."""


class PinyinIndex:
    """Finds the terms of opted-in categories written with homophones or in Latin pinyin."""

    def __init__(self, terms: Sequence[Term]) -> None:
        p = _pypinyin()
        readings = _char_readings()
        syllables = sorted(set(readings.values()))
        token = {s: chr(_TOKEN_BASE + i) for i, s in enumerate(syllables)}
        self._to_tokens = {ord(c): token[r] for c, r in readings.items()} | _PRIVATE_USE
        self._sounds = ahocorasick.Automaton()
        self._letters = ahocorasick.Automaton()
        for term in terms:
            text = normalize_short(term.parts[0])
            if len(term.parts) > 1 or len(text) < 2 or not _HAN.fullmatch(text):
                continue
            toned = p.lazy_pinyin(text, style=p.Style.TONE3, neutral_tone_with_five=True)
            plain = p.lazy_pinyin(text)
            if len(toned) != len(text) or any(t not in token for t in toned):
                continue
            ends = [len("".join(plain[: i + 1])) for i in range(len(plain))]
            key = _Key(term, frozenset(ends), text)
            _add(self._sounds, "".join(token[t] for t in toned), key)
            _add(self._letters, "".join(plain), key)
        for automaton in (self._sounds, self._letters):
            if len(automaton):
                automaton.make_automaton()

    def scan(
        self, text: str, *, at_end: bool = True, normalized: str | None = None, folded: str | None = None
    ) -> list[Match]:
        """Homophone and Latin-pinyin occurrences in ``text`` (spans in the original text);
        unless ``at_end``, a Latin word touching the end is not reported yet (it may grow).
        ``normalized`` and ``folded``: :func:`normalize_short` and :func:`fold` of ``text``, when
        the caller has them already."""
        return self._homophones(text, normalized) + self._latin(text, at_end, folded)

    def _homophones(self, text: str, normalized: str | None) -> list[Match]:
        if not len(self._sounds) or text.isascii() or not _HAN.search(text):
            return []
        if normalized is None:
            normalized = normalize_short(text)
        hits = [
            (end + 1 - len(key.text), end + 1, key)
            for end, keys in self._sounds.iter(normalized.translate(self._to_tokens))
            for key in keys
        ]
        hits = [(s, e, key) for s, e, key in hits if normalized[s:e] != key.text]
        if not hits:
            return []
        nm = normalize_with_map(text)
        out = []
        for s, e, key in hits:
            os, oe = nm.span(s, e)
            out.append(Match(os, oe, key.term.category, key.term.text, f"pinyin:{key.term.rule}"))
        return out

    def _latin(self, text: str, at_end: bool, folded: str | None) -> list[Match]:
        if not len(self._letters):
            return []
        if folded is None:
            folded = fold(text)
        if not _may_hold_key(self._letters, folded):
            return []
        letters, positions, boundaries, breaks = _letter_stream(folded)
        hits = []
        for end, keys in self._letters.iter(letters):
            for key in keys:
                s, e = end + 1 - max(key.syllable_ends), end + 1
                if s not in breaks or e not in breaks:
                    continue
                if not at_end and positions[e - 1] + 1 == len(folded):
                    continue  # the word may still grow
                if all(b - s in key.syllable_ends for b in boundaries if s < b < e):
                    hits.append((positions[s], positions[e - 1] + 1, key))
        if not hits:
            return []
        _, starts = fold_with_map(text)
        out = []
        for s, e, key in hits:
            os, oe = starts[s], starts[e - 1] + 1
            out.append(Match(os, oe, key.term.category, key.term.text, f"pinyin:{key.term.rule}"))
        return out


def _may_hold_key(letters: ahocorasick.Automaton, folded: str) -> bool:
    """Whether a key occurs in the Latin letters of ``folded`` run together: the letter stream is
    those letters with word breaks added, so when this is False the stream holds no key either."""
    if folded.isascii():
        only = folded.encode("ascii").translate(None, _ASCII_NOT_LETTER).decode("ascii")
    else:
        only = _NOT_LETTER.sub("", folded)
    return next(letters.iter(only), None) is not None


def _add(automaton: ahocorasick.Automaton, key: str, value: _Key) -> None:
    existing = automaton.get(key, None)
    automaton.add_word(key, (*existing, value) if existing else (value,))


def _letter_stream(folded: str) -> tuple[str, list[int], set[int], set[int]]:
    """The Latin letters of ``folded`` joined up, with where each came from, the word boundaries
    inside phrases of words joined by separators, and the word edges (where a match may begin or
    end). A chain of single letters ("b.i.n.g") counts as one word."""
    parts: list[str] = []
    positions: list[int] = []
    boundaries: set[int] = set()
    edges: set[int] = set()
    prev_end, prev_single, size = -1, False, 0
    for m in _WORD.finditer(folded):
        single = m.end() - m.start() == 1
        joined = prev_end >= 0 and _GAP.fullmatch(folded, prev_end, m.start()) is not None
        if not joined:
            parts.append("\x00")  # words apart: no match may span them
            positions.append(-1)
            size += 1
            edges.add(size)
        elif single and prev_single:
            edges.discard(size)  # the chain goes on
        else:
            boundaries.add(size)
            edges.add(size)
        parts.append(m.group())
        positions.extend(range(m.start(), m.end()))
        size += m.end() - m.start()
        edges.add(size)
        prev_end, prev_single = m.end(), single
    return "".join(parts), positions, boundaries, edges

"""Pinyin and homophone matching, for the lexicon categories that opt in (``pinyin = true``).

Three evasions of a Chinese term are caught, each with a rule that keeps false positives down:

* **homophone characters** ("兵毒" for 冰毒): every character of the normalised text is replaced by
  its pinyin *with the tone* (one token per syllable), so 病毒 (bìng dú) never matches 冰毒 (bīng dú);
  an occurrence written with exactly the listed characters is left to the main matcher, whose
  allow-lists apply. The sound-alike must stand apart in the dictionary segmentation of its
  sentence (``jieba``): one that straddles a word edge (学校|气氛 holds 校气, 笑气) or is itself one
  word (泛读, 压片) is ordinary text;
* **pinyin spelled in Latin letters** ("bing du", "BingDu", "b.i.n.g.d.u"): toneless, so it is only
  accepted on whole syllables: the span starts and ends at word boundaries and every word boundary
  inside it falls between two syllables of the term ("bin gdu" and "xbingdu" do not match). Two
  toneless syllables in one plain word ("xiaoqi", "zhidu") are as often a name or another word:
  they count only when the syllables are written apart ("bing du", "BingDu");
* **both mixed** ("冰du", "bing毒", "hai洛因"): the Chinese characters by toned reading, the Latin
  words by whole syllables, each part under the rule above for its kind.

Readings come from ``pypinyin``: the term's reading in context, the text's
characters in their most common reading.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import ahocorasick

from vstreamer.errors import ConfigError
from vstreamer.safety.lexicon import Term
from vstreamer.safety.normalize import _SEP, fold, fold_with_map, normalize_short, normalize_with_map
from vstreamer.safety.types import Match

_HAN = re.compile(r"[\u4e00-\u9fff]+")
_UNIT = re.compile(f"([a-z]+)|([\u4e00-\u9fff]+)|([{_SEP}]+)|.", re.S)
_WORD = re.compile(r"[a-z]+")
_GAP = re.compile(f"[{_SEP}]+")
_NOT_LETTER = re.compile("[^a-z]+")
_ASCII_NOT_LETTER = bytes(c for c in range(128) if not 0x61 <= c <= 0x7A)
_TOKEN_BASE = 0xE000
"""Syllable tokens are private-use characters (the text's own ones are blanked first)."""
_PRIVATE_USE = {cp: 0 for cp in range(0xE000, 0xF900)}
_WINDOW = 8
"""Characters on each side of a sound-alike that its sentence's segmentation reads."""
_COMMON = 10
"""Words of the dictionary rarer than this (it lists many, as 想吸) do not hide a sound-alike they overlap."""
_MIXED_MAX_SYLLABLES = 6
"""Longer terms get no mixed keys (a term of n syllables has 2**n - 2 of them)."""


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


@cache
def _segmenter() -> Any:
    """jieba's tokenizer over its default dictionary (once per process: ~0.5 s, ~60 MB)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # jieba 0.42 imports the deprecated pkg_resources
            import jieba
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError("pinyin matching needs jieba: pip install jieba") from exc
    jieba.setLogLevel(logging.WARNING)  # its own stderr handler reports every dictionary load
    tokenizer = jieba.Tokenizer()
    # jieba keeps its dictionary's cache in the shared temp folder and loads what it finds there unchecked: ours
    # goes in the user's own cache folder.
    private = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vstreamer"
    with contextlib.suppress(OSError):
        private.mkdir(mode=0o700, parents=True, exist_ok=True)
        tokenizer.tmp_dir = str(private)
    tokenizer.initialize()
    return tokenizer


def _stands_apart(text: str, s: int, e: int, *, may_be_word: bool = False) -> bool:
    """Whether the Chinese characters ``text[s:e]`` are no part of a common word of the dictionary
    segmentation of their sentence (read ``_WINDOW`` characters each side) and, unless
    ``may_be_word``, are no word of the dictionary themselves."""
    lo, hi = s, e
    while lo > 0 and s - lo < _WINDOW and "\u4e00" <= text[lo - 1] <= "\u9fff":
        lo -= 1
    while hi < len(text) and hi - e < _WINDOW and "\u4e00" <= text[hi] <= "\u9fff":
        hi += 1
    window = text[lo:hi]
    segmenter = _segmenter()
    route: dict[int, tuple[float, int]] = {}
    segmenter.calc(window, segmenter.get_DAG(window), route)  # jieba's cut without HMM
    start, end = s - lo, e - lo
    if not may_be_word and segmenter.FREQ.get(window[start:end]):
        return False  # itself a word (泛读, 压片)
    i = 0
    while i < len(window):
        j = route[i][1] + 1
        if (i < start < j or i < end < j) and segmenter.FREQ.get(window[i:j], 0) >= _COMMON:
            return False  # part of a word around it (学校|气氛)
        i = j
    return True


@dataclass(frozen=True, slots=True)
class _Key:
    term: Term
    syllable_ends: frozenset[int]
    """Offsets in the key (a letter, or a Chinese character's token, each one) where a syllable ends."""
    text: str
    """The term, normalised."""


class PinyinIndex:
    """Finds the terms of opted-in categories written with homophones, in Latin pinyin or both mixed."""

    def __init__(self, terms: Sequence[Term]) -> None:
        p = _pypinyin()
        readings = _char_readings()
        syllables = sorted(set(readings.values()))
        token = {s: chr(_TOKEN_BASE + i) for i, s in enumerate(syllables)}
        self._to_tokens = {ord(c): token[r] for c, r in readings.items()} | _PRIVATE_USE
        self._sounds = ahocorasick.Automaton()
        self._letters = ahocorasick.Automaton()
        self._mixed = ahocorasick.Automaton()
        self._pieces: set[str] = set()
        """Latin spellings of the runs of syllables a mixed key can hold ("bing", "hailuo")."""
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
            if len(text) <= _MIXED_MAX_SYLLABLES:
                for spelled in _mixed_spellings([token[t] for t in toned], plain):
                    ends = [len("".join(spelled[: i + 1])) for i in range(len(spelled))]
                    _add(self._mixed, "".join(spelled), _Key(term, frozenset(ends), text))
                n = len(plain)
                self._pieces.update(
                    "".join(plain[i:j]) for i in range(n) for j in range(i + 1, n + 1) if j - i < n
                )
        for automaton in (self._sounds, self._letters, self._mixed):
            if len(automaton):
                automaton.make_automaton()
        if len(self._sounds):
            _segmenter()  # loaded now rather than by the first message with a sound-alike

    def scan(
        self, text: str, *, at_end: bool = True, normalized: str | None = None, folded: str | None = None
    ) -> list[Match]:
        """Homophone, Latin-pinyin and mixed occurrences in ``text`` (spans in the original text);
        unless ``at_end``, a Latin word touching the end is not reported yet (it may grow).
        ``normalized`` and ``folded``: :func:`normalize_short` and :func:`fold` of ``text``, when
        the caller has them already."""
        if folded is None:
            folded = fold(text)
        return (
            self._homophones(text, normalized)
            + self._latin(text, at_end, folded)
            + self._mixed_hits(text, at_end, folded)
        )

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
        hits = [
            (s, e, key)
            for s, e, key in hits
            if normalized[s:e] != key.text and _stands_apart(normalized, s, e)
        ]
        if not hits:
            return []
        nm = normalize_with_map(text)
        out = []
        for s, e, key in hits:
            os, oe = nm.span(s, e)
            out.append(Match(os, oe, key.term.category, key.term.text, f"pinyin:{key.term.rule}"))
        return out

    def _latin(self, text: str, at_end: bool, folded: str) -> list[Match]:
        if not len(self._letters):
            return []
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
            if len(key.syllable_ends) == 2 and not _written_apart(
                text[os:oe], max(key.syllable_ends), min(key.syllable_ends)
            ):
                continue
            out.append(Match(os, oe, key.term.category, key.term.text, f"pinyin:{key.term.rule}"))
        return out

    def _mixed_hits(self, text: str, at_end: bool, folded: str) -> list[Match]:
        if not len(self._mixed) or folded.isascii() or not self._pieces.intersection(_WORD.findall(folded)):
            return []
        stream, positions, boundaries = self._mixed_stream(folded)
        hits = []
        for end, keys in self._mixed.iter(stream):
            for key in keys:
                s, e = end + 1 - max(key.syllable_ends), end + 1
                if _is_letter(stream[s]) and s > 0 and _is_letter(stream[s - 1]) and s not in boundaries:
                    continue
                if _is_letter(stream[e - 1]):
                    if e < len(stream) and _is_letter(stream[e]) and e not in boundaries:
                        continue
                    if not at_end and positions[e - 1] + 1 == len(folded):
                        continue  # the word may still grow
                if any(b - s not in key.syllable_ends for b in boundaries if s < b < e):
                    continue
                if all(
                    _stands_apart(folded, a, b, may_be_word=True)
                    for a, b in _han_runs(stream, positions, s, e)
                ):
                    hits.append((positions[s], positions[e - 1] + 1, key))
        if not hits:
            return []
        _, starts = fold_with_map(text)
        return [
            Match(starts[s], starts[e - 1] + 1, key.term.category, key.term.text, f"pinyin:{key.term.rule}")
            for s, e, key in hits
        ]

    def _mixed_stream(self, folded: str) -> tuple[str, list[int], set[int]]:
        """Chinese characters as syllable tokens and Latin words as letters, in one string, with
        where each came from and where two Latin words joined by separators meet. Separators
        join; other characters keep the two sides apart."""
        parts: list[str] = []
        positions: list[int] = []
        boundaries: set[int] = set()
        size, prev_latin, gap = 0, False, False
        for m in _UNIT.finditer(folded):
            if m.group(3):
                gap = True
                continue
            piece = m.group(1) or (m.group(2).translate(self._to_tokens) if m.group(2) else "\x00")
            if m.group(1) and prev_latin and gap:
                boundaries.add(size)
            parts.append(piece)
            positions.extend(range(m.start(), m.end()))  # one character for one
            size += len(piece)
            prev_latin, gap = bool(m.group(1)), False
        return "".join(parts), positions, boundaries


def _is_letter(c: str) -> bool:
    return "a" <= c <= "z"


def _han_runs(stream: str, positions: list[int], s: int, e: int) -> Iterator[tuple[int, int]]:
    """The spans (in the folded text) of the runs of Chinese characters in ``stream[s:e]``."""
    i = s
    while i < e:
        if _is_letter(stream[i]):
            i += 1
            continue
        j = i
        while j < e and not _is_letter(stream[j]):
            j += 1
        yield positions[i], positions[j - 1] + 1
        i = j


def _mixed_spellings(tokens: list[str], plain: list[str]) -> Iterator[list[str]]:
    """Each syllable as its token or its Latin spelling, at least one of each kind."""
    n = len(tokens)
    for mask in range(1, 2**n - 1):
        yield [plain[i] if mask >> i & 1 else tokens[i] for i in range(n)]


def _written_apart(original: str, length: int, first: int) -> bool:
    """Whether a two-syllable Latin spelling of ``length`` letters, the first syllable ``first``
    letters long, has its syllables written apart: a separator inside it or a capital starting the
    second one after a small letter ("bing du", "b.i.n.g.d.u", "BingDu"; not "xiaoqi")."""
    if len(original) != length:
        return True
    return original[first].isupper() and original[first - 1].islower()


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

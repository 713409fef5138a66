"""Text normalisation before lexicon matching, with a map back to the original text.

One function defines what "the same word" means for the matcher. It folds, in order:

1. per character (one lookup table built once): ``str.lower``, Unicode NFKC (full-width to
   half-width, compatibility forms, math alphanumerics), case folding, accent stripping,
   traditional to simplified Chinese (OpenCC ``t2s``, single characters), a few Cyrillic and
   Greek look-alike letters; zero-width, format and combining characters are deleted;
2. separator characters between two Chinese characters are removed ("冰 毒", "冰*毒");
3. runs of three or more single Latin letters split by separators are joined ("f.u.c.k");
4. digits and symbols that touch a Latin letter become the letter they imitate ("sh1t", "@ss");
5. runs of one repeated character collapse to one ("fuuuck", "傻傻傻逼"); how long each run was is
   kept so that the matcher can check that a term really had its doubled letters.

:func:`normalize` is the fast path (C-level ``str`` methods and ``re``; numpy arrays for long texts,
see :mod:`vstreamer.safety.vector`); :func:`normalize_with_map`
computes the same string plus, for each output character, the span of original characters it
came from. It is only called when the fast path found a candidate match.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import cache

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# Characters used to split words apart ("冰 毒", "f.u.c.k"); not sentence punctuation, which
# after NFKC is , ! ? ; : and must keep separating words.
_SEP = r"\s*._\-~|/\\·•‧・+=^#'\"`"

_CJK_SEP = re.compile(f"(?<=[{_CJK}])[{_SEP}]+(?=[{_CJK}])")
# A letter of "i'm" or "i'd" is no single letter: joined, "a b i'm going to kill you" read "abim going to kill you".
_NOT_CONTRACTION = "(?<!i'[md])(?!(?<=i)'[md](?![a-z0-9]))"
# The letter comes before the look-behind (which then spans it), so that re skips to letters: 3x faster on Chinese.
_SPACED_LETTERS = re.compile(
    f"[a-z](?<![a-z0-9].){_NOT_CONTRACTION}(?:[{_SEP}]+[a-z]{_NOT_CONTRACTION}){{2,}}(?![a-z0-9])"
)
_SEP_CHARS = re.compile(f"[{_SEP}]+")
_LOOKALIKE_MAP = {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"}
# Written to start with a character class so that re can skip ahead quickly.
_LOOKALIKE = re.compile(r"([013457@$])(?:(?<=[a-z].)|(?=[a-z]))", re.S)
_LOOKALIKE_TABLE = str.maketrans(_LOOKALIKE_MAP)
_REPEAT = re.compile(r"(.)\1+", re.S)
_RUNS = re.compile(r"(.)\1*", re.S)

# Look-alike letters from other scripts that NFKC keeps distinct.
_HOMOGLYPHS = {
    "а": "a", "в": "b", "е": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c",
    "т": "t", "у": "y", "х": "x", "і": "i", "ј": "j", "ѕ": "s", "ԁ": "d", "ɡ": "g", "ο": "o",
    "α": "a", "ν": "v", "ι": "i", "κ": "k", "τ": "t", "ρ": "p", "ε": "e", "υ": "u", "χ": "x",
}  # fmt: skip
# Typographic apostrophes, which NFKC keeps: "I’m" is "i'm", as a term of the lexicon is written.
_APOSTROPHES = {"\u2018": "'", "\u2019": "'", "\u201b": "'", "\u02bc": "'", "\u2032": "'"}
# Invisible characters that are not in a format category.
_INVISIBLE = {0x115F, 0x1160, 0x3164, 0xFFA0, 0x2800, 0x180E, 0x034F}
_T2S_RANGES = ((0x3400, 0xA000), (0xF900, 0xFB00), (0x20000, 0x2FA20))


@dataclass(frozen=True, slots=True)
class NormalizedText:
    """A normalised string and where each of its characters came from."""

    text: str
    """The normalised text (equal to :func:`normalize` of the original)."""
    starts: tuple[int, ...]
    """For each normalised character, the index of its first original character."""
    ends: tuple[int, ...]
    """For each normalised character, one past the index of its last original character."""
    runs: tuple[int, ...]
    """For each normalised character, how many repeated characters it stands for."""

    def span(self, start: int, end: int) -> tuple[int, int]:
        """Map a span of the normalised text to the span of original text it covers."""
        return self.starts[start], self.ends[end - 1]


def _fold_char(c: str, t2s: dict[str, str]) -> str:
    if ord(c) in _INVISIBLE:
        return ""
    t = unicodedata.normalize("NFKC", c).casefold()
    t = "".join(x for x in unicodedata.normalize("NFKD", t) if not unicodedata.combining(x))
    t = unicodedata.normalize("NFC", t)
    out = []
    for x in t:
        cat = unicodedata.category(x)
        if cat in ("Cf", "Mn", "Me"):
            continue
        out.append(_HOMOGLYPHS.get(x) or _APOSTROPHES.get(x) or t2s.get(x, x))
    return "".join(out)


def _t2s_chars() -> dict[str, str]:
    import opencc

    chars = [chr(cp) for lo, hi in _T2S_RANGES for cp in range(lo, hi)]
    converted = opencc.OpenCC("t2s").convert("\n".join(chars)).split("\n")
    if len(converted) != len(chars):  # pragma: no cover - OpenCC keeps line breaks
        return {}
    return {a: b for a, b in zip(chars, converted, strict=True) if a != b and len(b) == 1}


@cache
def char_table() -> dict[int, str]:
    """The per-character fold table (built once per process, ~0.2 s)."""
    t2s = _t2s_chars()
    table: dict[int, str] = {}
    for cp in range(0x30000):
        if 0xD800 <= cp < 0xE000:
            continue
        c = chr(cp)
        if unicodedata.category(c) == "Cn":
            continue
        folded = _fold_char(c, t2s)
        if folded != c:
            table[cp] = folded
    # Make the table idempotent: what it produces must not be folded again.
    for cp, value in list(table.items()):
        for _ in range(3):
            nxt = value.translate(table)
            if nxt == value:
                break
            value = nxt
        table[cp] = value
    # ASCII is handled by str.lower() and the regex stages; keeping it out of the table lets the
    # fast path skip the table for ASCII text.
    return {cp: v for cp, v in table.items() if cp >= 0x80}


def _char_class(codepoints: list[int]) -> str:
    parts: list[str] = []
    start = prev = codepoints[0]
    for cp in [*codepoints[1:], -2]:
        if cp == prev + 1:
            prev = cp
            continue
        parts.append(
            re.escape(chr(start)) if start == prev else f"{re.escape(chr(start))}-{re.escape(chr(prev))}"
        )
        start = prev = cp
    return "".join(parts)


@cache
def _table_run_pattern() -> re.Pattern[str]:
    # Only BMP characters are listed one by one: re tests a BMP class with a bitmap, but walks a
    # list of ranges for astral ones. Every astral character is sent to the table instead (the
    # table leaves characters it does not list unchanged).
    bmp = sorted(cp for cp in char_table() if cp <= 0xFFFF)
    return re.compile(f"[{_char_class(bmp)}\U00010000-\U0010ffff]+")


def _translate_run(m: re.Match[str]) -> str:
    return m.group().translate(char_table())


def _join_letters(m: re.Match[str]) -> str:
    return _SEP_CHARS.sub("", m.group())


def _unlookalike(s: str) -> str:
    """Digits and signs that stand for a letter next to a letter (``h3ll0``) become that letter, one for one.

    ``split`` keeps each matched character between the pieces; they are translated together and put back in
    their places, with no Python call per match (text with many numbers has many)."""
    parts = _LOOKALIKE.split(s)
    if len(parts) == 1:
        return s
    parts[1::2] = "".join(parts[1::2]).translate(_LOOKALIKE_TABLE)
    return "".join(parts)


def fold(text: str) -> str:
    """Only the per-character fold (stage 1): what regular-expression rules match against."""
    s = text.lower()
    return s if s.isascii() else _table_run_pattern().sub(_translate_run, s)


def _before_collapse(text: str) -> str:
    s = text.lower()
    if not s.isascii():
        s = _table_run_pattern().sub(_translate_run, s)
        s = _CJK_SEP.sub("", s)
    s = _SPACED_LETTERS.sub(_join_letters, s)
    return _unlookalike(s)


_SURROGATE = re.compile("[\ud800-\udfff]")


def well_formed(text: str) -> str:
    """``text`` with every lone surrogate (half an emoji from a JSON escape) as U+FFFD, one character for one (so
    spans stay valid): such text cannot be encoded as UTF-8 or UTF-32, which the matchers do."""
    if text.isascii() or _SURROGATE.search(text) is None:
        return text
    return _SURROGATE.sub("\ufffd", text)


VECTOR_MIN_LENGTH = 2000
"""From this length on, :func:`normalize` uses the numpy implementation (:mod:`.vector`)."""


def normalize(text: str) -> str:
    """Normalise ``text`` for matching (fast path, no position map)."""
    if len(text) >= VECTOR_MIN_LENGTH:
        try:
            from vstreamer.safety.vector import normalize_vectorized
        except ImportError:  # pragma: no cover - numpy is not installed
            return normalize_short(text)
        return normalize_vectorized(text)
    return normalize_short(text)


_last_short: tuple[str, str] = ("", "")
"""The last :func:`normalize_short` input and output: a reply's first chunk is asked for twice in a row, by the
output guard and by its leak check (the same string object)."""


def normalize_short(text: str) -> str:
    """:func:`normalize` with ``str`` methods and regular expressions (faster for short texts)."""
    global _last_short
    last = _last_short  # one read: another thread may replace it meanwhile
    if text is last[0]:
        return last[1]
    # split() keeps the captured character of each run between the pieces: joined, each run is
    # one character (no Python call per run, unlike sub() with a function or a template).
    out = "".join(_REPEAT.split(_before_collapse(text)))
    _last_short = (text, out)
    return out


def normalize_runs(text: str) -> tuple[str, tuple[int, ...]]:
    """The normalised text and, per character, the length of the run it collapsed (no span map)."""
    matches = list(_RUNS.finditer(_before_collapse(text)))
    return "".join(m.group(1) for m in matches), tuple(m.end() - m.start() for m in matches)


def _drop(chars: list[str], starts: list[int], ends: list[int], keep: list[bool]) -> None:
    chars[:] = [c for c, k in zip(chars, keep, strict=True) if k]
    starts[:] = [c for c, k in zip(starts, keep, strict=True) if k]
    ends[:] = [c for c, k in zip(ends, keep, strict=True) if k]


@cache
def _irregular() -> tuple[re.Pattern[str], frozenset[int]]:
    """Characters whose fold is not exactly one character (or depends on context: final sigma).

    A text without any of them folds one character to one character, so its map is the identity.
    Code points from U+30000 on have no case mapping and no table entry: they fold to themselves.
    The pattern lists the BMP ones and every astral character (a class with many astral ranges is
    slow, see :func:`_table_run_pattern`); the set holds the astral ones.
    """
    table = char_table()
    irregular = [0x03A3]  # str.lower() turns a final capital sigma into "ς", per character "σ"
    for cp in range(0x30000):
        if 0xD800 <= cp < 0xE000:
            continue
        low = chr(cp).lower()
        if len(low) != 1 or len(table.get(ord(low), low)) != 1:
            irregular.append(cp)
    bmp = [cp for cp in irregular if cp <= 0xFFFF]
    pattern = re.compile(f"[{_char_class(bmp)}\U00010000-\U0010ffff]")
    return pattern, frozenset(cp for cp in irregular if cp > 0xFFFF)


def _folds_one_to_one(text: str) -> bool:
    pattern, astral = _irregular()
    m = pattern.search(text)
    while m is not None:
        if ord(m.group()) <= 0xFFFF or ord(m.group()) in astral:
            return False
        m = pattern.search(text, m.end())
    return True


def fold_is_identity(text: str) -> bool:
    """Whether :func:`fold` turns each character of ``text`` into exactly one character."""
    return text.isascii() or _folds_one_to_one(text)


def fold_with_map(text: str) -> tuple[str, list[int]]:
    """Only the per-character fold (stage 1), and the original index of each output character."""
    if fold_is_identity(text):
        return fold(text), list(range(len(text)))
    table = char_table()
    chars: list[str] = []
    starts: list[int] = []
    for i, c in enumerate(text):
        for low in c.lower():
            for ch in table.get(ord(low), low):
                chars.append(ch)
                starts.append(i)
    return "".join(chars), starts


def normalize_with_map(text: str) -> NormalizedText:
    """Normalise ``text`` and map every output character back to the original text."""
    s, starts = fold_with_map(text)
    ends = [i + 1 for i in starts]
    # Each stage only touches the lists when its pattern occurs: ordinary text costs a few scans.
    if not s.isascii() and _CJK_SEP.search(s):
        chars = list(s)
        keep = [True] * len(chars)
        for m in _CJK_SEP.finditer(s):
            keep[m.start() : m.end()] = [False] * (m.end() - m.start())
        _drop(chars, starts, ends, keep)
        s = "".join(chars)
    if _SPACED_LETTERS.search(s):
        chars = list(s)
        keep = [True] * len(chars)
        for m in _SPACED_LETTERS.finditer(s):
            for j in range(m.start(), m.end()):
                keep[j] = not _SEP_CHARS.fullmatch(s[j])
        _drop(chars, starts, ends, keep)
        s = "".join(chars)
    s = _unlookalike(s)
    if not _REPEAT.search(s):
        return NormalizedText(s, tuple(starts), tuple(ends), (1,) * len(s))
    return _collapse_runs(s, starts, ends)


def normalized_suffix_start(text: str, count: int, folded: str | None = None) -> int:
    """Where in ``text`` the last ``count`` characters of its normalised form begin: the same as
    ``normalize_with_map(text).starts[-count]``, without the map when the text's only
    position-changing step is collapsing repeats (the usual case). ``folded``: :func:`fold` of
    ``text`` when the caller knows it is one character per character."""
    if folded is not None or fold_is_identity(text):
        s = fold(text) if folded is None else folded
        if (s.isascii() or not _CJK_SEP.search(s)) and not _SPACED_LETTERS.search(s):
            s = _unlookalike(s)  # one character for one: positions stay
            i = len(s)
            for _ in range(count):  # each normalised character is one run of equal characters
                c = s[i - 1]
                i -= 1
                while i and s[i - 1] == c:
                    i -= 1
            return i
    return normalize_with_map(text).starts[-count]


def _collapse_runs(s: str, starts: list[int], ends: list[int]) -> NormalizedText:
    # Only the repeated runs are visited; the characters between them are copied by slices.
    out: list[str] = []
    out_starts: list[int] = []
    out_ends: list[int] = []
    runs: list[int] = []
    pos = 0
    for m in _REPEAT.finditer(s):
        a, b = m.span()
        out.append(s[pos : a + 1])
        out_starts += starts[pos : a + 1]
        out_ends += ends[pos:a]
        out_ends.append(ends[b - 1])
        runs += [1] * (a - pos)
        runs.append(b - a)
        pos = b
    out.append(s[pos:])
    out_starts += starts[pos:]
    out_ends += ends[pos:]
    runs += [1] * (len(s) - pos)
    return NormalizedText("".join(out), tuple(out_starts), tuple(out_ends), tuple(runs))

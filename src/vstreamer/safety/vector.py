"""The same normalisation as :mod:`vstreamer.safety.normalize`, vectorised with numpy for long texts.

The text becomes an array of code points and every stage is a handful of array operations:

1. one table lookup folds each character (the per-character table of ``normalize``, with ``str.lower``
   composed in) and tags separators and look-alike digits in the high bits of the same word;
2. separator runs are found from the tagged positions only: a run is dropped when both its
   neighbours are Chinese characters, or when it links single Latin letters into a chain of three
   or more ("f.u.c.k");
3. look-alike digits and symbols next to a Latin letter are replaced;
4. one comparison with the previous kept character collapses repeats, and one boolean compress
   applies every deletion at once.

Neighbours are read before any deletion: a dropped run touches only Chinese characters or single
letters, never a look-alike digit, so no stage changes what another stage sees. Characters that fold
to several characters (ligatures, fractions) are rare; a text holding one is folded by ``str``
methods first. The property tests check that both implementations agree.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

import numpy as np

from vstreamer.safety.normalize import _LOOKALIKE_MAP, _SEP, char_table

_FLAG_SHIFT = 24
_SEP_FLAG = 1
_LOOK_FLAG = 2
_DEL_FLAG = 4
_EXPAND_FLAG = 8
_TAGGED = 1 << _FLAG_SHIFT
_CP_MASK = _TAGGED - 1
_DELETED = _DEL_FLAG << _FLAG_SHIFT
_EXPANDS = _EXPAND_FLAG << _FLAG_SHIFT
_CJK_RANGES = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF))
_UNICODE = 0x110000
_CJK, _LETTER, _ALNUM = 1, 2, 4
_APOSTROPHE = ord("'")

Codes = np.ndarray[Any, np.dtype[np.uint32]]


def _separators() -> list[int]:
    sep = re.compile(f"[{_SEP}]")
    candidates = {c for c in map(chr, range(_UNICODE)) if c.isspace()} | set(_SEP)
    return sorted(ord(c) for c in candidates if sep.fullmatch(c))


@cache
def _tables() -> tuple[Codes, Codes, Codes, np.ndarray[Any, np.dtype[np.uint8]]]:
    """Lookup tables: fold (code point -> tagged folded code point), tag (folded code point ->
    tagged), look-alike (ASCII -> letter) and character classes (Chinese, letter, letter or digit)."""
    tag = np.arange(_UNICODE, dtype=np.uint32)
    tag[_separators()] |= _SEP_FLAG << _FLAG_SHIFT
    tag[[ord(c) for c in _LOOKALIKE_MAP]] |= _LOOK_FLAG << _FLAG_SHIFT
    fold = tag.copy()
    table = char_table()
    changed = set(table) | {cp for cp in range(_UNICODE) if chr(cp).lower() != chr(cp)}
    for cp in changed:
        folded = chr(cp).lower().translate(table)
        fold[cp] = _DELETED if not folded else tag[ord(folded)] if len(folded) == 1 else _EXPANDS
    look = np.arange(128, dtype=np.uint32)
    for k, v in _LOOKALIKE_MAP.items():
        look[ord(k)] = ord(v)
    classes = np.zeros(_UNICODE, dtype=np.uint8)
    for lo, hi in _CJK_RANGES:
        classes[lo : hi + 1] = _CJK
    classes[ord("0") : ord("9") + 1] = _ALNUM
    classes[ord("a") : ord("z") + 1] = _ALNUM | _LETTER
    return fold, tag, look, classes


def _codes(text: str) -> Codes:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def _classes() -> np.ndarray[Any, np.dtype[np.uint8]]:
    return _tables()[3]


def _at(f: Codes, idx: np.ndarray[Any, Any]) -> Codes:
    """f[idx] with 0 (a neutral character) outside the array."""
    inside = (idx >= 0) & (idx < len(f))
    return np.where(inside, f[np.clip(idx, 0, max(len(f) - 1, 0))], 0).astype(np.uint32)


def _folded(text: str) -> tuple[Codes, np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Folded code points (tags cleared), the tagged positions and their flags."""
    fold, tag, _, _ = _tables()
    f = np.take(fold, _codes(text))
    tagged = np.flatnonzero(f >= _TAGGED)
    flags = f[tagged] >> _FLAG_SHIFT
    if (flags >= _DEL_FLAG).any():
        if (flags & _EXPAND_FLAG).any():
            f = tag[_codes(text.lower().translate(char_table()))]
        else:
            f = f[f != _DELETED]
        tagged = np.flatnonzero(f >= _TAGGED)
        flags = f[tagged] >> _FLAG_SHIFT
    f[tagged] &= _CP_MASK
    return f, tagged, flags


def _dropped_runs(f: Codes, seps: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Starts and ends of the separator runs that normalisation deletes."""
    if not len(seps):
        return seps, seps
    breaks = np.flatnonzero(np.diff(seps) != 1)
    starts = seps[np.concatenate(([0], breaks + 1))]
    ends = seps[np.concatenate((breaks, [len(seps) - 1]))] + 1
    classes, n = _classes(), len(f)
    # the runs' neighbours; a run at either end of the text has a neutral one
    left = classes.take(f.take(starts - 1))
    right = classes.take(f.take(ends, mode="clip"))
    if starts[0] == 0:
        left[0] = 0
    if ends[-1] == n:
        right[-1] = 0
    both = left & right
    drop = (both & _CJK) != 0
    # runs between two letters that are single letters (no letter or digit on their other side)
    pairs = np.flatnonzero(both & _LETTER)
    outer = classes.take(f.take(starts[pairs] - 2, mode="clip"))
    pairs = pairs[((outer & _ALNUM) == 0) | (starts[pairs] == 1)]
    outer = classes.take(f.take(ends[pairs] + 1, mode="clip"))
    pairs = pairs[((outer & _ALNUM) == 0) | (ends[pairs] + 1 == n)]
    if len(pairs) and (f.take(seps) == _APOSTROPHE).any():
        contracted = _contraction_letters(f, classes)  # "i'm", "i'd": no single letters
        pairs = pairs[~(np.isin(starts[pairs] - 1, contracted) | np.isin(ends[pairs], contracted))]
    chained = (np.diff(pairs) == 1) & (ends[pairs[:-1]] + 1 == starts[pairs[1:]])
    in_chain = np.zeros(len(pairs), dtype=bool)
    in_chain[:-1] |= chained
    in_chain[1:] |= chained
    drop[pairs[in_chain]] = True
    return starts[drop], ends[drop]


def _contraction_letters(f: Codes, classes: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Where the letters of an "i'm" or "i'd" are (their "m" or "d" followed by no letter or digit)."""
    n = len(f)
    q = np.flatnonzero(f == _APOSTROPHE)
    q = q[(q >= 1) & (q + 1 < n)]
    q = q[(f[q - 1] == ord("i")) & ((f[q + 1] == ord("m")) | (f[q + 1] == ord("d")))]
    after = classes.take(f.take(q + 2, mode="clip"))
    q = q[((after & _ALNUM) == 0) | (q + 2 == n)]
    return np.concatenate((q - 1, q + 1))


def normalize_codes(text: str) -> Codes:
    """The code points of ``normalize(text)``."""
    f, tagged, flags = _folded(text)
    if not len(f):
        return f
    starts, ends = _dropped_runs(f, tagged[(flags & _SEP_FLAG) != 0])
    look = tagged[(flags & _LOOK_FLAG) != 0]
    if len(look):
        near = _classes()[_at(f, look - 1)] | _classes()[_at(f, look + 1)]
        look = look[(near & _LETTER) != 0]
        f[look] = _tables()[2][f[look]]
    keep = np.empty(len(f), dtype=bool)
    keep[0] = True
    np.not_equal(f[1:], f[:-1], out=keep[1:])
    if len(starts):
        # the character after a dropped run follows the character before it
        keep[ends[ends < len(f)]] = f[ends[ends < len(f)]] != f[starts[ends < len(f)] - 1]
        lengths = ends - starts
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        keep[np.repeat(starts, lengths) + offsets] = False
    return f[keep]


def normalize_vectorized(text: str) -> str:
    """``normalize(text)`` computed with numpy (faster from a few thousand characters)."""
    return normalize_codes(text).tobytes().decode("utf-32-le")

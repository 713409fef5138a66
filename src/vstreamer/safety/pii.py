"""Detectors of personal data: phone numbers, Chinese ID numbers, e-mail addresses, bank cards.

They run on the per-character fold of the text (:func:`~vstreamer.safety.normalize.fold`): invisible characters
are dropped and look-alikes (full-width, mathematical digits and letters, ``＠``) become plain ones, so that
``138\\u200b0013\\u200b8000`` is a phone number. When the fold is not one character for one, each span is mapped back
to the original text, covering the invisible characters inside it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

from vstreamer.safety.normalize import fold, fold_is_identity, fold_with_map
from vstreamer.safety.types import Match

CATEGORY = "personal_data"

_PHONE = re.compile(r"(?<![0-9A-Za-z])(?:\+?86[\s-]?)?1[3-9]\d(?:[\s-]?\d){8}(?!\d)")
_ID = re.compile(
    r"(?<!\d)\d{6}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx](?![\dXx])"
)
_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
)
_CARD = re.compile(r"(?<!\d)\d{4}(?:[\s-]?\d){9,15}(?!\d)")

_ELEVEN_DIGITS = re.compile(r"\d(?:[\s\-－]?\d){10}")


def _maybe_pii(text: str) -> bool:
    """Every detector needs an at sign or eleven digits (``\\d``: any script's) with at most one separator between
    two of them (a phone number has eleven, a card thirteen, an ID number eighteen): a reply counting "word0 word1"
    or quoting a price skips all four detectors. ``text`` is folded (full-width signs are plain ones, invisible
    characters gone). The at sign is looked for with ``in``: a pattern that begins with a digit lets re skip to the
    digits, where one that begins with a choice of at sign or digit is tried at every character (2-2.5x slower)."""
    return "@" in text or _ELEVEN_DIGITS.search(text) is not None


_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def _digits(s: str) -> list[int]:
    return [unicodedata.digit(c) for c in s if unicodedata.digit(c, None) is not None]


def cn_id_valid(number: str) -> bool:
    """Checksum of an 18-character resident ID number (GB 11643)."""
    if len(number) != 18:
        return False
    body = _digits(number[:17])
    if len(body) != 17:
        return False
    check = _ID_CHECK[sum(d * w for d, w in zip(body, _ID_WEIGHTS, strict=True)) % 11]
    last = number[17].upper()
    last = str(unicodedata.digit(last)) if unicodedata.digit(last, None) is not None else last
    return last == check


def luhn_valid(number: str) -> bool:
    """Luhn checksum of a card number (separators ignored)."""
    digits = _digits(number)
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


_DETECTORS: tuple[tuple[str, re.Pattern[str], Callable[[str], bool] | None], ...] = (
    ("cn_id", _ID, cn_id_valid),
    ("bank_card", _CARD, luhn_valid),
    ("phone", _PHONE, None),
    ("email", _EMAIL, None),
)


def find_pii(text: str, folded: str | None = None) -> list[Match]:
    """Every personal-data span in ``text``; overlapping detections keep the first detector's.

    ``folded``: :func:`~vstreamer.safety.normalize.fold` of ``text``, when the caller has it (the matcher needs it
    too). Ordinary text costs the screen on it; the map back to ``text`` is only built when a detector may match
    and the fold is not one character for one."""
    if folded is None:
        folded = fold(text)
    if not _maybe_pii(folded):
        return []
    starts: list[int] | None = None
    if not fold_is_identity(text):
        folded, starts = fold_with_map(text)
    out: list[Match] = []
    taken: list[tuple[int, int]] = []
    for kind, pattern, check in _DETECTORS:
        for m in pattern.finditer(folded):
            s, e = m.span()
            if check is not None and not check(m.group()):
                continue
            if any(a < e and s < b for a, b in taken):
                continue
            taken.append((s, e))
            if starts is not None:  # the first and the last character's originals, and all between
                s, e = starts[s], starts[e - 1] + 1
            out.append(Match(s, e, CATEGORY, kind, f"pii:{kind}"))
    return sorted(out, key=lambda m: m.start)

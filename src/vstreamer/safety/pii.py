"""Detectors of personal data: phone numbers, Chinese ID numbers, e-mail addresses, bank cards.

They run on the per-character fold of the text (:func:`~vstreamer.safety.normalize.fold`): invisible characters
are dropped and look-alikes (full-width, mathematical digits and letters, ``＠``) become plain ones, so that
``138\\u200b0013\\u200b8000`` is a phone number; a mobile number is also read with Chinese numerals as digits
(``一三八一二三四五六七八``). When the fold is not one character for one, each span is mapped back to the original
text, covering the invisible characters inside it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterator

from vstreamer.safety.normalize import fold, fold_is_identity, fold_with_map
from vstreamer.safety.types import Match

CATEGORY = "personal_data"

# Phone numbers: a Chinese mobile number (an optional +86, 0086 or 86, bracketed or not, then 1[3-9]: grouped 3-4-4
# by spaces, hyphens, dots or brackets; 1[3-9]d then digits split by single spaces or hyphens; or every digit apart
# by one space), a Chinese landline (0, a 2-3 digit area code, bracketed or not, then 7-8 digits) and an
# international number (+, then 10-15 digits in all, separated by one space, hyphen or dot, brackets allowed: 10 and
# not E.164's 8, for "+1" is agreement in chat; and no date in it). A separator only comes between two digits, one
# of each kind at most, so that each pattern is linear in the text.
_GAP = r"\)?[\s.\-]?\(?"
_PHONE = re.compile(
    r"(?<![0-9A-Za-z+])(?:\(?(?:\+|00)?86\)?[\s.\-]?)?"
    r"(?:\(?1[3-9]\d\)?[\s.\-]?\d{4}[\s.\-]?\d{4}|1[3-9]\d(?:[\s-]?\d){8}|1 [3-9](?: \d){9})(?!\d)"
)
_LANDLINE = re.compile(
    r"(?<![0-9A-Za-z])(?<!\d[.\-])\(?0(?:10|2\d|[3-9]\d{2})\)?[\s.\-]?[2-8]\d{2,3}[\s.\-]?\d{4}(?!\d)"
)
_INTERNATIONAL = re.compile(rf"(?<![0-9A-Za-z+])\+\(?[1-9](?:{_GAP}\d){{9,14}}(?![:：]?\d)")
_DATE = re.compile(r"(?:19|20)\d{2}([.\-/])(?:0?[1-9]|1[0-2])\1(?:0?[1-9]|[12]\d|3[01])(?!\d)")
# An ID number: 18 characters in a row, or grouped 6-8-4 or 6-4-4-4 by single spaces or hyphens.
_ID = re.compile(
    r"(?<!\d)\d{6}[\s-]?(?:18|19|20)\d{2}[\s-]?(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])[\s-]?\d{3}[\dXx](?![\dXx])"
)
_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
)
_CARD = re.compile(r"(?<!\d)\d{4}(?:[\s-]?\d){9,15}(?!\d)")

# Chinese numerals of a mobile number written out ("一三八…", 幺 for 1, 〇, ○ or 零 for 0, the financial 壹贰叁…),
# read as digits one for one (the fold makes traditional forms these: 參 is 参). Only the mobile pattern reads them,
# whose 1[3-9] and eleven digits in a row ordinary text does not have ("一三五我都有空", "二〇二六年", "三百八十一").
NUMERALS = "〇○零一幺二三四五六七八九壹贰叁参肆伍陆柒捌玖"
_NUMERAL_DIGITS = str.maketrans(NUMERALS, "00011234567891233456789")
#: A numeral that belongs to the word beside it rather than to a number: at the start of a run of numerals right after
#: another Han character (张三|一三八…, 周五|一三八…), or at its end right before one (…七八|一直, …七八|一定).
_WORD_NUMERAL_BEFORE = re.compile(rf"(?<=[^\W\d_{NUMERALS}])[{NUMERALS}](?=[\d{NUMERALS}])")
_WORD_NUMERAL_AFTER = re.compile(rf"(?<=[\d{NUMERALS}])[{NUMERALS}](?=[^\W\d_{NUMERALS}])")
_TEN_DIGITS = re.compile(rf"[\d{NUMERALS}](?:[\s.\-－()]{{0,3}}[\d{NUMERALS}]){{9}}")


def _maybe_pii(text: str) -> bool:
    """Every detector needs an at sign or ten digits (``\\d``: any script's, or Chinese numerals) with at most three
    separators or brackets between two of them (a landline or an international number has ten, a mobile number
    eleven, a card thirteen, an ID number eighteen): a reply counting "word0 word1" or quoting a price skips all the
    detectors. ``text`` is folded (full-width signs are plain ones, invisible characters gone). The at sign is
    looked for with ``in``: a pattern that begins with a digit lets re skip to the digits, where one that begins
    with a choice of at sign or digit is tried at every character (2-2.5x slower)."""
    return "@" in text or _TEN_DIGITS.search(text) is not None


_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def _digits(s: str) -> list[int]:
    return [unicodedata.digit(c) for c in s if unicodedata.digit(c, None) is not None]


_ID_SEPARATORS = re.compile(r"[\s\-－]")


def cn_id_valid(number: str) -> bool:
    """Checksum of an 18-character resident ID number (GB 11643); spaces and hyphens between its groups ignored."""
    number = _ID_SEPARATORS.sub("", number)
    if len(number) != 18:
        return False
    body = _digits(number[:17])
    if len(body) != 17:
        return False
    check = _ID_CHECK[sum(d * w for d, w in zip(body, _ID_WEIGHTS, strict=True)) % 11]
    last = number[17].upper()
    last = str(unicodedata.digit(last)) if unicodedata.digit(last, None) is not None else last
    return last == check


def _not_a_date(number: str) -> bool:
    """An international number holds no date (``+1 2024-05-20 2000``)."""
    return _DATE.search(number) is None


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
    ("phone", _LANDLINE, None),
    ("phone", _INTERNATIONAL, _not_a_date),
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
    for kind, (s, e) in _detections(folded):
        if any(a < e and s < b for a, b in taken):
            continue
        taken.append((s, e))
        if starts is not None:  # the first and the last character's originals, and all between
            s, e = starts[s], starts[e - 1] + 1
        out.append(Match(s, e, CATEGORY, kind, f"pii:{kind}"))
    return sorted(out, key=lambda m: m.start)


def _detections(folded: str) -> Iterator[tuple[str, tuple[int, int]]]:
    """Each detector's matches in ``folded``, in order; then mobile numbers with Chinese numerals, read as digits
    (after the others, which see the numerals around a number as they are: "号码一13812345678")."""
    for kind, pattern, check in _DETECTORS:
        for m in pattern.finditer(folded):
            if check is None or check(m.group()):
                yield kind, m.span()
    if folded.isascii():
        return
    digits = folded.translate(_NUMERAL_DIGITS)
    if digits == folded:
        return
    found = {m.span() for m in _PHONE.finditer(digits)}
    # A numeral of a word beside the number read as a digit makes it 12 long ("一三八一二三四五六七八一直没换"): read
    # again with such numerals kept as they are, at the run's start, its end, and both.
    before = [m.start() for m in _WORD_NUMERAL_BEFORE.finditer(folded)]
    after = [m.start() for m in _WORD_NUMERAL_AFTER.finditer(folded)]
    for kept in {tuple(before), tuple(after), (*before, *after)} - {()}:
        chars = list(digits)
        for i in kept:
            chars[i] = folded[i]
        found.update(m.span() for m in _PHONE.finditer("".join(chars)))
    for span in sorted(found):
        yield "phone", span

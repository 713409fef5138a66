"""A compact-alphabet Aho-Corasick automaton over normalised code points (for long texts).

The Rust automaton's cost is one memory access per UTF-8 byte of the text. Chinese characters
take three bytes, so the keys' characters are renumbered by how often they are expected in chat:
ASCII letters, digits and the commonest Chinese characters become one-byte code points, the next
1,920 two-byte ones. Every character that occurs in no key becomes U+0000, which never starts or
continues a match. Offsets come back in characters of the renumbered string, which has exactly one
character per normalised character.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from vstreamer.safety.vector import Codes

_FIRST = " abcdefghijklmnopqrstuvwxyz0123456789"
# Very common characters of Chinese chat (general knowledge, not taken from any data set): they get
# one-byte codes when some key uses them.
_COMMON_ZH = (
    "的一是了我不人在有这个上们来到大为子中你说生年着就那和要她出也得里后自以会家可下而过天去能对"
    "小多然心么之都好看起发当没成只如事把还用样道想作开从无情己面最但现前些所同日手又行意动方它头"
    "长儿回分爱老因很给名间知什两次身被已其进此话常与正感吗呢吧啊哈主播"
)


def _order(keys: Sequence[str]) -> list[str]:
    freq = Counter(ch for key in keys for ch in key)

    def rank(ch: str) -> tuple[int, int]:
        if ch in _FIRST:
            return 0, _FIRST.index(ch)
        if ch in _COMMON_ZH:
            return 1, _COMMON_ZH.index(ch)
        return 2, -freq[ch]

    return sorted(freq, key=rank)


class CodeAutomaton:
    """Finds every (overlapping) occurrence of ``keys`` in an array of normalised code points."""

    def __init__(self, keys: Sequence[str], acrs: Any) -> None:
        self._remap = np.zeros(0x110000, dtype=np.uint32)
        for i, ch in enumerate(_order(keys), 1):
            self._remap[ord(ch)] = i if i < 0xD800 else i + 0x800  # skip the surrogates
        self._rs = acrs.AhoCorasick([self._renumber(_codes(k)) for k in keys])

    def _renumber(self, codes: Codes) -> str:
        return np.take(self._remap, codes).tobytes().decode("utf-32-le")

    def find(self, codes: Codes) -> list[tuple[int, int, int]]:
        """(key index, start, end) of every occurrence, in positions of ``codes``."""
        found: list[tuple[int, int, int]] = self._rs.find_matches_as_indexes(
            self._renumber(codes), overlapping=True
        )
        return found


def _codes(text: str) -> Codes:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)

"""System-prompt leak guard: does a reply reproduce a long span of a protected text?

Texts are compared after normalisation with spaces and punctuation removed, by character n-grams,
so rewording the spacing, case or script does not hide a copy.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from vstreamer.safety.normalize import normalize

_NOT_WORD = re.compile(r"[\W_]+")


def _squash(text: str) -> str:
    return _NOT_WORD.sub("", normalize(text))


class LeakDetector:
    """Finds a contiguous copy of at least ``min_span`` characters of any protected text."""

    def __init__(self, protected: Sequence[str], *, ngram: int = 8, min_span: int = 40) -> None:
        self.ngram = ngram
        self.min_span = max(min_span, ngram)
        self._grams: set[str] = set()
        for text in protected:
            s = _squash(text)
            self._grams.update(s[i : i + ngram] for i in range(len(s) - ngram + 1))

    @property
    def active(self) -> bool:
        return bool(self._grams)

    def longest_copy(self, reply: str) -> int:
        """Length (normalised characters) of the longest span of ``reply`` copied from a protected text."""
        if not self._grams:
            return 0
        s = _squash(reply)
        n, best, run_start = self.ngram, 0, -1
        for i in range(len(s) - n + 1):
            if s[i : i + n] in self._grams:
                if run_start < 0:
                    run_start = i
                best = max(best, i + n - run_start)
            else:
                run_start = -1
        return best

    def leaks(self, reply: str) -> bool:
        return self.longest_copy(reply) >= self.min_span

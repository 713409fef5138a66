"""System-prompt leak guard: does a reply reproduce a long span of a protected text?

Texts are compared after normalisation with spaces and punctuation removed, by character n-grams,
so rewording the spacing, case or script does not hide a copy.

A persona's system prompt is the same for every reply, so the n-grams of each protected text are
computed once and kept in a bounded least-recently-used cache keyed by the text (:class:`GramCache`);
a text seen for the first time (a memory block) is simply computed.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

from vstreamer.safety.normalize import (
    _CJK,
    _SEP,
    VECTOR_MIN_LENGTH,
    fold,
    fold_is_identity,
    fold_with_map,
    normalize,
    normalize_short,
    well_formed,
)

_NOT_WORD = re.compile(r"[\W_]+")
_ASCII_NOT_WORD = bytes(c for c in range(128) if not chr(c).isalnum())
"""The ASCII characters of ``_NOT_WORD``."""


def _squash(text: str) -> str:
    # The long-text path encodes the text as UTF-32: a lone surrogate is read as U+FFFD (both are not word characters).
    s = normalize_short(text) if len(text) < VECTOR_MIN_LENGTH else normalize(well_formed(text))
    if s.isascii():  # the same deletion, as bytes (several times faster)
        return s.encode("ascii").translate(None, _ASCII_NOT_WORD).decode("ascii")
    return _NOT_WORD.sub("", s)


def text_grams(text: str, ngram: int) -> frozenset[str]:
    """The character n-grams of ``text`` after normalisation and squashing."""
    s = _squash(text)
    return frozenset(s[i : i + ngram] for i in range(len(s) - ngram + 1))


class GramCache:
    """A thread-safe LRU of :func:`text_grams`, bounded in entries and in stored n-grams
    (500,000 n-grams take about 50 MB)."""

    def __init__(self, max_entries: int = 256, max_grams: int = 500_000) -> None:
        self.max_entries = max_entries
        self.max_grams = max_grams
        self._items: OrderedDict[tuple[str, int], frozenset[str]] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, text: str, ngram: int) -> frozenset[str]:
        key = (text, ngram)
        with self._lock:
            grams = self._items.get(key)
            if grams is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return grams
            self.misses += 1
        grams = text_grams(text, ngram)  # outside the lock: another thread may compute it too
        if len(grams) > self.max_grams:
            return grams
        with self._lock:
            if key not in self._items:
                self._items[key] = grams
                self._size += len(grams)
            while len(self._items) > self.max_entries or self._size > self.max_grams:
                _, old = self._items.popitem(last=False)
                self._size -= len(old)
        return grams

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._size = 0

    def __len__(self) -> int:
        return len(self._items)


GRAMS = GramCache()
"""The process-wide cache of protected texts' n-grams (they depend on nothing but the text)."""


def _membership(sets: tuple[frozenset[str], ...]) -> Callable[[str], bool]:
    if len(sets) == 1:
        return sets[0].__contains__
    if len(sets) == 2:  # a system prompt and one more block: the usual case
        first, second = sets
        return lambda gram: gram in first or gram in second
    return lambda gram: any(gram in s for s in sets)


class LeakDetector:
    """Finds a contiguous copy of at least ``min_span`` characters of any protected text."""

    def __init__(
        self,
        protected: Sequence[str],
        *,
        ngram: int = 8,
        min_span: int = 40,
        cache: GramCache | None = GRAMS,
    ) -> None:
        self.ngram = ngram
        self.min_span = max(min_span, ngram)
        sets = [cache.get(t, ngram) if cache is not None else text_grams(t, ngram) for t in protected]
        self._sets = tuple(s for s in sets if s)
        self._has = _membership(self._sets)

    @property
    def active(self) -> bool:
        return bool(self._sets)

    def longest_copy(self, reply: str) -> int:
        """Length (normalised characters) of the longest span of ``reply`` copied from a protected text."""
        return self._longest(_squash(reply)) if self._sets else 0

    def _longest(self, s: str) -> int:
        n, has, best, run_start = self.ngram, self._has, 0, -1
        for i in range(len(s) - n + 1):
            if has(s[i : i + n]):
                if run_start < 0:
                    run_start = i
                best = max(best, i + n - run_start)
            else:
                run_start = -1
        return best

    def leaks(self, reply: str) -> bool:
        """Whether ``reply`` holds a copy of at least ``min_span`` characters."""
        if not self._sets:
            return False
        s = _squash(reply)
        # A copy of min_span characters is a run of `need` consecutive protected n-grams, and any
        # `need` consecutive positions hold a multiple of `need`: probing those positions first
        # rules out ordinary replies with a handful of lookups.
        n, has = self.ngram, self._has
        need = self.min_span - n + 1
        last = len(s) - n
        if last + 1 < need or not any(has(s[i : i + n]) for i in range(0, last + 1, need)):
            return False
        return self._longest(s) >= self.min_span


# A cut between text[c-1] and text[c], each of which folds to one character ("y" and "z"), where no normalisation
# step reaches across, so that the squashed text is the squashed text up to the cut followed by the squashed text
# from y on, less y's own part (y is read again as context: lookbehinds and a run of repeats see it). That holds
# when y and z are both "plain" (no separator, no look-alike digit or sign: the steps that join, drop or rewrite
# characters only act on those and on their neighbours; a run of repeats may go on across, and y merges into it),
# or one is a separator and the other a plain character that is neither a Latin letter nor a Chinese one (the
# separators of letter chains and of Chinese words need such letters on both sides). Other scripts, digits,
# punctuation and emoji are plain: a reply in any language has cuts.
_NOT_PLAIN = f"{_SEP}013457@$"
_PLAIN = f"[^{_NOT_PLAIN}]"
_OTHER = f"[^{_NOT_PLAIN}a-z{_CJK}]"
_PAIR = f"{_PLAIN}{_PLAIN}|{_OTHER}[{_SEP}]|[{_SEP}]{_OTHER}"
_LAST_CUT = re.compile(f"(?s:.*)(?={_PAIR})")
"""Matches up to the last y (the greedy ``.*`` backs off from the end)."""


def _last_cut(text: str, after: int) -> int:
    """The last cut position ``c`` in ``text`` with ``c - 1 >= after`` (0 when there is none)."""
    if fold_is_identity(text):  # positions in the folded text are positions in the text
        m = _LAST_CUT.match(fold(text), after)
        return m.end() + 1 if m else 0
    folded, starts = fold_with_map(text)
    end = len(folded)
    while (m := _LAST_CUT.match(folded, 0, end)) is not None:
        y = m.end()
        # y and z are neighbours in the text, and each folds to one character.
        if starts[y] < after:
            return 0
        if (
            starts[y + 1] == starts[y] + 1
            and (y == 0 or starts[y - 1] != starts[y])
            and (y + 2 == len(folded) or starts[y + 2] != starts[y + 1])
        ):
            return starts[y + 1]
        end = y + 1  # look for an earlier one
    return 0


_COMMIT_AFTER = 32
"""Characters after the cut before looking for a new one. Until then each piece squashes the text since the cut
again (at most this many characters and the piece), but the reply's first text (the gateway takes up to 24
characters of a burst for it) finds no cut to look for: that search and its second squash are most of the first
piece's check (7 of 22 µs of the guard's first ``feed``; per piece over a whole reply, no change)."""
_FORCE_AFTER = 320
"""Characters after the cut with no cut among them (a reply of separators, look-alike digits and letters spelled out
one by one: "1 0 1 0", "～～～", "a.b.c") before one is made anyway, so that no reply is squashed again whole per
piece. Such a cut is made ``_FORCE_KEEP`` characters before the end and reads ``_FORCE_CONTEXT`` characters before
it again: exact unless one of those spellings or runs is longer than that on both sides of it."""
_FORCE_KEEP = 64
_FORCE_CONTEXT = 64


class LeakTracker:
    """:class:`LeakDetector` over a growing reply, reading each character a bounded number of times.

    The reply's squashed text is kept up to the last cut: only its last ``ngram - 1`` characters
    and how many protected n-grams in a row end there. Each call squashes the text after that cut
    (usually the end of the last word and the new text) and moves the cut forward. Unlike
    :meth:`LeakDetector.leaks` over a window, a copy of any length is followed across calls, under
    the normalisation of the whole reply.
    """

    def __init__(self, detector: LeakDetector) -> None:
        self.detector = detector
        self._need = detector.min_span - detector.ngram + 1
        self._region = ""
        """The reply since the last cut, after ``_context`` characters from before it."""
        self._context = 0
        self._skip = 0
        """The length of the squashed ``_context`` characters (left out: already counted)."""
        self._tail = ""
        self._run = 0

    def feed(self, text: str) -> bool:
        """Append ``text`` to the reply; True when the reply so far holds a copy."""
        if not self.detector.active or not text:
            return False
        region = self._region = self._region + text
        squashed = _squash(region)[self._skip :]
        # A copy needs `_need` protected n-grams in a row: unless the run before the cut and the
        # n-grams after it could add up to that, there is nothing to count.
        if self._run + len(squashed) >= self._need and self._copies(squashed):
            return True
        size = len(region) - self._context
        cut = _last_cut(region, self._context) if size >= _COMMIT_AFTER else 0
        if cut:
            start = cut - 1
        elif size > _FORCE_AFTER:
            cut = len(region) - _FORCE_KEEP
            start = cut - _FORCE_CONTEXT
        else:
            return False
        skip = len(_squash(region[start:cut]))
        done = min(max(len(squashed) - len(_squash(region[start:])) + skip, 0), len(squashed))
        if done:
            self._run = self._run_at(squashed, done)
            self._tail = (self._tail + squashed[:done])[-(self.detector.ngram - 1) :]
        self._region, self._context, self._skip = region[start:], cut - start, skip
        return False

    def _copies(self, squashed: str) -> bool:
        """Whether ``_need`` protected n-grams in a row end after the cut."""
        n, has, need = self.detector.ngram, self.detector._has, self._need
        s = self._tail + squashed
        end = max(len(self._tail) + 1, n)  # where the first n-gram after the cut ends
        run = self._run
        while run and end <= len(s) and has(s[end - n : end]):  # the run from before the cut
            run, end = run + 1, end + 1
            if run >= need:
                return True
        # Any later run lies after `end`: `need` n-grams in a row include one of every need-th.
        if not any(has(s[e - n : e]) for e in range(end + need - 1, len(s) + 1, need)):
            return False
        run = 0
        for e in range(end, len(s) + 1):
            run = run + 1 if has(s[e - n : e]) else 0
            if run >= need:
                return True
        return False

    def _run_at(self, squashed: str, done: int) -> int:
        """The protected n-grams in a row ending at squashed character ``done - 1``, counted back
        from there (usually one look-up: most n-grams of a reply are not protected)."""
        n, has = self.detector.ngram, self.detector._has
        s = self._tail + squashed
        end, run = len(self._tail) + done, 0
        while end > len(self._tail):
            if end < n:
                return run  # the start of the reply: no n-gram yet, nothing before
            if not has(s[end - n : end]):
                return run
            run, end = run + 1, end - 1
        return run + self._run

"""The streaming output guard: between the LLM's text stream and every client.

It releases text as soon as nothing in it can still turn into a listed term, holding back only the
tail that could: the longest end of the reply that is the beginning of some term (after
normalisation), plus trailing separators, spaced-out single letters and a trailing Latin word or
number (which may still grow into a term, an e-mail or a phone number: the digits or Chinese numerals
of one with the brackets, dots, hyphens, spaces and plus signs between them). Terms split across tokens
are therefore seen whole before any of their characters go out.

Each chunk costs work in proportion to the held tail (bounded: a few hundred characters) and a few released
characters of context, never to the whole reply: the window is normalised once per chunk, each check first tests
whether its pattern can match at all, and the leak guard (:class:`~vstreamer.safety.leak.LeakTracker`) reads each
character about once.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Sequence
from functools import cache, lru_cache

import regex

from vstreamer.safety.audit import LEAK_REASON
from vstreamer.safety.leak import LeakDetector, LeakTracker
from vstreamer.safety.matcher import CompiledLexicon
from vstreamer.safety.normalize import (
    _REPEAT,
    _SEP,
    fold,
    fold_is_identity,
    fold_with_map,
    normalize_short,
    normalized_suffix_start,
)
from vstreamer.safety.pii import NUMERALS
from vstreamer.safety.types import Match, ModerationResult, mask_spans

_CONTEXT = 16
"""Characters of already released text re-read for word boundaries and joined separators (as the model wrote them,
not as masked: a ``*`` is a separator, and the masked words are gone)."""
_TAIL_MAX = 48
"""Longest trailing Latin word / number / spaced letters held back."""
_GROW_MAX = 128
"""Longest stretch of a pattern match (a URL, an id) held back while it may still grow; a longer one is released
masked, up to this much before the end, and the start of it is re-read with what follows (see ``_HEAD``)."""
_HEAD = 32
"""Characters of the start of a pattern match still open where the release stopped, re-read with the next chunk
before the ``_CONTEXT`` characters (so that the rest of a long URL is still seen as one)."""
_STRETCH_MAX = 256
"""Most characters held back as the beginning of a listed term. Normalised, any number of characters can make one
of a term's ("aaaa…", "a-a-a-…" are "a"): held unbounded, a degenerate reply was held whole and re-read with every
chunk. Longer, the start of it is released; a blocked term held that long (an allowed phrase it may grow into, as
"想死" into "想死你了", stretched past this) blocks the reply."""
_PARTIAL_MAX = 24
"""How far back from the end the beginning of a pattern's match is looked for ("qq: 12", "加微信：", "https://赌")."""
_TAIL_PATTERNS = (
    re.compile(f"[{_SEP}]+$"),
    re.compile(r"[a-z0-9._%+\-@:/]+$"),
    re.compile(f"(?<![a-z0-9])[a-z](?:[{_SEP}]+[a-z](?![a-z0-9]))*[{_SEP}]*$"),
    re.compile(rf"[\d{NUMERALS}(+][\d{NUMERALS}\s().+\-]*$"),
)
_WORDISH = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._%+-@:/")
"""The characters of ``_TAIL_PATTERNS[1]``."""


@cache
def separators() -> str:
    """Every character of ``[_SEP]`` (``\\s`` is ``str.isspace``; all of them are in the BMP)."""
    return "".join(c for c in map(chr, range(0x10000)) if c.isspace()) + "*._-~|/\\·•‧・+=^#'\"`"


def _tail_starts(folded: str, floor: int) -> tuple[int | None, ...]:
    """Where each of ``_TAIL_PATTERNS`` first matches at or after ``floor`` (None: nowhere).

    Each pattern is only run when the end of the text allows a match: ordinary text ending in a
    word and a space needs none of them.
    """
    size = len(folded)
    bare = len(folded.rstrip(separators()))  # where the trailing separators begin
    first = max(bare, floor)
    out: list[int | None] = [first if first < size else None]
    last = folded[-2:-1] if folded.endswith("\n") else folded[-1:]  # $ also matches before a final \n
    out.append(_search(1, folded, floor) if last and last in _WORDISH else None)
    letter = folded[bare - 1 : bare]
    before = folded[bare - 2 : bare - 1] if bare > 1 else ""
    maybe = "a" <= letter <= "z" and not (before and before in _WORDISH and before.isalnum())
    out.append(_search(2, folded, floor) if maybe else None)
    out.append(_search(3, folded, floor) if _may_end_a_number(folded) else None)
    return tuple(out)


def _search(i: int, folded: str, floor: int) -> int | None:
    m = _TAIL_PATTERNS[i].search(folded, floor)
    return m.start() if m and m.start() < m.end() else None


_NUMERALS = frozenset(NUMERALS)


def _may_end_a_number(folded: str) -> bool:
    """Whether ``_TAIL_PATTERNS[3]`` can match: the end is a digit or a numeral, or an opening bracket or a plus
    sign, with only signs and spaces after it (an English sentence ending in a full stop needs no search)."""
    rest = folded
    while (shorter := rest.rstrip().rstrip("().+-")) != rest:
        rest = shorter
    last = rest[-1:]
    if last.isdecimal() or last in _NUMERALS:
        return True
    stripped = folded[len(rest) :]  # empty when nothing was stripped
    return "(" in stripped or "+" in stripped


DEFLECTIONS_ZH = (
    "……诶嘿，这个话题{name}就不展开啦，我们聊点别的吧～",
    "……唔，这个不太适合在直播里说呢，换个话题好不好？",
    "……啊，{name}差点说错话了！我们聊点开心的吧～",
)
DEFLECTIONS_EN = (
    "…ah, let's not go there. How about we talk about something else?",
    "…oops, that's not something {name} should say on stream. New topic!",
    "…hmm, I'll skip that one. Ask me something else~",
)

Analyse = Callable[[str, bool, str | None], list[tuple[Match, str]]]
"""(text, at_end, normalize_short(text) or None) -> matches with the effective action
(block / mask / flag)."""
Finalise = Callable[[str, bool, str], ModerationResult]
"""(full reply, blocked, why) -> the result for the store and the audit log."""


def deflection_line(language: str, persona_name: str, seed: str = "") -> str:
    """A short in-character line that ends a blocked reply: Chinese for a "zh…" persona, English for any other (as
    its prompt is)."""
    lines = DEFLECTIONS_ZH if language.lower().startswith("zh") else DEFLECTIONS_EN
    line = lines[zlib.crc32(seed.encode("utf-8")) % len(lines)]
    name = persona_name or ("I" if lines is DEFLECTIONS_EN else "我")
    return line.format(name=name)


class OutputGuard:
    """Moderates one streamed reply; see the module docstring.

    Use ``feed`` for each chunk, ``finish`` at the end; stop generation when ``blocked`` turns true
    and end the reply with ``deflection``.
    """

    def __init__(
        self,
        compiled: CompiledLexicon,
        analyse: Analyse,
        finalise: Finalise,
        *,
        protected_texts: Sequence[str] = (),
        language: str = "zh",
        persona_name: str = "",
        leak_min_span: int = 40,
    ) -> None:
        self._compiled = compiled
        self._analyse = analyse
        self._finalise = finalise
        self._partials = partials_of(compiled)
        self._leak = LeakTracker(LeakDetector(protected_texts, min_span=leak_min_span))
        self._language = language
        self._persona_name = persona_name
        self._released: list[str] = []
        """The released pieces, as shown (masked)."""
        self._unmasked: dict[int, str] = {}
        """The model's own text of the released pieces that were masked (by index): what the verdict is made on."""
        self._context = ""
        """What is re-read before the held text with each chunk, as the model wrote it (unmasked): the start of a
        pattern match still open where the release stopped (``_HEAD`` characters at most), then the last
        ``_CONTEXT`` released characters."""
        self._head = 0
        """The length of that start in ``_context`` (0: none)."""
        self._pending = ""
        self._finished = False
        self._why = ""
        self.blocked = False
        """Once True, the caller stops generation upstream and appends :attr:`deflection`."""
        self.max_held = 0
        """The most characters held back at once (for the benchmark)."""

    @property
    def deflection(self) -> str:
        return deflection_line(self._language, self._persona_name, "".join(self._released))

    @property
    def text(self) -> str:
        """Everything the model produced so far (released or held), before masking."""
        pieces = self._released
        if self._unmasked:
            pieces = [self._unmasked.get(i, piece) for i, piece in enumerate(pieces)]
        return "".join(pieces) + self._pending

    def feed(self, text: str) -> str:
        """Take the next chunk; return the text that is safe to send now (may be empty)."""
        if self.blocked or self._finished or not text:
            return ""
        self._pending += text
        return self._advance(text, final=False)

    def finish(self) -> str:
        """End of the stream: release the held tail (moderated)."""
        if self.blocked or self._finished:
            self._finished = True
            return ""
        out = self._advance("", final=True)
        self._finished = True
        return out

    def result(self) -> ModerationResult:
        """The decision on the whole reply, for the store and the audit log."""
        return self._finalise(self.text, self.blocked, self._why)

    def _block(self, why: str) -> str:
        self.blocked = True
        self._why = why  # the held text stays in self._pending for result(), never released
        return ""

    def _advance(self, new: str, *, final: bool) -> str:
        base = len(self._context)
        t = self._context + self._pending
        normalized = normalize_short(t)
        found = [(m, a) for m, a in self._analyse(t, final, normalized) if m.end > base and a != "flag"]
        hold = len(t) if final else self._hold_point(t, base, normalized)
        blocks = [m for m, action in found if action == "block"]
        for m in blocks:
            if m.end <= hold:
                return self._block(_block_reason(m))
        for m in blocks:
            # Its end is in the tail held back for what it may grow into, an allowed phrase among them ("想死" of
            # "想死你了"): decided when more comes, or at the end; held whole meanwhile, up to a bound.
            if m.start < len(t) - _STRETCH_MAX:
                return self._block(_block_reason(m))
            hold = min(hold, max(base, m.start))
        if self._leak.feed(new):
            return self._block(LEAK_REASON + "reproduces the protected system prompt")
        masks = [(m.start, m.end) for m, action in found if action != "block"]
        if masks and not final:
            # What may still grow is held from its start (a bounded stretch of it): a mask straddling the hold
            # point, and a pattern's match reaching the end (a URL, an id: the next chunk may continue it).
            floor = max(base, len(t) - _GROW_MAX)
            for m, action in found:
                if action != "block" and m.end >= len(t) and m.rule.startswith(_PATTERN_RULES):
                    hold = min(hold, max(floor, m.start))
            for s, e in masks:
                if s < hold < e:
                    hold = max(base, s, min(hold, floor))
        released = mask_spans(t, masks)[base:hold]
        if released:
            if masks:
                self._unmasked[len(self._released)] = t[base:hold]
            self._released.append(released)
            self._reread(t, hold, masks)
        self._pending = t[hold:]
        self.max_held = max(self.max_held, len(self._pending))
        return released

    def _reread(self, t: str, hold: int, masks: list[tuple[int, int]]) -> None:
        """Keep what the next chunk is read after: the last released characters as the model wrote them, and the
        start of a mask still open at the release point, when it begins before them."""
        recent = max(self._head, hold - _CONTEXT)
        open_at = min((s for s, e in masks if s < recent <= hold <= e), default=None)
        head = "" if open_at is None else t[open_at : min(open_at + _HEAD, recent)]
        self._context = head + t[recent:hold]
        self._head = len(head)

    def _hold_point(self, t: str, base: int, normalized: str) -> int:
        identity = fold_is_identity(t)
        folded, starts = (fold(t), range(len(t))) if identity else fold_with_map(t)
        found = _tail_starts(folded, max(0, len(folded) - _TAIL_MAX))
        hold = min([len(t)] + [starts[i] for i in found if i is not None])
        core = len(folded) if found[0] is None else found[0]
        if core == len(folded):
            core_text, n = t, normalized
        elif identity:
            # The trailing separators change nothing before them: their normalised form (repeats
            # collapsed) is the end of the whole text's.
            core_text = t[:core]
            n = normalized[: len(normalized) - len("".join(_REPEAT.split(folded[core:])))]
        else:
            core_text = t[: starts[core]]
            n = normalize_short(core_text)
        # The longest end of the text that is the beginning of a term is held back.
        k = self._compiled.growing_suffix(n)
        if k:
            start = normalized_suffix_start(core_text, k, folded[:core] if identity else None)
            hold = min(hold, max(start, len(t) - _STRETCH_MAX))
        # The beginning of what a pattern may match once more comes ("https://赌" of "https://赌场网站.com", "qq: 12").
        partial = self._partials.start(folded)
        if partial is not None:
            hold = min(hold, starts[partial])
        return max(hold, base)


class _Partials:
    """The lexicon's patterns for partial matching, and the characters a match of one can begin with."""

    def __init__(self, patterns: tuple[str, ...]) -> None:
        try:
            # Joined into one expression unless one has groups (back-references would be renumbered).
            if any(re.compile(p).groups for p in patterns):
                self.patterns = tuple(regex.compile(p) for p in patterns)
            else:
                self.patterns = (regex.compile("|".join(f"(?:{p})" for p in patterns)),) if patterns else ()
        except (re.error, regex.error):  # pragma: no cover - a pattern only the standard module accepts
            self.patterns = ()
        # Once per lexicon (~50 ms for the default one): most ends of a reply hold none of these characters, and the
        # patterns need not be run at all.
        self.starters = frozenset(
            c for p in self.patterns for c in map(chr, range(0x10000)) if p.match(c, partial=True) is not None
        )
        self._starter = (
            re.compile("[" + "".join(re.escape(c) for c in sorted(self.starters)) + "]")
            if self.starters
            else None
        )
        self._pairs: dict[str, bool] = {}
        """Whether a match can begin with these two characters (English has an "h" or a "w" in most words, and an
        "ht" or "ww" in few): learnt as they come."""

    def _may_begin(self, pair: str) -> bool:
        known = self._pairs.get(pair)
        if known is None:
            known = any(p.match(pair, partial=True) is not None for p in self.patterns)
            if len(self._pairs) < 4096:
                self._pairs[pair] = known
        return known

    def start(self, folded: str) -> int | None:
        """Where a match that the end of ``folded`` cuts short begins (None: nowhere)."""
        size = len(folded)
        floor = max(0, size - _PARTIAL_MAX)
        if self._starter is None:
            return None
        for at in self._starter.finditer(folded, floor):
            if at.end() == size or self._may_begin(folded[at.start() : at.start() + 2]):
                break
        else:
            return None
        found: int | None = None
        for pattern in self.patterns:
            pos = floor
            while pos < size and (m := pattern.search(folded, pos, partial=True)) is not None:
                if m.partial:
                    if m.start() < size and (found is None or m.start() < found):
                        found = m.start()
                    break
                pos = max(m.end(), pos + 1)
        return found


@lru_cache(maxsize=64)
def _partials(patterns: tuple[str, ...]) -> _Partials:
    return _Partials(patterns)


def partials_of(compiled: CompiledLexicon) -> _Partials:
    """The partial matcher of a lexicon's patterns, made once per set of patterns (~50 ms: servers make it at start,
    with :func:`warm_up`, so that no reply waits for it)."""
    return _partials(tuple(p.pattern for _, p, _ in compiled._patterns))


def warm_up(compiled: CompiledLexicon) -> None:
    partials_of(compiled)


_PATTERN_RULES = ("pattern:", "pii:")
"""The rules of regular expressions (their matches may grow; a listed term's are held by ``growing_suffix``)."""


def _block_reason(m: Match) -> str:
    """Why a reply was blocked: a listed term is the lexicon's word; what a pattern matched is the reply's own text
    (an id, a number), which the audit log may not keep, so its rule alone says which fired."""
    if m.rule.startswith("pattern:"):
        return f"{m.category} ({m.rule})"
    return f"{m.category}: {m.term} ({m.rule})"

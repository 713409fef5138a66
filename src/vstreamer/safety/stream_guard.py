"""The streaming output guard: between the LLM's text stream and every client.

It releases text as soon as nothing in it can still turn into a listed term, holding back only the
tail that could: the longest end of the reply that is the beginning of some term (after
normalisation), plus trailing separators, spaced-out single letters and a trailing Latin word or
number (which may still grow into a term, an e-mail or a phone number). Terms split across tokens
are therefore seen whole before any of their characters go out.

Each chunk costs work in proportion to the held tail and a few released characters of context,
never to the whole reply: the window is normalised once per chunk, each check first tests whether
its pattern can match at all, and the leak guard (:class:`~vstreamer.safety.leak.LeakTracker`)
reads each character about once.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Sequence
from functools import cache

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
from vstreamer.safety.types import Match, ModerationResult, mask_spans

_CONTEXT = 16
"""Characters of already released text re-read for word boundaries and joined separators."""
_TAIL_MAX = 48
"""Longest trailing Latin word / number / spaced letters held back."""
_TAIL_PATTERNS = (
    re.compile(f"[{_SEP}]+$"),
    re.compile(r"[a-z0-9._%+\-@:/]+$"),
    re.compile(f"(?<![a-z0-9])[a-z](?:[{_SEP}]+[a-z](?![a-z0-9]))*[{_SEP}]*$"),
    re.compile(r"\d[\d\s-]*$"),
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
    out.append(_search(3, folded, floor) if _ends_in_digit(folded) else None)
    return tuple(out)


def _search(i: int, folded: str, floor: int) -> int | None:
    m = _TAIL_PATTERNS[i].search(folded, floor)
    return m.start() if m and m.start() < m.end() else None


def _ends_in_digit(folded: str) -> bool:
    rest = folded
    while (shorter := rest.rstrip().rstrip("-")) != rest:
        rest = shorter
    return rest[-1:].isdecimal()


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
    """A short in-character line that ends a blocked reply."""
    lines = DEFLECTIONS_EN if language.lower().startswith("en") else DEFLECTIONS_ZH
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
        self._leak = LeakTracker(LeakDetector(protected_texts, min_span=leak_min_span))
        self._language = language
        self._persona_name = persona_name
        self._released: list[str] = []
        """The released pieces, as shown (masked)."""
        self._unmasked: dict[int, str] = {}
        """The model's own text of the released pieces that were masked (by index): what the verdict is made on."""
        self._recent = ""
        """The last ``_CONTEXT`` released characters (re-read with each chunk)."""
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
        base = min(len(self._recent), _CONTEXT)
        t = self._recent[len(self._recent) - base :] + self._pending
        normalized = normalize_short(t)
        found = [(m, a) for m, a in self._analyse(t, final, normalized) if m.end > base and a != "flag"]
        hold = len(t) if final else self._hold_point(t, base, normalized)
        blocks = [m for m, action in found if action == "block"]
        for m in blocks:
            if m.end <= hold:
                return self._block(f"{m.category}: {m.term} ({m.rule})")
        for m in blocks:
            # Its end is in the tail held back for what it may grow into, an allowed phrase among them ("想死" of
            # "想死你了"): decided when more comes, or at the end; held whole meanwhile.
            hold = min(hold, max(base, m.start))
        if self._leak.feed(new):
            return self._block(LEAK_REASON + "reproduces the protected system prompt")
        masks = [(m.start, m.end) for m, action in found if action != "block"]
        for s, e in masks:
            if s < hold < e:
                hold = max(base, s)
        released = mask_spans(t, masks)[base:hold]
        if released:
            if masks:
                self._unmasked[len(self._released)] = t[base:hold]
            self._released.append(released)
            self._recent = (self._recent + released)[-_CONTEXT:]
        self._pending = t[hold:]
        self.max_held = max(self.max_held, len(self._pending))
        return released

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
            hold = min(hold, normalized_suffix_start(core_text, k, folded[:core] if identity else None))
        return max(hold, base)

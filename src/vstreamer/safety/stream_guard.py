"""The streaming output guard: between the LLM's text stream and every client.

It releases text as soon as nothing in it can still turn into a listed term, holding back only the
tail that could: the longest end of the reply that is the beginning of some term (after
normalisation), plus trailing separators, spaced-out single letters and a trailing Latin word or
number (which may still grow into a term, an e-mail or a phone number). Terms split across tokens
are therefore seen whole before any of their characters go out.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Sequence

from vstreamer.safety.leak import LeakDetector
from vstreamer.safety.matcher import CompiledLexicon
from vstreamer.safety.normalize import _SEP, fold_with_map, normalize_with_map
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

Analyse = Callable[[str, bool], list[tuple[Match, str]]]
"""(text, at_end) -> matches with the effective action (block / mask / flag)."""
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
        self._leak = LeakDetector(protected_texts, min_span=leak_min_span)
        self._language = language
        self._persona_name = persona_name
        self._emitted = ""
        self._pending = ""
        self._finished = False
        self._why = ""
        self.blocked = False
        """Once True, the caller stops generation upstream and appends :attr:`deflection`."""
        self.max_held = 0
        """The most characters held back at once (for the benchmark)."""

    @property
    def deflection(self) -> str:
        return deflection_line(self._language, self._persona_name, self._emitted)

    @property
    def text(self) -> str:
        """Everything the model produced so far (released or held)."""
        return self._emitted + self._pending

    def feed(self, text: str) -> str:
        """Take the next chunk; return the text that is safe to send now (may be empty)."""
        if self.blocked or self._finished or not text:
            return ""
        self._pending += text
        return self._advance(final=False)

    def finish(self) -> str:
        """End of the stream: release the held tail (moderated)."""
        if self.blocked or self._finished:
            self._finished = True
            return ""
        out = self._advance(final=True)
        self._finished = True
        return out

    def result(self) -> ModerationResult:
        """The decision on the whole reply, for the store and the audit log."""
        return self._finalise(self.text, self.blocked, self._why)

    def _block(self, why: str) -> str:
        self.blocked = True
        self._why = why  # the held text stays in self._pending for result(), never released
        return ""

    def _advance(self, *, final: bool) -> str:
        base = min(len(self._emitted), _CONTEXT)
        t = self._emitted[len(self._emitted) - base :] + self._pending
        found = [(m, a) for m, a in self._analyse(t, final) if m.end > base and a != "flag"]
        for m, action in found:
            if action == "block":
                return self._block(f"{m.category}: {m.term} ({m.rule})")
        if self._leak.active and self._leak.leaks(
            self.text[-(3 * self._leak.min_span + len(self._pending)) :]
        ):
            return self._block("leak: reproduces the protected system prompt")
        hold = len(t) if final else self._hold_point(t, base)
        masks = [(m.start, m.end) for m, _ in found]
        for s, e in masks:
            if s < hold < e:
                hold = max(base, s)
        released = mask_spans(t, masks)[base:hold]
        self._emitted += released
        self._pending = t[hold:]
        self.max_held = max(self.max_held, len(self._pending))
        return released

    def _hold_point(self, t: str, base: int) -> int:
        folded, starts = fold_with_map(t)
        hold = len(t)
        core = len(folded)
        floor = max(0, len(folded) - _TAIL_MAX)
        for i, pattern in enumerate(_TAIL_PATTERNS):
            m = pattern.search(folded, floor)
            if m and m.start() < m.end():
                hold = min(hold, starts[m.start()])
                if i == 0:
                    core = m.start()
        core_text = t[: starts[core]] if core < len(folded) else t
        nm = normalize_with_map(core_text)
        n = nm.text
        for k in range(min(len(n), self._compiled.max_key_length), 0, -1):
            if self._compiled.could_grow(n[len(n) - k :]):
                hold = min(hold, nm.starts[len(n) - k])
                break
        return max(hold, base)

"""Lorebook (world info) model and keyword activation.

A lorebook holds entries of background knowledge; an entry's ``content`` is put into the prompt only
while one of its ``keys`` appears in the recent chat, so the persona "remembers" facts on demand
without paying for them on every turn.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, StringConstraints

from vstreamer.errors import PersonaError
from vstreamer.llm.estimate import typical_tokens
from vstreamer.persona.limits import (
    MAX_LIST_ITEMS,
    MAX_LORE_ENTRIES,
    MAX_LORE_KEYS,
    MAX_REGEX_KEYS,
    MAX_STRING_CHARS,
)
from vstreamer.persona.matching import Matcher, RegexBudget, ScanText, keys_matcher, unsafe_regex_reason

Text = Annotated[str, StringConstraints(max_length=MAX_STRING_CHARS)]
Key = Annotated[str, StringConstraints(max_length=1000)]

#: rounds of recursive scanning (entry content triggering other entries)
MAX_RECURSION_ROUNDS = 3


class LoreEntry(BaseModel):
    """One lorebook entry (Character Card V2/V3 ``character_book.entries[]``)."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    keys: list[Key] = Field(default_factory=list, max_length=MAX_LIST_ITEMS)
    """Any of these found in the scanned chat activates the entry."""
    secondary_keys: list[Key] = Field(default_factory=list, max_length=MAX_LIST_ITEMS)
    """With ``selective``: one of these must be found as well."""
    content: Text
    """Text put into the prompt; may start with V3 ``@@decorator`` lines (see ``prompt_text``)."""
    enabled: bool = True
    insertion_order: int = 100
    """Lower is inserted earlier (higher up in the prompt)."""
    case_sensitive: bool = False
    selective: bool = False
    constant: bool = False
    """Always active (within the token budget)."""
    position: Literal["before_char", "after_char"] = "before_char"
    use_regex: bool = False
    """Keys are regular expressions (``pattern`` or ``/pattern/flags``)."""
    priority: int = 10
    """When over budget, lower priority is dropped first."""
    name: Text = ""
    id: int | Text | None = None
    comment: Text = ""
    extensions: dict[str, Any] = Field(default_factory=dict)
    """Unknown keys, preserved on re-export."""

    @property
    def decorators(self) -> list[str]:
        """The leading V3 ``@@decorator`` lines of ``content`` (without the ``@@``)."""
        return _split_decorators(self.content)[0]

    @property
    def prompt_text(self) -> str:
        """``content`` without its leading decorator lines: what goes into the prompt."""
        return _split_decorators(self.content)[1]


def _split_decorators(content: str) -> tuple[list[str], str]:
    if not content.startswith("@@"):
        return [], content
    lines = content.split("\n")
    count = 0
    while count < len(lines) and lines[count].startswith("@@"):
        count += 1
    # "@@@name" lines are fallbacks of the line above; only primary decorators are reported
    decorators = [line[2:].strip() for line in lines[:count] if not line.startswith("@@@")]
    return decorators, "\n".join(lines[count:]).strip("\n")


@dataclass(frozen=True, slots=True)
class _CompiledEntry:
    index: int
    entry: LoreEntry
    primary: Matcher
    secondary: Matcher | None
    always: bool
    never: bool

    def matches(self, text: ScanText) -> bool:
        if not self.primary(text):
            return False
        return self.secondary is None or self.secondary(text)


def _compile(index: int, entry: LoreEntry) -> _CompiledEntry:
    decorators = {d.split(" ", 1)[0] for d in entry.decorators}
    opts = {"case_sensitive": entry.case_sensitive, "use_regex": entry.use_regex}
    needs_secondary = entry.selective and any(k.strip() for k in entry.secondary_keys)
    forced = "activate" in decorators
    return _CompiledEntry(
        index=index,
        entry=entry,
        primary=keys_matcher(entry.keys, **opts),
        secondary=keys_matcher(entry.secondary_keys, **opts) if needs_secondary else None,
        always=entry.constant or forced,
        never=not entry.enabled
        or not entry.prompt_text.strip()
        or ("dont_activate" in decorators and not forced),
    )


class Lorebook(BaseModel):
    """A character book or world info: entries plus the scanning rules."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    name: Text = ""
    description: Text = ""
    scan_depth: int = Field(4, ge=0, le=1000)
    """How many of the most recent messages are scanned for keys."""
    token_budget: int = Field(512, ge=0)
    """Most tokens the activated entries may use together; 0 means no limit."""
    recursive_scanning: bool = False
    """Activated entries' content may activate further entries (bounded rounds)."""
    entries: list[LoreEntry] = Field(default_factory=list, max_length=MAX_LORE_ENTRIES)
    extensions: dict[str, Any] = Field(default_factory=dict)

    _compiled: tuple[list[LoreEntry], list[_CompiledEntry]] | None = PrivateAttr(default=None)

    def __eq__(self, other: object) -> bool:
        # fields only: the private matcher cache must not make equal books unequal
        if not isinstance(other, Lorebook):
            return NotImplemented
        return type(self) is type(other) and self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]  # mutable model, like BaseModel

    def _matchers(self) -> list[_CompiledEntry]:
        # Cache keyed on the identity of the entries, so model_copy(update={"entries": ...}) or
        # replacing an entry recompiles; editing an entry's fields in place is not supported.
        cached = self._compiled
        entries = self.entries
        if (
            cached is not None
            and len(cached[0]) == len(entries)
            and all(a is b for a, b in zip(cached[0], entries, strict=True))
        ):
            return cached[1]
        compiled = [_compile(i, e) for i, e in enumerate(entries)]
        self._compiled = (list(entries), compiled)
        return compiled

    def activate(
        self, recent: Sequence[str], count_tokens: Callable[[str], int] = typical_tokens
    ) -> list[LoreEntry]:
        """Entries triggered by the last ``scan_depth`` texts of ``recent`` (oldest first), plus constants.

        The result is sorted by ``insertion_order`` and trimmed to ``token_budget``: the lowest
        ``priority`` goes first (ties: highest ``insertion_order``), constants last.
        """
        compiled = [c for c in self._matchers() if not c.never]
        window = list(recent)[-self.scan_depth :] if self.scan_depth else []  # deques too
        base = "\n".join(window)
        active = {c.index: c for c in compiled if c.always}
        budget = RegexBudget()  # one for all the scans: a slow regex key cannot stall the turn
        found = self._scan(compiled, active, ScanText.of(base, budget)) if window else []
        rounds = MAX_RECURSION_ROUNDS if self.recursive_scanning else 0
        while found and rounds > 0:
            rounds -= 1
            extra = "\n".join(c.entry.prompt_text for c in found)
            found = self._scan(compiled, active, ScanText.of(base + "\n" + extra, budget))
        chosen = sorted(active.values(), key=lambda c: (c.entry.insertion_order, c.index))
        return [c.entry for c in self._fit_budget(chosen, count_tokens)]

    @staticmethod
    def _scan(
        compiled: list[_CompiledEntry], active: dict[int, _CompiledEntry], text: ScanText
    ) -> list[_CompiledEntry]:
        found = [c for c in compiled if c.index not in active and c.matches(text)]
        active.update((c.index, c) for c in found)
        return found

    def _fit_budget(
        self, chosen: list[_CompiledEntry], count_tokens: Callable[[str], int]
    ) -> list[_CompiledEntry]:
        """Keep entries in order of preference while they fit: constants, then higher priority,
        then lower insertion_order. An entry too big to fit is skipped, not a reason to stop."""
        if self.token_budget <= 0:
            return chosen
        cost = {c.index: count_tokens(c.entry.prompt_text) for c in chosen}
        if sum(cost.values()) <= self.token_budget:
            return chosen
        preference = sorted(
            chosen, key=lambda c: (not c.always, -c.entry.priority, c.entry.insertion_order, c.index)
        )
        kept: set[int] = set()
        used = 0
        for c in preference:
            if used + cost[c.index] <= self.token_budget:
                kept.add(c.index)
                used += cost[c.index]
        return [c for c in chosen if c.index in kept]


def check_lorebook(book: Lorebook, where: str) -> None:
    """Refuse an imported lorebook whose keys would make every chat turn slow.

    Checked at import rather than in the model, so books stored before these limits still load
    (their unsafe regex keys just never match).
    """
    total = sum(len(e.keys) + len(e.secondary_keys) for e in book.entries)
    if total > MAX_LORE_KEYS:
        raise PersonaError(f"{where}: the lorebook has {total} keys, more than the {MAX_LORE_KEYS} allowed")
    regex_keys = 0
    for i, entry in enumerate(book.entries):
        if not entry.use_regex:
            continue
        for key in (*entry.keys, *entry.secondary_keys):
            if not key.strip():
                continue
            regex_keys += 1
            reason = unsafe_regex_reason(key)
            if reason is not None:
                shown = key if len(key) <= 60 else key[:60] + "..."
                raise PersonaError(f"{where}: lorebook entry {i}: regex key {shown!r} {reason}")
    if regex_keys > MAX_REGEX_KEYS:
        raise PersonaError(
            f"{where}: the lorebook has {regex_keys} regex keys, more than the {MAX_REGEX_KEYS} allowed"
        )

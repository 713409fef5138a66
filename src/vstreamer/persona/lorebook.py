"""Lorebook (world info) model and keyword activation.

A lorebook holds entries of background knowledge; an entry's ``content`` is put into the prompt only
while one of its ``keys`` appears in the recent chat, so the persona "remembers" facts on demand
without paying for them on every turn.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, PrivateAttr, StringConstraints

from vstreamer.errors import PersonaError
from vstreamer.llm.estimate import typical_tokens
from vstreamer.persona.limits import (
    MAX_LIST_ITEMS,
    MAX_LORE_ENTRIES,
    MAX_LORE_KEYS,
    MAX_REGEX_KEYS,
    MAX_STRING_CHARS,
)
from vstreamer.persona.macros import has_macros, render_macros
from vstreamer.persona.matching import (
    Matcher,
    RegexBudget,
    ScanText,
    is_regex_key,
    keys_matcher,
    unsafe_regex_reason,
)

Text = Annotated[str, StringConstraints(max_length=MAX_STRING_CHARS)]
Key = Annotated[str, StringConstraints(max_length=1000)]

#: rounds of recursive scanning (entry content triggering other entries)
MAX_RECURSION_ROUNDS = 3
#: (char, user) name pairs whose macro-filled keys a lorebook keeps compiled (viewers come and go)
MAX_CACHED_NAMES = 8

#: the V3 decorators activation acts on; any other is ignored, and its fallbacks are tried instead
KNOWN_DECORATORS = frozenset({"activate", "dont_activate"})

Names = tuple[str, str]
"""The (char, user) names the ``{{char}}``/``{{user}}`` macros stand for."""


class LoreEntry(BaseModel):
    """One lorebook entry (Character Card V2/V3 ``character_book.entries[]``)."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    keys: list[Key] = Field(default_factory=list, max_length=MAX_LIST_ITEMS)
    """Any of these found in the scanned chat activates the entry. Without ``use_regex``, a key written
    ``/pattern/flags`` is a regex all the same, as in SillyTavern."""
    secondary_keys: list[Key] = Field(default_factory=list, max_length=MAX_LIST_ITEMS)
    """With ``selective``: one of these must be found as well (SillyTavern's ``selectiveLogic`` in
    ``extensions`` may ask for all of them, or for none or not all of them to be found instead)."""
    content: Text
    """Text put into the prompt; may start with V3 ``@@decorator`` lines (see ``prompt_text``)."""
    enabled: bool = True
    insertion_order: int | FiniteFloat = 100
    """Lower is inserted earlier (higher up in the prompt); any number, as in the V3 spec."""
    case_sensitive: bool = False
    selective: bool = False
    constant: bool = False
    """Always active (within the token budget); ignored with ``use_regex``, as the V3 spec says."""
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
        """The leading V3 ``@@decorator`` lines of ``content`` (without the ``@@``), each replaced by
        the first of its ``@@@`` fallbacks that is a KNOWN_DECORATORS one when it is not one itself."""
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
    decorators: list[str] = []
    for line in lines[:count]:
        if not line.startswith("@@@"):
            decorators.append(line[2:].strip())
            continue
        # a fallback of the decorator above, tried top to bottom while that one is unknown here
        fallback = line[3:].strip()
        if decorators and not _known(decorators[-1]) and _known(fallback):
            decorators[-1] = fallback
    return decorators, "\n".join(lines[count:]).strip("\n")


def without_decorators(content: str) -> str:
    """``content`` without its leading V3 decorator lines (what V2 readers should get)."""
    return _split_decorators(content)[1]


def _known(decorator: str) -> bool:
    return decorator.split(" ", 1)[0] in KNOWN_DECORATORS


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


#: ``extensions`` key of SillyTavern's secondary key logic, kept there as its card export does
SELECTIVE_LOGIC = "selectiveLogic"
_AND_ANY, _NOT_ALL, _NOT_ANY, _AND_ALL = 0, 1, 2, 3


def _selective_logic(entry: LoreEntry) -> int:
    value = entry.extensions.get(SELECTIVE_LOGIC)
    if isinstance(value, int) and not isinstance(value, bool) and _AND_ANY <= value <= _AND_ALL:
        return value
    return _AND_ANY  # absent or unknown: the card spec's "any secondary key"


def _secondary_matcher(entry: LoreEntry, names: Names | None) -> Matcher:
    logic = _selective_logic(entry)
    opts = _key_options(entry, names)
    if logic in (_AND_ANY, _NOT_ANY):
        found_any = keys_matcher(entry.secondary_keys, **opts)
        if logic == _AND_ANY:
            return found_any
        return lambda text: not found_any(text)
    each = [keys_matcher([key], **opts) for key in entry.secondary_keys if key.strip()]
    if logic == _AND_ALL:
        return lambda text: all(m(text) for m in each)
    return lambda text: not all(m(text) for m in each)


def _key_options(entry: LoreEntry, names: Names | None) -> dict[str, Any]:
    return {"case_sensitive": entry.case_sensitive, "use_regex": entry.use_regex, "macro_names": names}


def _has_macro_keys(entry: LoreEntry) -> bool:
    return any(has_macros(k) for k in (*entry.keys, *entry.secondary_keys))


def _compile(index: int, entry: LoreEntry, names: Names | None = None) -> _CompiledEntry:
    decorators = {d.split(" ", 1)[0] for d in entry.decorators}
    # V3: with use_regex, ``constant`` and ``secondary_keys`` are ignored
    needs_secondary = entry.selective and not entry.use_regex and any(k.strip() for k in entry.secondary_keys)
    forced = "activate" in decorators
    return _CompiledEntry(
        index=index,
        entry=entry,
        primary=keys_matcher(entry.keys, **_key_options(entry, names)),
        secondary=_secondary_matcher(entry, names) if needs_secondary else None,
        always=(entry.constant and not entry.use_regex) or forced,
        never=not entry.enabled
        or not entry.prompt_text.strip()
        or ("dont_activate" in decorators and not forced),
    )


@dataclass(slots=True)
class _CompiledBook:
    """A lorebook's compiled entries: keys as written, and per recent name pair where keys hold macros."""

    entries: list[LoreEntry]
    as_written: list[_CompiledEntry]
    with_macros: list[int]
    """Indexes of the entries whose keys hold a macro."""
    by_names: dict[Names, list[_CompiledEntry]]
    """Least recently used first."""

    @classmethod
    def of(cls, entries: list[LoreEntry]) -> _CompiledBook:
        compiled = [_compile(i, e) for i, e in enumerate(entries)]
        with_macros = [i for i, e in enumerate(entries) if _has_macro_keys(e)]
        return cls(list(entries), compiled, with_macros, {})

    def holds(self, entries: list[LoreEntry]) -> bool:
        return len(self.entries) == len(entries) and all(
            a is b for a, b in zip(self.entries, entries, strict=True)
        )

    def for_names(self, names: Names | None) -> list[_CompiledEntry]:
        if names is None or not self.with_macros:
            return self.as_written
        compiled = self.by_names.pop(names, None)
        if compiled is None:
            compiled = list(self.as_written)
            for i in self.with_macros:
                compiled[i] = _compile(i, self.entries[i], names)
            if len(self.by_names) >= MAX_CACHED_NAMES:
                del self.by_names[next(iter(self.by_names))]
        self.by_names[names] = compiled
        return compiled


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

    _compiled: _CompiledBook | None = PrivateAttr(default=None)

    def __eq__(self, other: object) -> bool:
        # fields only: the private matcher cache must not make equal books unequal
        if not isinstance(other, Lorebook):
            return NotImplemented
        return type(self) is type(other) and self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]  # mutable model, like BaseModel

    def _matchers(self, names: Names | None) -> list[_CompiledEntry]:
        # Cache keyed on the identity of the entries, so model_copy(update={"entries": ...}) or
        # replacing an entry recompiles; editing an entry's fields in place is not supported.
        cached = self._compiled
        entries = self.entries
        if cached is None or not cached.holds(entries):
            cached = self._compiled = _CompiledBook.of(entries)
        return cached.for_names(names)

    def activate(
        self,
        recent: Sequence[str],
        count_tokens: Callable[[str], int] = typical_tokens,
        *,
        char: str | None = None,
        user: str | None = None,
    ) -> list[LoreEntry]:
        """Entries triggered by the last ``scan_depth`` texts of ``recent`` (oldest first), plus constants.

        With ``recursive_scanning``, the content of active entries (constants too) is scanned as well.
        Given ``char`` and ``user`` (both or neither), the ``{{char}}``/``{{user}}`` macros of keys and
        of scanned content stand for these names; otherwise keys are matched as written.

        The result is sorted by ``insertion_order`` and trimmed to ``token_budget``: the lowest
        ``priority`` goes first (ties: highest ``insertion_order``), constants last.
        """
        if (char is None) != (user is None):
            raise ValueError("activate() takes both char and user, or neither")
        names = None if char is None or user is None else (char, user)
        compiled = [c for c in self._matchers(names) if not c.never]
        window = list(recent)[-self.scan_depth :] if self.scan_depth else []  # deques too
        base = "\n".join(window)
        always = [c for c in compiled if c.always]
        active = {c.index: c for c in always}
        budget = RegexBudget()  # one for all the scans: a slow regex key cannot stall the turn
        found = self._scan(compiled, active, ScanText.of(base, budget)) if window else []
        unscanned = [*always, *found]  # active entries whose content no scan has read yet
        rounds = MAX_RECURSION_ROUNDS if self.recursive_scanning else 0
        while unscanned and rounds > 0:
            rounds -= 1
            extra = "\n".join(c.entry.prompt_text for c in unscanned)
            if names is not None:
                extra = render_macros(extra, char=names[0], user=names[1])
            unscanned = self._scan(compiled, active, ScanText.of(base + "\n" + extra, budget))
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
        for key in (*entry.keys, *entry.secondary_keys):
            if not key.strip() or not is_regex_key(key, entry.use_regex):
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

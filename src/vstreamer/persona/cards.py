"""Character Card V1/V2/V3 <-> Persona mapping.

Nothing is lost on import: card ``extensions`` are kept verbatim, and card fields we have no field
for (V3 ``assets``, ``source``, ``group_only_greetings``...) are parked in
``extensions["vstreamer/card_fields"]`` and put back in place on export. Our own settings (id,
language, sampling) travel in ``extensions["vstreamer"]``.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import ValidationError

from vstreamer.errors import PersonaError
from vstreamer.persona import coerce
from vstreamer.persona.limits import MAX_LORE_ENTRIES, describe_validation_error
from vstreamer.persona.lorebook import Lorebook, LoreEntry
from vstreamer.persona.model import Persona

FIELDS_KEY = "vstreamer/card_fields"
OWN_KEY = "vstreamer"

# card field -> Persona field (plain strings)
_TEXT_FIELDS = {
    "name": "name",
    "nickname": "nickname",
    "description": "description",
    "personality": "personality",
    "scenario": "scenario",
    "first_mes": "greeting",
    "mes_example": "example_dialogue",
    "system_prompt": "system_prompt",
    "post_history_instructions": "post_history_instructions",
    "creator_notes": "creator_notes",
    "creator": "creator",
    "character_version": "character_version",
}
_LIST_FIELDS = {"alternate_greetings": "alternate_greetings", "tags": "tags"}
_DATA_KNOWN = {*_TEXT_FIELDS, *_LIST_FIELDS, "extensions", "character_book"}
# Pygmalion-era V1 names
_V1_ALIASES = {
    "char_name": "name",
    "char_persona": "description",
    "world_scenario": "scenario",
    "char_greeting": "first_mes",
    "example_dialogue": "mes_example",
}
_BOOK_KNOWN = {
    "name",
    "description",
    "scan_depth",
    "token_budget",
    "recursive_scanning",
    "extensions",
    "entries",
}
_ENTRY_KNOWN = set(LoreEntry.model_fields)
#: entry ``extensions`` keys every SillyTavern card export writes; that export also writes
#: ``use_regex: true`` on every entry ("ST keys are always regex"), while SillyTavern matches a key
#: as a regex only in its ``/pattern/flags`` form
_ST_ENTRY_MARKS = ("display_index", "exclude_recursion")


def card_kind(obj: dict[str, Any]) -> Literal["v1", "v2", "v3"] | None:
    """Which card spec a parsed JSON object follows, or None when it is not a card."""
    spec = obj.get("spec")
    if isinstance(obj.get("data"), dict) and isinstance(spec, str):
        if spec == "chara_card_v2":
            return "v2"
        if spec.startswith("chara_card_v"):  # v3 and, leniently, newer
            return "v3"
    if any(k in obj for k in ("first_mes", "mes_example", "char_name", "char_greeting")):
        return "v1"
    return None


def looks_like_card(obj: dict[str, Any]) -> bool:
    """Whether ``obj`` says it is a Character Card V2/V3 (``spec``), even with a broken ``data``."""
    spec = obj.get("spec")
    return isinstance(spec, str) and spec.startswith("chara_card_v")


def persona_from_card(obj: dict[str, Any], where: str) -> Persona:
    """A Persona from a parsed card object (V1, V2 or V3)."""
    kind = card_kind(obj)
    if kind is None and looks_like_card(obj):
        data = obj.get("data")
        shown = "missing" if data is None else f"a {type(data).__name__}"
        raise PersonaError(f"{where}: '{obj['spec']}' card whose 'data' is {shown}, not an object")
    if kind is None:
        raise PersonaError(f"{where}: not a character card (no 'spec' with 'data', nor V1 fields)")
    if kind == "v1":
        data = {
            _V1_ALIASES.get(k, k): v
            for k, v in obj.items()
            if not (k in _V1_ALIASES and _V1_ALIASES[k] in obj)
        }
    else:
        data = obj["data"]
    fields = _persona_fields(data, f"{where}: data" if kind != "v1" else where)
    fields["source_format"] = "chara_card_v3" if kind == "v3" else "chara_card_v2"
    try:
        return Persona.model_validate(fields)
    except ValidationError as exc:
        raise PersonaError(describe_validation_error(exc, where)) from exc


def _persona_fields(data: dict[str, Any], where: str) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for card_key, ours in _TEXT_FIELDS.items():
        fields[ours] = coerce.text(data.get(card_key), f"{where}.{card_key}")
    for card_key, ours in _LIST_FIELDS.items():
        split = card_key == "tags"
        fields[ours] = coerce.text_list(data.get(card_key), f"{where}.{card_key}", split_commas=split)
    if not fields["name"].strip():
        raise PersonaError(f"{where}: the card has no name")
    extensions = coerce.mapping(data.get("extensions"), f"{where}.extensions")
    own = extensions.pop(OWN_KEY, None)
    unknown = {k: v for k, v in data.items() if k not in _DATA_KNOWN}
    if unknown.get("group_only_greetings") == []:
        del unknown["group_only_greetings"]  # the V3 default, written back by V3 export
    if unknown:
        extensions[FIELDS_KEY] = unknown
    fields["extensions"] = extensions
    book = data.get("character_book")
    fields["lorebook"] = None if book is None else lorebook_from_card_book(book, f"{where}.character_book")
    if isinstance(own, dict):
        fields.update({k: own[k] for k in ("id", "language", "sampling") if k in own})
    if "language" not in fields:
        fields["language"] = guess_language(
            " ".join((fields["name"], fields["description"], fields["greeting"]))
        )
    return fields


def lorebook_from_card_book(book: Any, where: str) -> Lorebook:
    """A Lorebook from a card ``character_book`` (V2) or V3 Lorebook object."""
    book = coerce.mapping(book, where)
    raw_entries = book.get("entries")
    if raw_entries is None:
        raw_entries = []
    if not isinstance(raw_entries, list):
        raise PersonaError(f"{where}.entries: expected a list, got {type(raw_entries).__name__}")
    if len(raw_entries) > MAX_LORE_ENTRIES:
        raise PersonaError(f"{where}: {len(raw_entries)} entries, more than the {MAX_LORE_ENTRIES} allowed")
    extensions = coerce.mapping(book.get("extensions"), f"{where}.extensions")
    unknown = {k: v for k, v in book.items() if k not in _BOOK_KNOWN}
    if unknown:
        extensions[FIELDS_KEY] = unknown
    fields = {
        "name": coerce.text(book.get("name"), f"{where}.name"),
        "description": coerce.text(book.get("description"), f"{where}.description"),
        "scan_depth": min(max(coerce.integer(book.get("scan_depth"), f"{where}.scan_depth", 4), 0), 1000),
        "token_budget": max(coerce.integer(book.get("token_budget"), f"{where}.token_budget", 512), 0),
        "recursive_scanning": coerce.boolean(
            book.get("recursive_scanning"), f"{where}.recursive_scanning", False
        ),
        "extensions": extensions,
        "entries": [_entry_fields(e, f"{where}.entries[{i}]") for i, e in enumerate(raw_entries)],
    }
    try:
        return Lorebook.model_validate(fields)
    except ValidationError as exc:
        raise PersonaError(describe_validation_error(exc, where)) from exc


def _entry_fields(entry: Any, where: str) -> dict[str, Any]:
    entry = coerce.mapping(entry, where)
    extensions = coerce.mapping(entry.get("extensions"), f"{where}.extensions")
    unknown = {k: v for k, v in entry.items() if k not in _ENTRY_KNOWN}
    if unknown:
        extensions[FIELDS_KEY] = unknown

    def flag(key: str, default: bool) -> bool:
        return coerce.boolean(entry.get(key), f"{where}.{key}", default)

    use_regex = flag("use_regex", False)
    if use_regex and any(mark in extensions for mark in _ST_ENTRY_MARKS):
        use_regex = False  # read as SillyTavern does: plain keys, and its /slash/ keys as regexes

    def keys(key: str) -> list[str]:
        # V3: a string holds comma-separated keys; a regex may hold commas of its own
        return coerce.text_list(entry.get(key), f"{where}.{key}", split_commas=not use_regex)

    return {
        "keys": keys("keys"),
        "secondary_keys": keys("secondary_keys"),
        "content": coerce.text(entry.get("content"), f"{where}.content"),
        "enabled": flag("enabled", True),
        "insertion_order": coerce.number(entry.get("insertion_order"), f"{where}.insertion_order", 100),
        "case_sensitive": flag("case_sensitive", False),
        "selective": flag("selective", False),
        "constant": flag("constant", False),
        "position": coerce.position(entry.get("position")),
        "use_regex": use_regex,
        "priority": coerce.integer(entry.get("priority"), f"{where}.priority", 10),
        "name": coerce.text(entry.get("name"), f"{where}.name"),
        "id": coerce.entry_id(entry.get("id"), f"{where}.id"),
        "comment": coerce.text(entry.get("comment"), f"{where}.comment"),
        "extensions": extensions,
    }


_KANA = re.compile(r"[\u3040-\u30ff]")
_HANGUL = re.compile(r"[\uac00-\ud7af]")
_HAN = re.compile(r"[\u4e00-\u9fff]")


def guess_language(sample: str) -> str:
    """A rough BCP-47 tag for a card without one: ja, ko, zh or en."""
    sample = sample[:4000]
    if len(_KANA.findall(sample)) >= 5:
        return "ja"
    if len(_HANGUL.findall(sample)) >= 5:
        return "ko"
    han = len(_HAN.findall(sample))
    letters = sum(ch.isalpha() for ch in sample) or 1
    return "zh" if han / letters > 0.3 else "en"


# --- export -------------------------------------------------------------------------------------


def _split_fields(extensions: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    ext = dict(extensions)
    parked = ext.pop(FIELDS_KEY, None)
    if not isinstance(parked, dict):
        if parked is not None:
            ext[FIELDS_KEY] = parked
        parked = {}
    return ext, parked


def book_to_card(book: Lorebook) -> dict[str, Any]:
    """The spec Lorebook object (valid for V2 ``character_book`` and V3)."""
    ext, parked = _split_fields(book.extensions)
    out: dict[str, Any] = {
        "name": book.name,
        "description": book.description,
        "scan_depth": book.scan_depth,
        "token_budget": book.token_budget,
        "recursive_scanning": book.recursive_scanning,
        "extensions": ext,
        "entries": [_entry_to_card(e) for e in book.entries],
    }
    for key, value in parked.items():
        out.setdefault(key, value)
    return out


def _entry_to_card(entry: LoreEntry) -> dict[str, Any]:
    out = entry.model_dump(mode="json")
    if out["id"] is None:
        del out["id"]  # optional in the spec, and a number or string when present
    out["extensions"], parked = _split_fields(entry.extensions)
    for key, value in parked.items():
        out.setdefault(key, value)
    return out


def card_from_persona(p: Persona, spec: Literal["v2", "v3"] = "v2") -> dict[str, Any]:
    """A Character Card V2 or V3 JSON object for the persona."""
    ext, parked = _split_fields(p.extensions)
    ext[OWN_KEY] = {
        "id": p.id,
        "language": p.language,
        "sampling": p.sampling.model_dump(exclude_none=True),
    }
    data: dict[str, Any] = {card: getattr(p, ours) for card, ours in _TEXT_FIELDS.items()}
    if not p.nickname:
        del data["nickname"]
    data.update({card: list(getattr(p, ours)) for card, ours in _LIST_FIELDS.items()})
    data["extensions"] = ext
    if p.lorebook is not None:
        data["character_book"] = book_to_card(p.lorebook)
    for key, value in parked.items():
        data.setdefault(key, value)
    if spec == "v3":
        data.setdefault("group_only_greetings", [])
        return {"spec": "chara_card_v3", "spec_version": "3.0", "data": data}
    return {"spec": "chara_card_v2", "spec_version": "2.0", "data": data}

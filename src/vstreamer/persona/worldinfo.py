"""Standalone lorebooks: SillyTavern World Info exports, V3 ``lorebook_v3`` files, bare books, cards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from vstreamer.errors import PersonaError
from vstreamer.persona import coerce
from vstreamer.persona.cards import card_kind, lorebook_from_card_book, persona_from_card
from vstreamer.persona.files import looks_binary, read_limited
from vstreamer.persona.limits import MAX_LORE_ENTRIES, describe_validation_error, parse_json
from vstreamer.persona.lorebook import Lorebook, check_lorebook

# SillyTavern entry key -> ours; everything else is kept in the entry's extensions
_ST_FIELDS = {
    "key",
    "keysecondary",
    "content",
    "comment",
    "constant",
    "selective",
    "order",
    "position",
    "disable",
    "caseSensitive",
    "uid",
}


def load_lorebook(source: str | Path | bytes, name: str = "") -> Lorebook:
    """Load a lorebook from a path (``str``/``Path``) or from file bytes.

    Accepts a SillyTavern World Info export (``entries`` keyed by uid), a V3 ``lorebook_v3`` file,
    a bare character book, or a character card (JSON/PNG/CHARX) whose ``character_book`` is taken.
    """
    if isinstance(source, bytes):
        data, where = source, name or "lorebook"
    else:
        path = Path(source)
        data, where = read_limited(path), path.name
        name = name or path.stem
    if looks_binary(data):
        from vstreamer.persona.files import load_persona_bytes

        persona = load_persona_bytes(data, where)
        if persona.lorebook is None:
            raise PersonaError(f"{where}: the card has no character_book")
        return persona.lorebook
    obj = parse_json(data, where)
    if not isinstance(obj, dict):
        raise PersonaError(f"{where}: a lorebook must be a JSON object, got {type(obj).__name__}")
    book = lorebook_from_object(obj, where)
    check_lorebook(book, where)
    if name and not book.name:
        book = book.model_copy(update={"name": name})
    return book


def lorebook_from_object(obj: dict[str, Any], where: str) -> Lorebook:
    """A Lorebook from any supported parsed JSON object."""
    if obj.get("spec") == "lorebook_v3":
        return lorebook_from_card_book(obj.get("data"), f"{where}: data")
    if card_kind(obj) is not None:
        persona = persona_from_card(obj, where)
        if persona.lorebook is None:
            raise PersonaError(f"{where}: the card has no character_book")
        return persona.lorebook
    entries = obj.get("entries")
    if isinstance(entries, dict) or (
        isinstance(entries, list) and entries and isinstance(entries[0], dict) and "key" in entries[0]
    ):
        return lorebook_from_world_info(obj, where)
    if isinstance(entries, list):
        return lorebook_from_card_book(obj, where)
    raise PersonaError(f"{where}: not a lorebook (no 'entries')")


def lorebook_from_world_info(obj: dict[str, Any], where: str) -> Lorebook:
    """A Lorebook from SillyTavern's World Info JSON."""
    raw = obj.get("entries")
    items = list(raw.values()) if isinstance(raw, dict) else raw
    if not isinstance(items, list):
        raise PersonaError(f"{where}.entries: expected an object or a list")
    if len(items) > MAX_LORE_ENTRIES:
        raise PersonaError(f"{where}: {len(items)} entries, more than the {MAX_LORE_ENTRIES} allowed")
    entries = [_st_entry(e, f"{where}.entries[{i}]") for i, e in enumerate(items)]
    extensions = {k: v for k, v in obj.items() if k not in ("entries", "name", "description")}
    fields = {
        "name": coerce.text(obj.get("name"), f"{where}.name"),
        "description": coerce.text(obj.get("description"), f"{where}.description"),
        "entries": entries,
        "extensions": extensions,
    }
    try:
        return Lorebook.model_validate(fields)
    except ValidationError as exc:
        raise PersonaError(describe_validation_error(exc, where)) from exc


def _st_entry(entry: Any, where: str) -> dict[str, Any]:
    entry = coerce.mapping(entry, where)

    def flag(key: str) -> bool:
        return coerce.boolean(entry.get(key), f"{where}.{key}", False)

    return {
        "keys": coerce.text_list(entry.get("key"), f"{where}.key", split_commas=True),
        "secondary_keys": coerce.text_list(
            entry.get("keysecondary"), f"{where}.keysecondary", split_commas=True
        ),
        "content": coerce.text(entry.get("content"), f"{where}.content"),
        "comment": coerce.text(entry.get("comment"), f"{where}.comment"),
        "enabled": not flag("disable"),
        "constant": flag("constant"),
        "selective": flag("selective"),
        "case_sensitive": flag("caseSensitive"),
        "insertion_order": coerce.integer(entry.get("order"), f"{where}.order", 100),
        "position": coerce.position(entry.get("position")),
        "id": coerce.entry_id(entry.get("uid"), f"{where}.uid"),
        # SillyTavern's numeric position is kept, as its own card export does
        "extensions": {k: v for k, v in entry.items() if k not in _ST_FIELDS or k == "position"},
    }

"""Regressions from the third review of the persona code."""

from __future__ import annotations

import json
from typing import Any

import pytest

from vstreamer.errors import PersonaError
from vstreamer.persona import export_card_json, load_lorebook, load_persona_bytes


def _st_card(entries: list[dict[str, Any]]) -> bytes:
    card = {
        "spec": "chara_card_v2",
        "spec_version": "2.0",
        "data": {"name": "Mira", "first_mes": "hi", "character_book": {"entries": entries}},
    }
    return json.dumps(card).encode()


def _st_entry(i: int, keys: list[str], **over: Any) -> dict[str, Any]:
    """An entry as SillyTavern's card export writes it: ``use_regex: true`` ("ST keys are always regex")."""
    entry = {
        "id": i,
        "keys": keys,
        "secondary_keys": [],
        "comment": "",
        "content": f"lore {i}",
        "constant": False,
        "selective": True,
        "insertion_order": 100,
        "enabled": True,
        "position": "before_char",
        "use_regex": True,
        "extensions": {"position": 0, "exclude_recursion": False, "display_index": i, "selectiveLogic": 0},
    }
    return {**entry, **over}


def test_sillytavern_export_with_many_plain_keys_imports() -> None:
    entries = [_st_entry(i, [f"place{i}", f"town{i}", f"city{i}"]) for i in range(30)]
    persona = load_persona_bytes(_st_card(entries), "mira.json")  # 90 keys, none of them a regex
    assert persona.lorebook is not None
    assert [e.id for e in persona.lorebook.activate(["we reach town7"])] == [7]


def test_sillytavern_export_keeps_constant_and_secondary_keys() -> None:
    entries = [
        _st_entry(0, [], constant=True),
        _st_entry(1, ["sword"], secondary_keys=["fire"]),
        _st_entry(2, ["/dra(g|k)on/i"]),
    ]
    book = load_persona_bytes(_st_card(entries), "mira.json").lorebook
    assert book is not None
    assert [e.id for e in book.activate(["a sword"])] == [0]
    assert [e.id for e in book.activate(["a fire sword", "a DRAKON"])] == [0, 1, 2]
    again = load_persona_bytes(
        json.dumps(export_card_json(load_persona_bytes(_st_card(entries), "m.json"))).encode(), "m.json"
    )
    assert again.lorebook == book


def test_a_v3_regex_entry_without_sillytavern_marks_stays_a_regex() -> None:
    entry = {
        "keys": ["dra(g|k)on"],
        "content": "x",
        "use_regex": True,
        "extensions": {},
        "enabled": True,
        "insertion_order": 0,
    }
    book = load_persona_bytes(_st_card([entry]), "m.json").lorebook
    assert book is not None and book.entries[0].use_regex
    assert len(book.activate(["drakon"])) == 1


@pytest.mark.parametrize("position", [2, 5])
def test_world_info_chat_side_positions_are_after_char(position: int) -> None:
    wi = {"entries": {"0": {"uid": 0, "key": ["a"], "content": "c", "position": position}}}
    book = load_lorebook(json.dumps(wi).encode(), "w.json")
    assert book.entries[0].position == "after_char"
    assert book.entries[0].extensions["position"] == position


@pytest.mark.parametrize("data", [[1], "x", None, 5])
def test_card_whose_data_is_not_an_object_is_named(data: Any) -> None:
    raw = json.dumps({"spec": "chara_card_v2", "spec_version": "2.0", "data": data}).encode()
    with pytest.raises(PersonaError, match=r"'data'.*object"):
        load_persona_bytes(raw, "c.json")


@pytest.mark.parametrize(("text", "suffix"), [(b"name: 2077\n", ".yaml"), (b"name = 404\n", ".toml")])
def test_a_numeric_name_in_our_format_gets_an_id(text: bytes, suffix: str) -> None:
    persona = load_persona_bytes(text, "p" + suffix)
    assert persona.id == persona.name

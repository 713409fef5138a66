"""Character cards: V1/V2/V3 JSON, PNG (chara/ccv3, tEXt/zTXt/iTXt), CHARX, export round trips."""

from __future__ import annotations

import base64
import json
import zlib
from pathlib import Path
from typing import Any

import pytest

from tests.persona.conftest import CardKit
from vstreamer.errors import PersonaError
from vstreamer.persona import Persona, export_card_json, export_card_png, load_persona, load_persona_bytes
from vstreamer.persona.cards import FIELDS_KEY
from vstreamer.persona.png import iter_chunks, read_card_chunks, tiny_png


def _as_json(card: dict[str, Any], name: str = "card.json") -> Persona:
    return load_persona_bytes(json.dumps(card, ensure_ascii=False).encode("utf-8"), name)


def _same_persona(a: Persona, b: Persona) -> bool:
    fields = {"source_format"}
    return a.model_dump(exclude=fields) == b.model_dump(exclude=fields)


def test_v2_json_maps_every_field(cardkit: type[CardKit]) -> None:
    p = _as_json(cardkit.v2())
    assert (p.id, p.name, p.source_format, p.language) == ("aria", "Aria", "chara_card_v2", "en")
    assert p.greeting == "Hello {{user}}!"
    assert p.alternate_greetings == ["Welcome back, {{User}}."]
    assert p.example_dialogue.startswith("<START>")
    assert p.system_prompt == "{{original}} Play {{char}}."
    assert p.post_history_instructions == "Stay in character."
    assert p.creator_notes == "Only for humans."
    assert (p.tags, p.creator, p.character_version) == (["bard", "fantasy"], "tester", "2.1")
    assert p.extensions["acme/voice"] == {"pitch": 3, "nested": [1, {"a": None}]}
    assert p.render(p.description, "Bob") == "Aria is a bard who sings to Bob."
    book = p.lorebook
    assert book is not None and (book.name, book.scan_depth, book.token_budget) == ("Aria book", 2, 400)
    entry = book.entries[0]
    assert (entry.keys, entry.insertion_order, entry.id) == (["lute"], 5, 7)
    assert entry.extensions == {"acme/entry": 1, FIELDS_KEY: {"x_custom_field": "kept"}}


def test_v2_round_trip_keeps_unknown_fields(cardkit: type[CardKit]) -> None:
    card = cardkit.v2(x_app_field={"a": 1})
    first = _as_json(card)
    exported = export_card_json(first)
    assert exported["spec"] == "chara_card_v2" and exported["spec_version"] == "2.0"
    data = exported["data"]
    assert data["x_app_field"] == {"a": 1}
    assert data["extensions"]["acme/voice"] == card["data"]["extensions"]["acme/voice"]
    assert data["character_book"]["entries"][0]["x_custom_field"] == "kept"
    assert data["character_book"]["entries"][0]["extensions"] == {"acme/entry": 1}
    assert FIELDS_KEY not in data["extensions"]
    assert _as_json(exported) == first


def test_our_settings_travel_in_the_vstreamer_extension(cardkit: type[CardKit]) -> None:
    p = _as_json(cardkit.v2()).model_copy(update={"id": "my-aria", "language": "zh-CN"})
    p = p.model_copy(update={"sampling": p.sampling.model_copy(update={"temperature": 0.3})})
    again = _as_json(export_card_json(p))
    assert (again.id, again.language, again.sampling.temperature) == ("my-aria", "zh-CN", 0.3)
    assert "vstreamer" not in again.extensions


def test_v1_card(cardkit: type[CardKit]) -> None:
    v1 = {
        k: cardkit.v2()["data"][k]
        for k in ("name", "description", "personality", "scenario", "first_mes", "mes_example")
    }
    p = _as_json(v1)
    assert p.name == "Aria" and p.greeting == "Hello {{user}}!" and p.lorebook is None


def test_pygmalion_style_v1() -> None:
    p = _as_json({"char_name": "Pyg", "char_persona": "old school", "char_greeting": "Hi"})
    assert (p.name, p.description, p.greeting) == ("Pyg", "old school", "Hi")


def test_v3_json(cardkit: type[CardKit]) -> None:
    card = cardkit.v3()
    card["data"]["character_book"]["entries"][0]["use_regex"] = True
    card["data"]["character_book"]["entries"][0]["keys"] = ["/lut(e|es)/i"]
    p = _as_json(card)
    assert p.source_format == "chara_card_v3"
    assert p.nickname == "Ari" and p.render("{{char}}", "u") == "Ari"
    parked = p.extensions[FIELDS_KEY]
    assert parked["group_only_greetings"] == ["Hi all!"] and parked["creation_date"] == 1700000000
    assert p.lorebook is not None and p.lorebook.entries[0].use_regex
    assert p.lorebook.activate(["She plays LUTES"]) != []
    out = export_card_json(p, "v3")
    assert out["spec"] == "chara_card_v3" and out["spec_version"] == "3.0"
    assert out["data"]["assets"] == card["data"]["assets"]
    assert out["data"]["nickname"] == "Ari"
    assert _as_json(out) == p


def test_v3_export_always_has_group_only_greetings() -> None:
    out = export_card_json(Persona(name="Solo"), "v3")
    assert out["data"]["group_only_greetings"] == []
    back = _as_json(out)
    assert FIELDS_KEY not in back.extensions


def test_cross_format_round_trip(cardkit: type[CardKit]) -> None:
    original = _as_json(cardkit.v3())
    via_v2 = _as_json(export_card_json(original, "v2"))
    assert _same_persona(via_v2, original)


def test_newer_v3_spec_version_is_accepted(cardkit: type[CardKit]) -> None:
    card = cardkit.v3()
    card["spec_version"] = "3.5"
    assert _as_json(card).name == "Aria"


def test_lenient_real_world_types(cardkit: type[CardKit]) -> None:
    card = cardkit.v2(tags="a, b", alternate_greetings=None, creator=None, character_version=3)
    entry = card["data"]["character_book"]["entries"][0]
    entry.update(keys="lute", insertion_order="12", priority=None, enabled=1, position=1, id=None)
    p = _as_json(card)
    assert p.tags == ["a", "b"] and p.alternate_greetings == [] and p.character_version == "3"
    assert p.lorebook is not None
    e = p.lorebook.entries[0]
    assert (e.keys, e.insertion_order, e.priority, e.enabled, e.position) == (
        ["lute"],
        12,
        10,
        True,
        "after_char",
    )


@pytest.mark.parametrize(
    ("patch", "where"),
    [
        ({"name": ""}, "no name"),
        ({"name": ["x"]}, "data.name"),
        ({"tags": {"a": 1}}, "data.tags"),
        ({"extensions": [1]}, "data.extensions"),
        ({"character_book": "book"}, "character_book"),
        ({"character_book": {"entries": {"a": 1}}}, "character_book.entries"),
        (
            {"character_book": {"entries": [{"keys": ["a"], "content": "b", "insertion_order": "soon"}]}},
            "insertion_order",
        ),
        ({"character_book": {"entries": [{"keys": ["a"], "content": "b", "enabled": "maybe"}]}}, "enabled"),
        ({"character_book": {"entries": [42]}}, r"entries\[0\]"),
    ],
)
def test_wrong_types_are_named(cardkit: type[CardKit], patch: dict[str, Any], where: str) -> None:
    with pytest.raises(PersonaError, match=where):
        _as_json(cardkit.v2(**patch))


def test_lorebook_json_is_not_a_persona() -> None:
    with pytest.raises(PersonaError, match="load_lorebook"):
        _as_json({"spec": "lorebook_v3", "data": {"entries": []}})


# --- PNG -------------------------------------------------------------------------------------------


def test_seraphina_png(seraphina_path: Path) -> None:
    p = load_persona(seraphina_path)
    assert (p.name, p.id, p.source_format, p.language) == ("Seraphina", "seraphina", "chara_card_v2", "en")
    assert p.greeting.startswith("*You wake with a start")
    assert p.creator == "OtisAlejandro"
    assert p.extensions["world"] == "Eldoria"
    assert p.lorebook is not None and len(p.lorebook.entries) == 4
    assert p.lorebook.name == "Eldoria"
    assert p.avatar_png is not None
    assert read_card_chunks(p.avatar_png) == {}  # the avatar is the image without its card
    hits = p.lorebook.activate(["*I look at the shadowfang tracks*"])
    assert [e.id for e in hits] == [1]


def test_seraphina_png_round_trip(seraphina_path: Path) -> None:
    first = load_persona(seraphina_path)
    png = export_card_png(first)
    chunks = read_card_chunks(png)
    assert set(chunks) == {"chara", "ccv3"}
    v2 = json.loads(base64.b64decode(chunks["chara"]))
    assert v2["spec"] == "chara_card_v2" and v2["data"]["character_book"]["name"] == "Eldoria"
    again = load_persona_bytes(png, "out.png")
    assert again.source_format == "chara_card_v3"  # both chunks written; ccv3 wins
    assert _same_persona(again, first)
    assert again.avatar_png == first.avatar_png


def test_png_ccv3_wins_over_chara(cardkit: type[CardKit]) -> None:
    png = cardkit.card_png(chara=cardkit.v2("Old"), ccv3=cardkit.v3("New"))
    p = load_persona_bytes(png, "both.png")
    assert (p.name, p.source_format) == ("New", "chara_card_v3")
    assert load_persona_bytes(cardkit.card_png(chara=cardkit.v2("Old")), "a.png").name == "Old"


def test_png_ztxt_and_itxt_chunks(cardkit: type[CardKit]) -> None:
    payload = cardkit.b64(cardkit.v2("Zed")).encode()
    ztxt = cardkit.chunk(b"zTXt", b"chara\0\0" + zlib.compress(payload))
    assert load_persona_bytes(cardkit.png(ztxt), "z.png").name == "Zed"
    itxt = cardkit.chunk(b"iTXt", b"chara\0\1\0\0\0" + zlib.compress(payload))
    assert load_persona_bytes(cardkit.png(itxt), "i.png").name == "Zed"
    raw = json.dumps(cardkit.v2("星")).encode("utf-8")
    itxt_plain = cardkit.chunk(b"iTXt", b"chara\0\0\0\0\0" + raw)
    assert load_persona_bytes(cardkit.png(itxt_plain), "r.png").name == "星"


@pytest.mark.parametrize("name", ["Zoë", "Renée", "Björk", "MÃ¼ller", "小星 Zoë"])
@pytest.mark.parametrize("compressed", [False, True])
def test_png_itxt_raw_json_is_utf8_as_it_is(cardkit: type[CardKit], name: str, compressed: bool) -> None:
    """iTXt text is UTF-8 already: not re-encoded as Latin-1 (which refused 'Zoë' and turned 'MÃ¼ller'
    into 'Müller'). tEXt carrying the same UTF-8 bytes reads the same."""
    raw = json.dumps(cardkit.v2(name), ensure_ascii=False).encode("utf-8")
    body = zlib.compress(raw) if compressed else raw
    itxt = cardkit.chunk(b"iTXt", b"chara\0" + bytes([int(compressed), 0]) + b"\0\0" + body)
    assert load_persona_bytes(cardkit.png(itxt), "i.png").name == name
    text = cardkit.chunk(b"tEXt", b"chara\0" + raw)
    assert load_persona_bytes(cardkit.png(text), "t.png").name == name


@pytest.mark.parametrize(
    "broken_chara",
    [b"zTXt:chara\0\0not zlib", b"zTXt:chara\0\1unknown method", b"iTXt:chara\0\0", b"tEXt:chara\0@@@"],
)
def test_png_broken_chara_does_not_matter_next_to_a_good_ccv3(
    cardkit: type[CardKit], broken_chara: bytes
) -> None:
    """V3: "ccv3" wins when both are there, so the V2 copy is not even decoded."""
    kind, data = broken_chara.split(b":", 1)
    ccv3 = cardkit.text_chunk("ccv3", cardkit.b64(cardkit.v3("New")))
    for chunks in ((cardkit.chunk(kind, data), ccv3), (ccv3, cardkit.chunk(kind, data))):
        p = load_persona_bytes(cardkit.png(*chunks), "both.png")
        assert (p.name, p.source_format) == ("New", "chara_card_v3")


def test_png_without_card(cardkit: type[CardKit]) -> None:
    with pytest.raises(PersonaError, match="no character card"):
        load_persona_bytes(cardkit.png(cardkit.text_chunk("Comment", "hello")), "plain.png")


def test_export_png_of_a_yaml_persona_uses_a_generated_image() -> None:
    p = Persona(name="小星", greeting="你好")
    png = export_card_png(p)
    assert [c.type for c in iter_chunks(png)][0] == b"IHDR"
    again = load_persona_bytes(png, "x.png")
    assert again.name == "小星" and again.id == p.id and again.avatar_png == tiny_png()


def test_export_png_onto_a_given_image(cardkit: type[CardKit]) -> None:
    old = cardkit.card_png(chara=cardkit.v2("Stale"))
    png = export_card_png(Persona(name="Fresh"), image_png=old)
    assert load_persona_bytes(png, "x.png").name == "Fresh"
    with pytest.raises(PersonaError, match="PNG"):
        export_card_png(Persona(name="Fresh"), image_png=b"GIF89a")


# --- CHARX -----------------------------------------------------------------------------------------


def test_charx_with_embedded_icon(cardkit: type[CardKit]) -> None:
    card = cardkit.v3()
    card["data"]["assets"] = [
        {"type": "icon", "uri": "embeded://assets/icon/images/main.png", "name": "main", "ext": "png"},
        {
            "type": "emotion",
            "uri": "embeded://assets/emotion/images/happy.png",
            "name": "happy",
            "ext": "png",
        },
    ]
    icon = tiny_png((1, 2, 3, 255))
    data = cardkit.charx(
        {
            "card.json": json.dumps(card).encode(),
            "assets/icon/images/main.png": icon,
            "assets/emotion/images/happy.png": tiny_png(),
            "x_app.json": b"{}",
        }
    )
    p = load_persona_bytes(data, "aria.charx")
    assert (p.name, p.source_format, p.avatar_png) == ("Aria", "chara_card_v3", icon)
    # only the icon's bytes are kept: embedded assets are left out of exports (as the V3 spec asks of
    # asset data not saved), but a card PNG's main icon is the PNG itself
    assert p.extensions["vstreamer/card_fields"]["assets"] == card["data"]["assets"]
    assert export_card_json(p, "v3")["data"]["assets"] == []
    v3 = json.loads(base64.b64decode(read_card_chunks(export_card_png(p))["ccv3"]))
    assert v3["data"]["assets"] == [{**card["data"]["assets"][0], "uri": "ccdefault:"}]


def test_charx_without_icon(cardkit: type[CardKit]) -> None:
    p = load_persona_bytes(cardkit.charx({"card.json": json.dumps(cardkit.v3()).encode()}), "a.charx")
    assert p.avatar_png is None


def test_charx_needs_card_json(cardkit: type[CardKit]) -> None:
    with pytest.raises(PersonaError, match="card.json"):
        load_persona_bytes(cardkit.charx({"other.json": b"{}"}), "a.charx")

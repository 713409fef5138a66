"""Regressions for bugs a review reproduced: CHARX directory, card fields, PNG text, lorebook matching."""

from __future__ import annotations

import base64
import json
import logging
import struct
import zipfile
import zlib
from typing import Any

import pytest

from vstreamer.errors import PersonaError
from vstreamer.persona import (
    Lorebook,
    LoreEntry,
    export_card_json,
    export_card_png,
    load_lorebook,
    load_persona_bytes,
)
from vstreamer.persona.limits import MAX_TEXT_BYTES
from vstreamer.persona.lorebook import MAX_CACHED_NAMES
from vstreamer.persona.png import read_card_chunks, tiny_png

# --- CHARX central directory -----------------------------------------------------------------------

_CENTRAL_RECORD = struct.pack(
    "<4s4H2H3L5HLL", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0
)


def _directory_only(records: int, declared: int) -> bytes:
    """A zip that is nothing but a central directory of ``records`` one-letter members."""
    directory = (_CENTRAL_RECORD + b"a") * records
    eocd = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, declared, declared, len(directory), 0, 0)
    return directory + eocd


def _with_zip64_end(data: bytes, entries: int) -> bytes:
    """``data`` (a zip) with a ZIP64 end record saying ``entries``, as writers of big archives add it."""
    eocd = data.rfind(b"PK\x05\x06")
    _, _, _, _, _, size, offset, _ = struct.unpack("<4s4H2LH", data[eocd : eocd + 22])
    zip64 = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries, size, offset)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, eocd, 1)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return data[:eocd] + zip64 + locator + end


def _forbid_zip_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the central directory was parsed before the size checks")

    monkeypatch.setattr(zipfile, "ZipFile", refuse)


def test_charx_many_declared_members_refused_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    _forbid_zip_parsing(monkeypatch)
    with pytest.raises(PersonaError, match="1000"):
        load_persona_bytes(_directory_only(5000, 0xFFFF), "many.charx")


def test_charx_oversized_central_directory_refused_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    _forbid_zip_parsing(monkeypatch)
    # the entry count lies (1), the directory size does not
    with pytest.raises(PersonaError, match="central directory"):
        load_persona_bytes(_directory_only(20_000, 1), "big.charx")


def test_charx_zip64_member_count_refused_before_parsing(
    cardkit: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = cardkit.charx({"card.json": json.dumps(cardkit.v3()).encode()})
    _forbid_zip_parsing(monkeypatch)
    with pytest.raises(PersonaError, match="1000"):
        load_persona_bytes(_with_zip64_end(data, 10**6), "many64.charx")


def test_charx_with_zip64_end_record_still_loads(cardkit: Any) -> None:
    data = cardkit.charx({"card.json": json.dumps(cardkit.v3()).encode()})
    assert load_persona_bytes(_with_zip64_end(data, 1), "a64.charx").name == "Aria"


# --- card fields -----------------------------------------------------------------------------------


def _card_with_entry(**entry: Any) -> bytes:
    book = {"extensions": {}, "entries": [{"content": "LORE", "enabled": True, "extensions": {}, **entry}]}
    data = {"name": "Bob", "group_only_greetings": [], "character_book": book}
    return json.dumps({"spec": "chara_card_v3", "spec_version": "3.0", "data": data}).encode()


def test_card_keys_given_as_comma_string_are_split() -> None:
    card = _card_with_entry(keys="dragon, wyrm", secondary_keys="tame,pet", selective=True)
    lore = load_persona_bytes(card, "card.json").lorebook
    assert lore is not None
    assert lore.entries[0].keys == ["dragon", "wyrm"]
    assert lore.entries[0].secondary_keys == ["tame", "pet"]
    assert [e.content for e in lore.activate(["my pet dragon"])] == ["LORE"]
    assert lore.activate(["a wild wyrm"]) == []


def test_card_regex_key_string_is_not_split_on_commas() -> None:
    lore = load_persona_bytes(_card_with_entry(keys="/dragons{1,2}/", use_regex=True), "c.json").lorebook
    assert lore is not None
    assert lore.entries[0].keys == ["/dragons{1,2}/"]


# --- lorebook activation ---------------------------------------------------------------------------


def _contents(entries: list[LoreEntry]) -> list[str]:
    return [e.prompt_text for e in entries]


def test_use_regex_ignores_constant_and_secondary_keys() -> None:
    book = Lorebook(
        entries=[
            LoreEntry(keys=[r"\bdragons?\b"], use_regex=True, constant=True, content="CONSTANT"),
            LoreEntry(
                keys=[r"\bhel+o\b"],
                use_regex=True,
                selective=True,
                secondary_keys=["nope"],
                content="SELECTIVE",
            ),
        ]
    )
    assert _contents(book.activate(["hello"])) == ["SELECTIVE"]
    assert _contents(book.activate(["two dragons"])) == ["CONSTANT"]


# --- PNG text chunks -------------------------------------------------------------------------------


def _big_card() -> bytes:
    """A V2 card of just under MAX_TEXT_BYTES of JSON, so its base64 is well over it."""
    entries = [{"keys": [f"k{i}"], "content": "lore " * 3400, "insertion_order": i} for i in range(100)]
    card = {"spec": "chara_card_v2", "spec_version": "2.0", "data": {"name": "Big"}}
    card["data"]["character_book"] = {"entries": entries}
    raw = json.dumps(card).encode()
    assert MAX_TEXT_BYTES * 3 // 4 < len(raw) <= MAX_TEXT_BYTES
    return raw


@pytest.mark.parametrize("kind", [b"tEXt", b"zTXt", b"iTXt"])
def test_card_loads_from_every_text_chunk_type_up_to_the_text_limit(cardkit: Any, kind: bytes) -> None:
    b64 = base64.b64encode(_big_card())
    body = {
        b"tEXt": b"chara\0" + b64,
        b"zTXt": b"chara\0\0" + zlib.compress(b64),
        b"iTXt": b"chara\0\1\0\0\0" + zlib.compress(b64),
    }[kind]
    assert load_persona_bytes(cardkit.png(cardkit.chunk(kind, body)), "big.png").name == "Big"


# --- non-finite numbers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "filename"),
    [
        (b"name: Bob\nextensions:\n  weight: .inf\n", "bob.yaml"),
        (b"name: Bob\nextensions:\n  ratio: [1, .nan]\n", "bob.yaml"),
        (b'name = "Bob"\n[extensions]\nweight = -inf\n', "bob.toml"),
        (b'name = "Bob"\n[extensions]\nratio = nan\n', "bob.toml"),
    ],
)
def test_non_finite_numbers_are_refused(text: bytes, filename: str) -> None:
    with pytest.raises(PersonaError, match="extensions.* not a finite number"):
        load_persona_bytes(text, filename)


def test_finite_floats_are_kept() -> None:
    persona = load_persona_bytes(b"name: Bob\nextensions:\n  weight: 1.5\n", "bob.yaml")
    assert persona.extensions == {"weight": 1.5}


# --- SillyTavern selectiveLogic --------------------------------------------------------------------


def _world_info(*entries: dict[str, Any]) -> bytes:
    base = {"content": "", "constant": False, "disable": False, "order": 100, "position": 0}
    items = {str(i): {**base, "uid": i, **e} for i, e in enumerate(entries)}
    return json.dumps({"entries": items}).encode()


@pytest.mark.parametrize(
    ("logic", "active_for"),
    [
        (0, ["dragon, tame", "dragon, tame and pet"]),  # AND ANY
        (1, ["a dragon", "dragon, tame"]),  # NOT ALL
        (2, ["a dragon"]),  # NOT ANY
        (3, ["dragon, tame and pet"]),  # AND ALL
    ],
)
def test_world_info_selective_logic(logic: int, active_for: list[str]) -> None:
    secondary = {"keysecondary": ["tame", "pet"], "selective": True, "selectiveLogic": logic}
    wi = _world_info({"key": ["dragon"], "content": "LORE", **secondary})
    book = load_lorebook(wi, "wi.json")
    chats = ["a dragon", "dragon, tame", "dragon, tame and pet", "tame pet"]
    assert [chat for chat in chats if book.activate([chat])] == active_for


def test_card_selective_logic_from_entry_extensions_round_trips(cardkit: Any) -> None:
    card = cardkit.v2()
    card["data"]["character_book"]["entries"] = [
        {
            "keys": ["dragon"],
            "secondary_keys": ["tame", "pet"],
            "selective": True,
            "content": "WILD DRAGON LORE",
            "extensions": {"selectiveLogic": 2, "position": 0},
        }
    ]
    persona = load_persona_bytes(json.dumps(card).encode(), "card.json")
    assert persona.lorebook is not None
    assert persona.lorebook.activate(["my pet dragon"]) == []
    assert _contents(persona.lorebook.activate(["a dragon"])) == ["WILD DRAGON LORE"]
    exported = export_card_json(persona, "v3")["data"]["character_book"]["entries"][0]
    assert exported["extensions"]["selectiveLogic"] == 2
    again = load_persona_bytes(json.dumps(export_card_json(persona)).encode(), "again.json").lorebook
    assert again is not None
    assert again.activate(["my pet dragon"]) == []


@pytest.mark.parametrize("logic", [None, 7, "x", True])
def test_unknown_selective_logic_means_and_any(logic: Any) -> None:
    entry = LoreEntry(
        keys=["dragon"],
        secondary_keys=["pet"],
        selective=True,
        content="L",
        extensions={"selectiveLogic": logic},
    )
    book = Lorebook(entries=[entry])
    assert _contents(book.activate(["pet dragon"])) == ["L"]
    assert book.activate(["a dragon"]) == []


# --- recursive scanning ----------------------------------------------------------------------------


def test_recursion_scans_constant_entries_even_when_the_chat_matched_nothing() -> None:
    book = Lorebook(
        recursive_scanning=True,
        entries=[
            LoreEntry(keys=[], constant=True, content="The story takes place in Eldoria."),
            LoreEntry(keys=["eldoria"], content="ELDORIA: a forest kingdom of the Seraphim."),
            LoreEntry(keys=["seraphim"], content="SERAPHIM: winged guardians."),
        ],
    )
    assert len(book.activate(["hello there"])) == 3
    assert len(book.activate([])) == 3
    flat = book.model_copy(update={"recursive_scanning": False})
    assert _contents(flat.activate(["hello there"])) == ["The story takes place in Eldoria."]


def test_recursion_scans_activate_decorated_entries() -> None:
    book = Lorebook(
        recursive_scanning=True,
        entries=[
            LoreEntry(keys=[], content="@@activate\nThe kingdom of Eldoria."),
            LoreEntry(keys=["eldoria"], content="ELDORIA LORE"),
        ],
    )
    assert _contents(book.activate(["hi"])) == ["The kingdom of Eldoria.", "ELDORIA LORE"]


# --- SillyTavern /pattern/flags keys ---------------------------------------------------------------


def test_world_info_slash_keys_are_regexes() -> None:
    wi = _world_info(
        {"key": ["/dragons?/i"], "content": "DRAGON LORE"},
        {"key": ["/usr/bin", "w/o"], "content": "PLAIN LORE"},  # not a /pattern/flags form
    )
    book = load_lorebook(wi, "wi.json")
    assert _contents(book.activate(["Two Dragons attack"])) == ["DRAGON LORE"]
    assert _contents(book.activate(["see /usr/bin"])) == ["PLAIN LORE"]
    assert book.activate(["a drake"]) == []


def test_slash_keys_mix_with_plain_keys_in_one_entry() -> None:
    book = Lorebook(entries=[LoreEntry(keys=["castle", r"/\bwyrms?\b/"], content="L")])
    assert _contents(book.activate(["a wyrm"])) == ["L"]
    assert _contents(book.activate(["the castle"])) == ["L"]
    assert book.activate(["wyrmling"]) == []


def test_world_info_unsafe_slash_key_is_refused() -> None:
    with pytest.raises(PersonaError, match="regex key"):
        load_lorebook(_world_info({"key": ["/(a+)+$/"], "content": "L"}), "wi.json")


# --- {{char}} / {{user}} in keys -------------------------------------------------------------------


def test_macros_in_keys_are_filled_with_the_names() -> None:
    book = Lorebook(
        entries=[
            LoreEntry(keys=["{{char}}"], content="CHAR LORE"),
            LoreEntry(keys=["dragon"], selective=True, secondary_keys=["<USER>"], content="USER LORE"),
            LoreEntry(keys=[r"/^{{user}}\b/"], content="REGEX LORE"),
        ]
    )
    chat = ["Ann.B: Seraphina, a dragon!"]
    assert _contents(book.activate(chat, char="Seraphina", user="Ann.B")) == [
        "CHAR LORE",
        "USER LORE",
        "REGEX LORE",
    ]
    # a name is text, also inside a regex key ("." is no wildcard)
    assert _contents(book.activate(["AnnxB: a dragon"], char="Seraphina", user="Ann.B")) == []
    # the compiled keys follow the names
    assert _contents(book.activate(["Seraphina"], char="Lumi", user="Ann")) == []
    assert _contents(book.activate(["Lumi"], char="Lumi", user="Ann")) == ["CHAR LORE"]
    assert _contents(book.activate(["Seraphina"], char="Seraphina", user="Ann")) == ["CHAR LORE"]
    # without names, the keys are taken as written
    assert _contents(book.activate(["{{char}}"])) == ["CHAR LORE"]


def test_recursion_reads_entry_content_with_macros_filled() -> None:
    book = Lorebook(
        recursive_scanning=True,
        entries=[
            LoreEntry(keys=[], constant=True, content="{{char}} guards the glade."),
            LoreEntry(keys=["seraphina"], content="SERAPHINA LORE"),
        ],
    )
    assert len(book.activate(["hi"], char="Seraphina", user="Ann")) == 2


def test_card_macro_keys_activate(cardkit: Any) -> None:
    card = cardkit.v2(name="Seraphina")
    card["data"]["character_book"]["entries"] = [{"keys": ["{{char}}"], "content": "{{char}} LORE"}]
    persona = load_persona_bytes(json.dumps(card).encode(), "card.json")
    assert persona.lorebook is not None
    active = persona.lorebook.activate(["Seraphina, who are you?"], char=persona.char_name, user="Ann")
    assert [persona.render(e.prompt_text, "Ann") for e in active] == ["Seraphina LORE"]


def test_macro_keys_are_compiled_for_a_few_recent_name_pairs_only() -> None:
    book = Lorebook(entries=[LoreEntry(keys=["{{user}}"], content="USER LORE")])
    for i in range(50):
        assert _contents(book.activate([f"viewer{i} here"], char="C", user=f"viewer{i}")) == ["USER LORE"]
    assert book._compiled is not None
    assert len(book._compiled.by_names) == MAX_CACHED_NAMES


# --- V3 fallback decorators ------------------------------------------------------------------------


def test_fallback_decorators_stand_in_for_unknown_ones() -> None:
    book = Lorebook(
        entries=[
            LoreEntry(keys=[], content="@@risu_only 4\n@@@agn_only\n@@@activate\nALWAYS ON"),
            LoreEntry(keys=["hello"], content="@@agn_only_thing\n@@@dont_activate\nNEVER"),
            LoreEntry(keys=["hello"], content="@@activate\n@@@dont_activate\nKNOWN FIRST"),
        ]
    )
    assert [e.decorators for e in book.entries] == [["activate"], ["dont_activate"], ["activate"]]
    assert _contents(book.activate(["hello"])) == ["ALWAYS ON", "KNOWN FIRST"]


def test_fallbacks_of_unknown_decorators_that_are_unknown_too_change_nothing() -> None:
    entry = LoreEntry(keys=["hello"], content="@@depth 4\n@@@instruct_depth 4\n@@other\nTEXT")
    assert entry.decorators == ["depth 4", "other"]
    assert entry.prompt_text == "TEXT"
    assert _contents(Lorebook(entries=[entry]).activate(["hello"])) == ["TEXT"]


# --- the V2 backfill next to ccv3 ------------------------------------------------------------------


def test_png_v2_backfill_drops_decorators_and_v3_only_fields(cardkit: Any) -> None:
    card = cardkit.v3(source=["https://example.com/aria"])
    card["data"]["character_book"]["entries"] = [
        {"keys": ["x"], "content": "@@depth 4\n@@@activate\nThe actual lore.", "use_regex": True},
        {"keys": ["y"], "content": "Plain lore.", "x_custom_field": "kept"},
    ]
    persona = load_persona_bytes(json.dumps(card).encode(), "aria.json")
    chunks = read_card_chunks(export_card_png(persona))
    v2 = json.loads(base64.b64decode(chunks["chara"]))["data"]
    v3 = json.loads(base64.b64decode(chunks["ccv3"]))["data"]
    v3_only = ["nickname", "group_only_greetings", "assets", "creation_date", "source"]
    assert [k for k in v3_only if k in v2] == []
    assert [k for k in v3_only if k in v3] == v3_only
    entries = v2["character_book"]["entries"]
    assert [e["content"] for e in entries] == ["The actual lore.", "Plain lore."]
    assert ["use_regex" in e for e in entries] == [False, False]
    assert entries[1]["x_custom_field"] == "kept"
    assert v2["extensions"] == v3["extensions"]
    assert v3["character_book"]["entries"][0]["content"] == "@@depth 4\n@@@activate\nThe actual lore."


# --- CHARX assets whose bytes are not kept ---------------------------------------------------------

_ICON_ASSET = {"type": "icon", "uri": "embeded://assets/icon/images/main.png", "name": "main", "ext": "png"}
_EMOTION_ASSET = {
    "type": "emotion",
    "uri": "embeded://assets/emotion/images/happy.png",
    "name": "happy",
    "ext": "png",
}
_WEB_ASSET = {"type": "background", "uri": "https://example.com/bg.png", "name": "main", "ext": "png"}


def _charx_with_assets(cardkit: Any, *, with_icon: bool = True) -> bytes:
    card = cardkit.v3()
    card["data"]["assets"] = [_ICON_ASSET, _EMOTION_ASSET, _WEB_ASSET]
    members = {"card.json": json.dumps(card).encode(), "assets/emotion/images/happy.png": tiny_png()}
    if with_icon:
        members["assets/icon/images/main.png"] = tiny_png((1, 2, 3, 255))
    return cardkit.charx(members)


def test_charx_import_warns_about_embedded_assets_it_does_not_keep(
    cardkit: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="vstreamer.persona"):
        load_persona_bytes(_charx_with_assets(cardkit), "zip.charx")
    assert [r.getMessage() for r in caplog.records if "1 embedded asset(s) not kept" in r.getMessage()]


def test_charx_embedded_assets_are_left_out_of_json_exports(cardkit: Any) -> None:
    persona = load_persona_bytes(_charx_with_assets(cardkit), "zip.charx")
    for spec in ("v2", "v3"):
        assert export_card_json(persona, spec)["data"]["assets"] == [_WEB_ASSET]


def test_charx_png_export_points_the_main_icon_at_the_png_itself(cardkit: Any) -> None:
    persona = load_persona_bytes(_charx_with_assets(cardkit), "zip.charx")
    v3 = json.loads(base64.b64decode(read_card_chunks(export_card_png(persona))["ccv3"]))["data"]
    assert v3["assets"] == [{**_ICON_ASSET, "uri": "ccdefault:"}, _WEB_ASSET]
    assert persona.extensions["vstreamer/card_fields"]["assets"][:2] == [_ICON_ASSET, _EMOTION_ASSET]


def test_charx_png_export_drops_a_main_icon_whose_bytes_are_missing(
    cardkit: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="vstreamer.persona"):
        persona = load_persona_bytes(_charx_with_assets(cardkit, with_icon=False), "zip.charx")
    assert persona.avatar_png is None
    assert "2 embedded asset(s) not kept" in caplog.text
    v3 = json.loads(base64.b64decode(read_card_chunks(export_card_png(persona))["ccv3"]))["data"]
    assert v3["assets"] == [_WEB_ASSET]


# --- insertion_order is a number -------------------------------------------------------------------


@pytest.mark.parametrize("order", [2.5, 3, -1.25])
def test_card_insertion_order_keeps_its_number(order: float) -> None:
    entry = {"keys": ["a"], "content": "x", "insertion_order": order}
    card = {
        "spec": "chara_card_v3",
        "spec_version": "3.0",
        "data": {"name": "Bob", "character_book": {"entries": [entry]}},
    }
    persona = load_persona_bytes(json.dumps(card).encode(), "c.json")
    exported = export_card_json(persona, "v3")["data"]["character_book"]["entries"][0]["insertion_order"]
    assert (exported, type(exported)) == (order, type(order))


def test_fractional_insertion_orders_sort_between_integers() -> None:
    entries = [
        LoreEntry(keys=["k"], content="three", insertion_order=3),
        LoreEntry(keys=["k"], content="two and a half", insertion_order=2.5),
        LoreEntry(keys=["k"], content="two", insertion_order=2),
    ]
    assert _contents(Lorebook(entries=entries).activate(["k"])) == ["two", "two and a half", "three"]

"""Malformed and hostile persona files: only PersonaError, never a crash or a hang."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vstreamer.errors import PersonaError
from vstreamer.persona import PersonaLibrary, load_lorebook, load_persona, load_persona_bytes
from vstreamer.persona.limits import MAX_INFLATED_BYTES, MAX_ZIP_TOTAL_BYTES
from vstreamer.persona.png import SIGNATURE, tiny_png

#: raise with PERSONA_FUZZ_EXAMPLES=3000 for a longer local run
FUZZ_EXAMPLES = int(os.environ.get("PERSONA_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _rejects(data: bytes, filename: str, match: str | None = None) -> None:
    with pytest.raises(PersonaError, match=match):
        load_persona_bytes(data, filename)


# --- PNG -------------------------------------------------------------------------------------------


def test_not_a_png() -> None:
    _rejects(b"GIF89a....", "x.png", "signature")
    _rejects(b"", "x.png", "signature")


def test_truncated_png(cardkit: Any) -> None:
    png = cardkit.card_png(chara=cardkit.v2())
    for cut in (len(SIGNATURE) + 3, len(png) // 2, len(png) - 1):
        _rejects(png[:cut], "cut.png")


def test_bad_crc(cardkit: Any) -> None:
    png = bytearray(cardkit.card_png(chara=cardkit.v2()))
    png[-20] ^= 0xFF  # inside the tEXt chunk's CRC or data
    _rejects(bytes(png), "crc.png", "CRC")


def test_huge_declared_chunk_length() -> None:
    image = tiny_png()
    bogus = struct.pack(">I", 0xFFFFFFF0) + b"tEXt" + b"chara\0AAAA"
    _rejects(image[:-12] + bogus, "huge.png", "past the end")


def test_invalid_chunk_type() -> None:
    image = tiny_png()
    _rejects(
        image[:-12] + struct.pack(">I", 0) + b"\0\0\0\0" + b"\0" * 4 + image[-12:], "t.png", "chunk type"
    )


def test_data_after_iend_is_ignored(cardkit: Any) -> None:
    png = cardkit.card_png(chara=cardkit.v2())
    assert load_persona_bytes(png + b"garbage" * 100, "x.png").name == "Aria"


@pytest.mark.parametrize(
    "text",
    ["!!!not base64!!!", base64.b64encode(b"\xff\xfe").decode(), base64.b64encode(b"[1, 2]").decode(), "e30"],
)
def test_bad_card_payloads(cardkit: Any, text: str) -> None:
    _rejects(cardkit.png(cardkit.text_chunk("chara", text)), "p.png")


def test_ztxt_bomb_is_capped(cardkit: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused once MAX_INFLATED_BYTES came out, the rest never inflated. Counted, not timed."""
    inflated = 0
    inflater = zlib.decompressobj

    class CountedInflater:
        def __init__(self) -> None:
            self._inflater = inflater()

        def decompress(self, data: bytes, max_length: int = 0) -> bytes:
            nonlocal inflated
            out = self._inflater.decompress(data, max_length)
            inflated += len(out)
            return out

        def __getattr__(self, name: str) -> Any:  # unconsumed_tail, eof...
            return getattr(self._inflater, name)

    monkeypatch.setattr(zlib, "decompressobj", CountedInflater)
    bomb = zlib.compress(b"A" * (MAX_INFLATED_BYTES + 1024), 9)
    chunk = cardkit.chunk(b"zTXt", b"chara\0\0" + bomb)
    _rejects(cardkit.png(chunk), "bomb.png", "inflates past")
    assert inflated <= MAX_INFLATED_BYTES


def test_corrupt_ztxt(cardkit: Any) -> None:
    _rejects(cardkit.png(cardkit.chunk(b"zTXt", b"chara\0\0not zlib")), "z.png", "corrupt")
    _rejects(cardkit.png(cardkit.chunk(b"zTXt", b"chara\0\1xx")), "z.png", "compression")
    _rejects(cardkit.png(cardkit.chunk(b"iTXt", b"chara\0\0")), "i.png", "iTXt")


def test_ccv3_broken_is_an_error_even_with_chara(cardkit: Any) -> None:
    png = cardkit.png(
        cardkit.text_chunk("chara", cardkit.b64(cardkit.v2())), cardkit.text_chunk("ccv3", "@@@")
    )
    _rejects(png, "both.png", "ccv3")


def test_oversized_file(tmp_path: Path) -> None:
    _rejects(SIGNATURE + b"\0" * (20 * 1024 * 1024 + 1), "big.png", "more than")
    path = tmp_path / "big.json"
    path.write_bytes(b" " * (3 * 1024 * 1024))
    with pytest.raises(PersonaError, match="larger than"):
        load_persona(path)


# --- JSON ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["[]", "42", '"name"', "null", "{", '{"name": NaN}', '{"spec": "chara_card_v2", "data": {}}'],
)
def test_bad_json(text: str) -> None:
    _rejects(text.encode(), "x.json")


def test_deep_nesting() -> None:
    _rejects(b"[" * 100_000 + b"]" * 100_000, "deep.json", "nested")
    deep = '{"name": "A", "extensions": {"x": ' + "[" * 200 + "]" * 200 + "}}"
    _rejects(deep.encode(), "deep.json", "nested")


@pytest.mark.parametrize(
    ("filename", "data"),
    [
        ("deep.yaml", b"name: x\nextensions: " + b"[" * 20000 + b"]" * 20000),
        ("deep.toml", b'name = "x"\nextensions = ' + b"[" * 20000 + b"]" * 20000),
        ("cycle.yaml", b"name: x\nextensions: &a {b: *a}\n"),
        ("set.yaml", b"name: x\nextensions: !!set {a, b}\n"),
        ("binary.yaml", b"name: x\nextensions: {a: !!binary aGVsbG8=}\n"),
        ("keys.yaml", b"name: x\nextensions: {1: one}\n"),
        ("bigint.json", b'{"name": "x", "extensions": {"a": ' + b"9" * 5000 + b"}}"),
    ],
)
def test_hostile_text_formats(filename: str, data: bytes) -> None:
    _rejects(data, filename)


@pytest.mark.parametrize(
    "data",
    [
        rb'{"spec":"chara_card_v2","spec_version":"2.0","data":{"name":"S","extensions":{"k":"\ud800"}}}',
        rb'{"spec":"chara_card_v3","spec_version":"3.0","data":{"name":"S","source":["\udfff"]}}',
        rb'{"spec":"chara_card_v2","spec_version":"2.0","data":{"name":"S","character_book":'
        rb'{"entries":[{"keys":["a"],"content":"c","extensions":{"\udc00":1}}]}}}',
        rb'{"name":"S","description":"ok \ud83d then a lone high surrogate"}',
        rb'{"name":"S","extensions":{"x\ud800y":{"deep":1}}}',
    ],
)
def test_lone_surrogates_are_refused(data: bytes, tmp_path: Path) -> None:
    """A JSON \\ud800 escape decodes to text UTF-8 cannot hold: storing or serving it failed later
    (a 500 from the gateway, a traceback from the CLI; in keys it was silently replaced)."""
    with pytest.raises(PersonaError, match="lone surrogate") as info:
        load_persona_bytes(data, "s.json")
    str(info.value).encode("utf-8")  # the message itself can be printed and sent
    with pytest.raises(PersonaError, match="lone surrogate"):
        PersonaLibrary(tmp_path).import_bytes(data, "s.json")
    assert list(tmp_path.iterdir()) == []


def test_paired_surrogate_escapes_are_fine() -> None:
    data = rb'{"name":"S","extensions":{"\ud83d\ude00":"\ud83d\ude00"}}'
    assert load_persona_bytes(data, "s.json").extensions == {"😀": "😀"}


def test_too_many_lore_entries(cardkit: Any) -> None:
    book = {"entries": [{"keys": ["k"], "content": "c"}] * 5001}
    _rejects(json.dumps(cardkit.v2(character_book=book)).encode(), "many.json", "5000")


def test_not_utf8() -> None:
    _rejects('{"name": "é"}'.encode("latin-1"), "x.json", "UTF-8")


def test_unknown_file_type() -> None:
    _rejects(b"hello", "notes.txt", "unsupported")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PersonaError, match="no such file"):
        load_persona(tmp_path / "nope.json")
    with pytest.raises(PersonaError, match="no such file"):
        load_lorebook(tmp_path / "nope.json")


# --- CHARX -----------------------------------------------------------------------------------------


def test_charx_zip_bomb_by_header(cardkit: Any) -> None:
    members = {"card.json": json.dumps(cardkit.v3()).encode(), "pad.bin": b"\0" * (MAX_ZIP_TOTAL_BYTES + 1)}
    _rejects(cardkit.charx(members), "bomb.charx", "inflates")


def test_charx_lying_header_is_caught_while_reading(cardkit: Any) -> None:
    """A card.json whose header claims a tiny size but inflates far more."""
    payload = b'{"spec": "chara_card_v3", "data": {"name": "A", "x": "' + b"A" * (3 * 1024 * 1024) + b'"}}'
    data = bytearray(cardkit.charx({"card.json": payload}))
    # patch the uncompressed size in the local header (offset 22) and the central directory
    struct.pack_into("<I", data, 22, 100)
    central = data.rfind(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, 100)
    _rejects(bytes(data), "liar.charx")


def test_charx_too_many_members(cardkit: Any) -> None:
    members = {f"f{i}.txt": b"" for i in range(1001)}
    members["card.json"] = json.dumps(cardkit.v3()).encode()
    _rejects(cardkit.charx(members, zipfile.ZIP_STORED), "many.charx", "1000")


@pytest.mark.parametrize("name", ["../evil.txt", "/abs.txt", "assets/../../x", "C:/win.txt", "a\\b.txt"])
def test_charx_path_traversal(cardkit: Any, name: str) -> None:
    members = {"card.json": json.dumps(cardkit.v3()).encode(), name: b"x"}
    _rejects(cardkit.charx(members), "trav.charx", "unsafe path")


def test_charx_not_a_zip() -> None:
    _rejects(b"PK\x03\x04garbage", "x.charx", "zip")
    _rejects(b"definitely not", "x.charx", "zip")


def test_charx_encrypted_flag(cardkit: Any) -> None:
    data = bytearray(cardkit.charx({"card.json": json.dumps(cardkit.v3()).encode()}))
    central = data.rfind(b"PK\x01\x02")
    struct.pack_into("<H", data, central + 8, 1)
    _rejects(bytes(data), "enc.charx", "encrypted")


def test_charx_corrupt_lzma_member(cardkit: Any) -> None:
    """zipfile inflates LZMA members too, and raises lzma.LZMAError (no OSError) on corrupt ones."""
    data = bytearray(cardkit.charx({"card.json": json.dumps(cardkit.v3()).encode()}, zipfile.ZIP_LZMA))
    start = 30 + len("card.json") + 9  # past the local header and the LZMA properties
    data[start : start + 20] = bytes(b ^ 0xFF for b in data[start : start + 20])
    _rejects(bytes(data), "lzma.charx", "corrupt")


def test_charx_broken_icon_is_ignored(cardkit: Any) -> None:
    card = cardkit.v3()
    card["data"]["assets"] = [{"type": "icon", "uri": "embeded://icon.png", "name": "main", "ext": "png"}]
    data = cardkit.charx({"card.json": json.dumps(card).encode(), "icon.png": SIGNATURE + b"junk"})
    assert load_persona_bytes(data, "a.charx").avatar_png is None


# --- fuzzing ---------------------------------------------------------------------------------------


def _only_persona_error(data: bytes, filename: str) -> None:
    with contextlib.suppress(PersonaError):
        load_persona_bytes(data, filename)


@FUZZ
@given(st.binary(max_size=2048), st.sampled_from(["x.png", "x.json", "x.charx", "x.yaml", "x.toml", "x"]))
def test_fuzz_random_bytes(data: bytes, filename: str) -> None:
    _only_persona_error(data, filename)


@FUZZ
@given(st.binary(max_size=512))
def test_fuzz_random_bytes_after_png_signature(tail: bytes) -> None:
    _only_persona_error(SIGNATURE + tail, "x.png")


def _valid_card_png() -> bytes:
    from tests.persona.conftest import CardKit

    return CardKit.card_png(chara=CardKit.v2(), ccv3=CardKit.v3())


VALID_PNG = _valid_card_png()


@FUZZ
@given(st.data())
def test_fuzz_mutated_png(data: st.DataObject) -> None:
    png = bytearray(VALID_PNG)
    for _ in range(data.draw(st.integers(1, 8))):
        index = data.draw(st.integers(0, len(png) - 1))
        png[index] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        png = png[: data.draw(st.integers(0, len(png)))]
    _only_persona_error(bytes(png), "m.png")


@FUZZ
@given(st.data())
def test_fuzz_mutated_png_with_fixed_crc(data: st.DataObject) -> None:
    """Mutate the card text itself and recompute the CRC, so the card parser is exercised."""
    from tests.persona.conftest import CardKit

    text = bytearray(CardKit.b64(CardKit.v3()).encode())
    for _ in range(data.draw(st.integers(1, 6))):
        text[data.draw(st.integers(0, len(text) - 1))] = data.draw(st.sampled_from(b"AZaz09+/=!{}\0"))
    _only_persona_error(CardKit.png(CardKit.chunk(b"tEXt", b"ccv3\0" + bytes(text))), "f.png")


def _valid_charx() -> bytes:
    from tests.persona.conftest import CardKit

    card = CardKit.v3()
    card["data"]["assets"] = [{"type": "icon", "uri": "embeded://icon.png", "name": "main", "ext": "png"}]
    return CardKit.charx({"card.json": json.dumps(card).encode(), "icon.png": tiny_png()})


VALID_CHARX = _valid_charx()


@FUZZ
@given(st.data())
def test_fuzz_mutated_charx(data: st.DataObject) -> None:
    archive = bytearray(VALID_CHARX)
    for _ in range(data.draw(st.integers(1, 8))):
        archive[data.draw(st.integers(0, len(archive) - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        archive = archive[: data.draw(st.integers(0, len(archive)))]
    _only_persona_error(bytes(archive), "m.charx")


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
_CARD_KEYS = [
    "name",
    "description",
    "first_mes",
    "tags",
    "alternate_greetings",
    "extensions",
    "character_book",
    "nickname",
]
_ENTRY_KEYS = [
    "keys",
    "secondary_keys",
    "content",
    "enabled",
    "insertion_order",
    "priority",
    "id",
    "position",
    "use_regex",
    "case_sensitive",
    "selective",
    "constant",
    "extensions",
]


@FUZZ
@given(
    st.sampled_from(["chara_card_v2", "chara_card_v3"]),
    st.dictionaries(st.sampled_from(_CARD_KEYS), _JSON, max_size=4),
    st.dictionaries(st.sampled_from(_ENTRY_KEYS), _JSON, max_size=5),
    st.dictionaries(
        st.sampled_from(["scan_depth", "token_budget", "recursive_scanning", "entries", "name"]),
        _JSON,
        max_size=3,
    ),
)
def test_fuzz_card_json_structure(spec: str, data_patch: dict, entry_patch: dict, book_patch: dict) -> None:
    from tests.persona.conftest import CardKit

    card = CardKit.v2()
    card["spec"] = spec
    card["data"]["character_book"]["entries"][0].update(entry_patch)
    card["data"]["character_book"].update(book_patch)
    card["data"].update(data_patch)
    raw = json.dumps(card).encode()
    try:
        persona = load_persona_bytes(raw, "f.json")
    except PersonaError:
        return
    if persona.lorebook is not None:
        persona.lorebook.activate(["some text", "key lute"])


@FUZZ
@given(st.text(max_size=300))
def test_fuzz_json_text(text: str) -> None:
    _only_persona_error(text.encode("utf-8"), "t.json")
    with contextlib.suppress(PersonaError):
        load_lorebook(text.encode("utf-8"))


@FUZZ
@given(st.text(max_size=300))
def test_fuzz_yaml_text(text: str) -> None:
    _only_persona_error(text.encode("utf-8"), "t.yaml")


@FUZZ
@given(st.lists(st.text(max_size=30), max_size=5), st.text(max_size=100))
def test_fuzz_regex_keys_never_raise(keys: list[str], chat: str) -> None:
    from vstreamer.persona import Lorebook, LoreEntry

    book = Lorebook(entries=[LoreEntry(keys=keys, content="c", use_regex=True)])
    book.activate([chat])

"""PersonaLibrary: bundled plus user personas, import, replace, delete."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vstreamer.errors import PersonaError, PersonaNotFound
from vstreamer.persona import DEFAULT_PERSONA_ID, PersonaLibrary, export_card_png, library, limits


def test_bundled_only(tmp_path: Path) -> None:
    lib = PersonaLibrary(tmp_path / "does-not-exist-yet")
    ids = [p.id for p in lib.list()]
    assert ids == sorted(ids) and DEFAULT_PERSONA_ID in ids and "nova" in ids
    assert lib.get(DEFAULT_PERSONA_ID).name == "小星"
    assert lib.get("小星").id == DEFAULT_PERSONA_ID
    assert lib.get("NOVA").id == "nova"
    assert not (tmp_path / "does-not-exist-yet").exists()
    assert PersonaLibrary(None).get("nova").language == "en"


def test_get_unknown_lists_available_ids() -> None:
    with pytest.raises(PersonaNotFound, match="xiaoxing") as info:
        PersonaLibrary(None).get("nobody")
    assert isinstance(info.value, PersonaError)


def test_import_json_card_then_list_get_delete(tmp_path: Path, cardkit: Any) -> None:
    source = tmp_path / "aria.json"
    source.write_text(json.dumps(cardkit.v2()), encoding="utf-8")
    lib = PersonaLibrary(tmp_path / "user")
    aria = lib.import_file(source)
    assert aria.id == "aria"
    ids = [p.id for p in lib.list()]
    assert ids[-1] == "aria" and ids.index("aria") > ids.index(DEFAULT_PERSONA_ID)
    stored = tmp_path / "user" / "aria"
    assert (stored / "persona.json").is_file() and (
        stored / "original.json"
    ).read_bytes() == source.read_bytes()
    # a fresh library (another process) sees the same persona
    again = PersonaLibrary(tmp_path / "user").get("Aria")
    assert again == aria and again.source_format == "chara_card_v2"
    lib.delete("aria")
    assert not stored.exists()
    with pytest.raises(PersonaNotFound):
        lib.get("aria")
    with pytest.raises(PersonaNotFound):
        lib.delete("aria")


def test_import_png_keeps_avatar(tmp_path: Path, seraphina_path: Path) -> None:
    lib = PersonaLibrary(tmp_path)
    sera = lib.import_file(seraphina_path)
    assert (tmp_path / sera.id / "avatar.png").read_bytes() == sera.avatar_png
    assert (tmp_path / sera.id / "original.png").read_bytes() == seraphina_path.read_bytes()
    reloaded = PersonaLibrary(tmp_path).get("seraphina")
    assert reloaded == sera


def test_collision_and_replace(tmp_path: Path, cardkit: Any) -> None:
    lib = PersonaLibrary(tmp_path)
    lib.import_bytes(json.dumps(cardkit.v2(description="one")).encode(), "a.json")
    with pytest.raises(PersonaError, match="already exists"):
        lib.import_bytes(json.dumps(cardkit.v2(description="two")).encode(), "a.json")
    assert lib.get("aria").description == "one"
    lib.import_bytes(json.dumps(cardkit.v2(description="two")).encode(), "a.json", replace=True)
    assert lib.get("aria").description == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aria"]  # no staging leftovers


def test_bundled_ids_are_reserved_and_undeletable(tmp_path: Path) -> None:
    lib = PersonaLibrary(tmp_path)
    with pytest.raises(PersonaError, match="bundled"):
        lib.import_bytes(b"id: xiaoxing\nname: Impostor\n", "x.yaml", replace=True)
    with pytest.raises(PersonaError, match="bundled"):
        lib.delete(DEFAULT_PERSONA_ID)


def test_delete_rejects_path_tricks(tmp_path: Path) -> None:
    (tmp_path / "user").mkdir()
    lib = PersonaLibrary(tmp_path / "user")
    for trick in ("../user", "..", "/etc", ""):
        with pytest.raises(PersonaNotFound):
            lib.delete(trick)
    assert (tmp_path / "user").is_dir()


def test_import_needs_a_user_dir() -> None:
    with pytest.raises(PersonaError, match="directory"):
        PersonaLibrary(None).import_bytes(b"name: X\n", "x.yaml")


def test_invalid_import_stores_nothing(tmp_path: Path) -> None:
    lib = PersonaLibrary(tmp_path)
    with pytest.raises(PersonaError):
        lib.import_bytes(b"\x89PNG\r\n\x1a\nbroken", "x.png")
    assert list(tmp_path.iterdir()) == []


def test_broken_stored_persona_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lib = PersonaLibrary(tmp_path)
    lib.import_bytes(b"name: Good\n", "g.yaml")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "persona.json").write_text("{nope", encoding="utf-8")
    assert [p.id for p in lib.list()][-1] == "good"
    assert "bad" in caplog.text


def test_user_edits_are_picked_up(tmp_path: Path) -> None:
    lib = PersonaLibrary(tmp_path)
    lib.import_bytes(b"name: Edit\n", "e.yaml")
    path = tmp_path / "edit" / "persona.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["description"] = "changed by hand"
    path.write_text(json.dumps(data), encoding="utf-8")
    assert lib.get("edit").description == "changed by hand"


def test_exported_png_imports(tmp_path: Path) -> None:
    lib = PersonaLibrary(tmp_path)
    nova = lib.get("nova").model_copy(update={"id": "nova2", "name": "Nova Two"})
    imported = lib.import_bytes(export_card_png(nova), "nova2.png")
    assert imported.id == "nova2" and imported.name == "Nova Two"
    assert [p.id for p in lib.list()][-1] == "nova2"


def _big_book_card(content_chars: int) -> bytes:
    """A card within the import limits whose normalized copy is bigger than them: the most entries, each
    filled to ``content_chars`` (every default field gets written out for each of them)."""
    entries = [{"keys": [f"k{i}"], "content": "c" * content_chars} for i in range(limits.MAX_LORE_ENTRIES)]
    card = {"spec": "chara_card_v2", "spec_version": "2.0", "data": {"name": "Big Book", "first_mes": "hi"}}
    card["data"]["character_book"] = {"entries": entries}
    data = json.dumps(card, separators=(",", ":")).encode()
    assert len(data) <= limits.MAX_TEXT_BYTES
    return data


@pytest.mark.parametrize("content_chars", [0, 370])
def test_a_card_within_the_import_limits_loads_again_after_replace(
    tmp_path: Path, cardkit: Any, content_chars: int
) -> None:
    """Its normalized persona.json is over 2 MiB (0: with indent=2) or 2M characters of text (370): it
    must still load, and not lose the working copy it replaced."""
    lib = PersonaLibrary(tmp_path)
    lib.import_bytes(json.dumps(cardkit.v2("Big Book")).encode(), "small.json")
    big = lib.import_bytes(_big_book_card(content_chars), "big.json", replace=True)
    again = PersonaLibrary(tmp_path).get("big-book")
    assert again.lorebook is not None and len(again.lorebook.entries) == limits.MAX_LORE_ENTRIES
    assert again == big


def test_a_stored_copy_that_would_not_load_keeps_the_old_one(
    tmp_path: Path, cardkit: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib = PersonaLibrary(tmp_path)
    lib.import_bytes(json.dumps(cardkit.v2(description="old")).encode(), "a.json")
    # stand-in for any normalized form the reader refuses: files over 4000 bytes
    tight = limits.TreeLimits(text_bytes=4000) if hasattr(limits, "TreeLimits") else None
    monkeypatch.setattr(library, "STORED_LIMITS", tight, raising=False)
    with pytest.raises(PersonaError, match="would not load"):
        lib.import_bytes(json.dumps(cardkit.v2(description="n" * 5000)).encode(), "a.json", replace=True)
    assert PersonaLibrary(tmp_path).get("aria").description == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aria"]  # no staging leftovers


def test_stored_personas_join_the_files_and_never_shadow_them(tmp_path: Path, cardkit: Any) -> None:
    """Personas imported through the gateway's API (the database's), as the command line sees them."""
    (tmp_path / "aria.json").write_text(json.dumps(cardkit.v2()), encoding="utf-8")
    stored = PersonaLibrary(tmp_path / "scratch").import_file(tmp_path / "aria.json")
    lib = PersonaLibrary(tmp_path / "user", stored=[stored])
    assert [p.id for p in lib.list()][-1] == "aria" and lib.get("Aria") is stored
    with pytest.raises(PersonaError, match="through the API"):
        lib.import_file(tmp_path / "aria.json")  # a file of that id would shadow it


def test_an_unreadable_persona_is_named_and_deletable(tmp_path: Path, cardkit: Any) -> None:
    (tmp_path / "aria.json").write_text(json.dumps(cardkit.v2()), encoding="utf-8")
    lib = PersonaLibrary(tmp_path / "user")
    lib.import_file(tmp_path / "aria.json")
    (tmp_path / "user" / "aria" / "persona.json").write_text("{")
    with pytest.raises(PersonaNotFound, match="'aria' cannot be read"):
        lib.get("aria")
    assert "aria" in lib.unreadable
    with pytest.raises(PersonaError, match="--replace"):
        lib.import_file(tmp_path / "aria.json")
    lib.delete("aria")
    assert not (tmp_path / "user" / "aria").exists() and "aria" not in [p.id for p in lib.list()]

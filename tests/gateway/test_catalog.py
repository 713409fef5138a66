"""The gateway's persona catalog: answered from memory, re-read from disk in the background."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from vstreamer.errors import PersonaError, PersonaNotFound
from vstreamer.gateway import catalog as catalog_module
from vstreamer.gateway.catalog import PersonaCatalog
from vstreamer.persona import Persona, PersonaLibrary
from vstreamer.store import Store, open_store


def card(description: str) -> bytes:
    return json.dumps(
        {"spec": "chara_card_v2", "spec_version": "2.0", "data": {"name": "Aria", "description": description}}
    ).encode()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await open_store(None, tmp_path / "data")
    yield store
    await store.close()


async def settle(catalog: PersonaCatalog) -> None:
    """Wait for the background re-reads the last ``get`` started."""
    await asyncio.gather(*catalog._refreshing.values())


async def test_edits_on_disk_are_served_after_a_background_reread(tmp_path: Path, store: Store) -> None:
    library = PersonaLibrary(tmp_path / "personas")
    library.import_bytes(card("one"), "aria.json")
    catalog = PersonaCatalog(library, store)
    catalog.FILE_CHECK_S = 0.0  # every request finds its copy due for a re-read
    assert (await catalog.get("aria")).description == "one"

    # Another process edits the persona: the next request is answered at once from memory...
    PersonaLibrary(tmp_path / "personas").import_bytes(card("two"), "aria.json", replace=True)
    assert (await catalog.get("aria")).description == "one"
    assert catalog._refreshing  # ...and the files are read again beside it
    await settle(catalog)
    assert (await catalog.get("aria")).description == "two"

    PersonaLibrary(tmp_path / "personas").delete("aria")
    await catalog.get("aria")
    await settle(catalog)
    with pytest.raises(PersonaNotFound):
        await catalog.get("aria")


async def test_fresh_copies_are_served_without_reading_files(tmp_path: Path, store: Store) -> None:
    library = PersonaLibrary(tmp_path / "personas")
    library.import_bytes(card("one"), "aria.json")
    catalog = PersonaCatalog(library, store)
    await catalog.get("aria")
    PersonaLibrary(tmp_path / "personas").import_bytes(card("two"), "aria.json", replace=True)
    for _ in range(3):
        assert (await catalog.get("aria")).description == "one"
    assert not catalog._refreshing  # within FILE_CHECK_S nothing is re-read


async def test_closing_stops_background_rereads(tmp_path: Path, store: Store) -> None:
    library = PersonaLibrary(tmp_path / "personas")
    library.import_bytes(card("one"), "aria.json")
    catalog = PersonaCatalog(library, store)
    catalog.FILE_CHECK_S = 0.0
    await catalog.get("aria")
    await catalog.get("aria")  # starts a re-read
    running = list(catalog._refreshing.values())
    assert running
    await catalog.aclose()
    assert all(task.done() for task in running) and not catalog._refreshing


async def test_a_card_whose_name_has_a_nul_is_refused_not_a_database_error(
    tmp_path: Path, store: Store
) -> None:
    """The name has a column of its own, which PostgreSQL would refuse a NUL in (a 503, not the client's 400)."""
    catalog = PersonaCatalog(PersonaLibrary(tmp_path / "personas"), store)
    bad = json.dumps(
        {"spec": "chara_card_v2", "spec_version": "2.0", "data": {"name": "Ar\u0000ia", "description": "x"}}
    ).encode()
    with pytest.raises(PersonaError, match="NUL"):
        await catalog.import_bytes(bad, "aria.json", owner="o")
    assert await store.persona_rows() == []


async def test_text_json_cannot_hold_is_a_persona_error_not_a_500(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lone surrogate (a JSON \\ud800 escape) in card extensions: refused by the loader; and should one
    reach the catalog another way, storing it is a PersonaError (400), not a serialization error (500)."""
    catalog = PersonaCatalog(PersonaLibrary(tmp_path / "personas"), store)
    bad = rb'{"spec":"chara_card_v2","spec_version":"2.0","data":{"name":"S","extensions":{"k":"\ud800"}}}'
    with pytest.raises(PersonaError, match="surrogate"):
        await catalog.import_bytes(bad, "s.json", owner="o")
    slipped = Persona(id="s", name="S", extensions={"k": "\ud800"})
    monkeypatch.setattr(catalog_module, "load_persona_bytes", lambda data, filename: slipped)
    with pytest.raises(PersonaError, match="surrogate"):
        await catalog.import_bytes(b"{}", "s.json", owner="o")
    assert await store.persona_rows() == []


async def test_two_keys_importing_one_new_persona_at_once_get_one_answer(
    tmp_path: Path, store: Store
) -> None:
    """Both imports were told they made it, and the later one took the persona over from the earlier's key."""
    catalog = PersonaCatalog(PersonaLibrary(tmp_path / "personas"), store)
    await catalog.load()
    results = await asyncio.gather(
        catalog.import_bytes(card("by A"), "a.json", owner="key-a"),
        catalog.import_bytes(card("by B"), "b.json", owner="key-b"),
        return_exceptions=True,
    )
    made = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, PersonaError)]
    assert len(made) == 1 and len(refused) == 1 and "exists already" in str(refused[0])
    owner = "key-a" if made[0].description == "by A" else "key-b"
    restarted = PersonaCatalog(PersonaLibrary(tmp_path / "personas"), store)
    await restarted.load()
    for loaded in (catalog, restarted):
        assert (await loaded.get("aria")).description == made[0].description
        assert loaded._owners["aria"] == owner

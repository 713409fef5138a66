"""The personas the web UI offers: file personas and those imported through the gateway's API, as chat profiles."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from vstreamer.gateway.catalog import PersonaCatalog
from vstreamer.persona import PersonaLibrary
from vstreamer.persona.png import tiny_png, with_text_chunks
from vstreamer.ui.state import UIState


def card_png(name: str, nickname: str = "") -> bytes:
    """A Character Card V2 in a PNG, as a user uploads one to ``POST /api/personas``."""
    data = {"name": name, "nickname": nickname, "description": f"{name} from the API", "first_mes": "Hi!"}
    chara = json.dumps({"spec": "chara_card_v2", "spec_version": "2.0", "data": data})
    return with_text_chunks(tiny_png((10, 20, 30, 255)), {"chara": base64.b64encode(chara.encode()).decode()})


@pytest.fixture
async def catalog(started_ui: UIState) -> PersonaCatalog:
    """The gateway's catalog over the UI's store, as a gateway beside the UI has it."""
    catalog = PersonaCatalog(PersonaLibrary(started_ui.settings.personas_dir), started_ui.store())
    await catalog.load()
    return catalog


async def test_personas_imported_through_the_api_are_chat_profiles(
    ui_app: Any, started_ui: UIState, catalog: PersonaCatalog
) -> None:
    """The gateway and the command line served them; the UI's persona choice listed only the files'."""
    state, app = started_ui, ui_app
    luna = await catalog.import_bytes(card_png("Luna", "Lulu"), "luna.png", owner="key-1")
    profiles = await app._chat_profiles(None)
    names = [p.name for p in profiles]
    assert names == ["xiaoxing", "nova", luna.id]  # the default first, then the files', then the API's
    assert set(names) == {p.id for p in await catalog.list()}  # what the gateway serves
    profile = next(p for p in profiles if p.name == luna.id)
    assert profile.display_name == "Luna" and profile.icon == f"/public/avatars/{luna.id}.png"
    served = state.app_root / "public" / "avatars" / f"{luna.id}.png"
    assert served.read_bytes() == luna.avatar_png  # the card's image, its card chunks stripped at import

    # Found by the gateway's rule (id, name, nickname in any case), also for a thread reopened after a restart.
    for word in (luna.id, "luna", "LULU"):
        assert state.persona(word).id == luna.id
    assert state.describe(luna.id) == ("Luna", luna.id)


async def test_an_import_while_the_ui_runs_is_offered_at_the_next_listing(
    ui_app: Any, started_ui: UIState, catalog: PersonaCatalog
) -> None:
    state, app = started_ui, ui_app
    await app._chat_profiles(None)
    plain = json.dumps({"spec": "chara_card_v2", "spec_version": "2.0", "data": {"name": "Sol"}}).encode()
    sol = await catalog.import_bytes(plain, "sol.json", owner="key-1")
    profiles = {p.name: p for p in await app._chat_profiles(None)}
    assert sol.id in profiles
    assert (
        profiles[sol.id].icon == f"/public/avatars/{sol.id}.svg"
    )  # no image: the letter badge every such persona gets
    assert (state.app_root / "public" / "avatars" / f"{sol.id}.svg").is_file()
    assert state.persona("sol").id == sol.id

    await catalog.delete(sol.id, owner="key-1")
    assert sol.id not in [p.name for p in await app._chat_profiles(None)]

"""Regressions a review found against a live gateway, reproduced in process (two API keys, the fake backend)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from vstreamer.config import Settings
from vstreamer.gateway import create_app
from vstreamer.gateway.chat import MAX_REPLY_CHARS
from vstreamer.gateway.readiness import Readiness
from vstreamer.gateway.state import GatewayState
from vstreamer.llm import FakeBackend
from vstreamer.llm.base import BackendHealth
from vstreamer.persona import PersonaLibrary, load_persona_bytes
from vstreamer.runtime import Runtime, open_runtime, stored_personas
from vstreamer.store import Store


@dataclass
class Gateway:
    """The app in process, with keys ``A`` and ``B``."""

    client: httpx.AsyncClient
    runtime: Runtime
    state: GatewayState
    keys: dict[str, str]

    @property
    def store(self) -> Store:
        assert self.runtime.store is not None
        return self.runtime.store

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}

    async def chat(self, who: str, body: dict[str, Any], **headers: str) -> httpx.Response:
        return await self.client.post("/v1/chat/completions", json=body, headers=self.auth(who) | headers)

    async def import_persona(self, who: str, text: str, **params: str) -> httpx.Response:
        return await self.client.post(
            "/api/personas",
            params={"filename": "p.yaml", **params},
            content=text.encode(),
            headers=self.auth(who),
        )


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    keys: dict[str, str] = {}
    runtime = await open_runtime(Settings.load(data_dir=tmp_path, auth=True), backend=FakeBackend())
    try:
        assert runtime.store is not None
        for name in "AB":
            keys[name] = (await runtime.store.create_api_key(name))[1]
        app = create_app(runtime)
        state: GatewayState = app.state.gateway
        await state.catalog.load()  # what the lifespan does (ASGITransport runs none)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield Gateway(client, runtime, state, keys)
    finally:
        await runtime.aclose()


def _error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    error: dict[str, Any] = body["error"]
    return error


HI = {"role": "user", "content": "hi"}


# --- 1. /readyz when the backend's health check itself fails ----------------------------------------------------


class RaisingHealth(FakeBackend):
    """A backend whose health check raises (a parser that met JSON of an unexpected shape)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def health(self) -> BackendHealth:
        self.calls += 1
        if self.calls < 3:
            raise AttributeError("'list' object has no attribute 'get'")
        return BackendHealth(True, "raising", "m")


async def test_a_health_check_that_raises_is_not_ready_not_a_500(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    backend = RaisingHealth()
    readiness = Readiness(gateway.store, backend, ttl=0)
    checks = await readiness.checks()
    assert checks["database"] == {"ok": True}
    assert checks["llm"]["ok"] is False and "AttributeError" in checks["llm"]["detail"]
    await readiness.checks()
    assert caplog.text.count("health check raised") == 1  # every probe fails alike: logged once
    assert (await readiness.checks())["llm"]["ok"]  # and it recovers
    gateway.state.readiness = Readiness(gateway.store, RaisingHealth(), ttl=0)
    response = await gateway.client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "not ready",
        "checks": {"database": {"ok": True}, "llm": {"ok": False}},
    }
    detailed = (await gateway.client.get("/readyz", headers=gateway.auth("A"))).json()["checks"]["llm"]
    assert detailed["ok"] is False and detailed["detail"]


# --- 2. a failed delete of another key's session leaves that session's conversation alone -------------------------


async def test_a_delete_by_another_key_does_not_evict_the_owners_conversation(gateway: Gateway) -> None:
    assert (
        await gateway.chat("A", {"model": "nova", "messages": [HI]}, **{"X-Session-Id": "s1"})
    ).status_code == 200
    cached = gateway.store.cache.conversation("s1")
    assert cached is not None
    refused = await gateway.client.delete("/api/sessions/s1", headers=gateway.auth("B"))
    assert refused.status_code == 404 and _error(refused)["code"] == "session_not_found"
    # The owner's replies queue on this object's lock: a fresh copy would let a second reply run alongside.
    again = gateway.store.cache.conversation("s1")
    assert again is not None and again[1] is cached[1]
    assert (await gateway.client.delete("/api/sessions/s1", headers=gateway.auth("A"))).status_code == 204
    assert gateway.store.cache.conversation("s1") is None


# --- 3. max_input_chars holds for every message that is stored ---------------------------------------------------


@pytest.mark.parametrize("role", ["user", "assistant"])
async def test_a_long_history_message_is_refused_and_nothing_stored(gateway: Gateway, role: str) -> None:
    # A viewer's message is held to max_input_chars; a reply sent back to the longest one a request may ask for.
    limit = gateway.state.settings.max_input_chars if role == "user" else MAX_REPLY_CHARS
    history = [{"role": "user", "content": "x"}, {"role": role, "content": "y" * (limit + 1)}]
    response = await gateway.chat("A", {"model": "nova", "messages": [*history, HI]})
    assert response.status_code == 400
    error = _error(response)
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert str(limit) in error["message"]
    assert await gateway.store.list_sessions(owner=await _key_id(gateway, "A")) == []


async def test_history_within_the_limit_is_stored(gateway: Gateway) -> None:
    limit = gateway.state.settings.max_input_chars
    # A reply longer than a viewer's message may be (a client that asked for many tokens) is stored as sent.
    history = [
        {"role": "user", "content": "x" * limit},
        {"role": "assistant", "content": "y" * MAX_REPLY_CHARS},
    ]
    response = await gateway.chat("A", {"model": "nova", "messages": [*history, HI]})
    assert response.status_code == 200
    stored = await gateway.store.list_messages(response.headers["x-session-id"])
    assert [len(t.content) for t in stored[:2]] == [limit, MAX_REPLY_CHARS]


async def _key_id(gateway: Gateway, who: str) -> str:
    record = await gateway.store.verify_api_key(gateway.keys[who])
    assert record is not None
    return record.id


# --- 4. persona names resolve alike before and after a restart; imports may not take another's name --------------


async def test_an_import_may_not_take_another_personas_name(gateway: Gateway) -> None:
    assert (await gateway.import_persona("A", "id: zeta\nname: Alpha\ndescription: A's\n")).status_code == 201
    taken = await gateway.import_persona("B", "id: a0\nname: alpha\ndescription: B's\n")
    assert taken.status_code == 409, taken.text
    error = _error(taken)
    assert error["code"] == "persona_name_taken" and "zeta" in error["message"]
    # Nor the name of a bundled persona, nor a name that is another persona's id.
    assert (await gateway.import_persona("B", "id: n2\nname: NOVA\ndescription: x\n")).status_code == 409
    assert (await gateway.import_persona("B", "id: z2\nname: Zeta\ndescription: x\n")).status_code == 409
    # The owner replaces its own persona, name and all.
    replaced = await gateway.import_persona("A", "id: zeta\nname: Alpha\ndescription: v2\n", replace="true")
    assert replaced.status_code == 201, replaced.text
    resolved = await gateway.client.get("/api/personas/alpha", headers=gateway.auth("B"))
    assert resolved.json()["id"] == "zeta"


async def test_an_owner_replaces_its_persona_under_its_name_after_a_file_persona_took_it(
    gateway: Gateway, tmp_path: Path
) -> None:
    assert (await gateway.import_persona("A", "id: zeta\nname: Alpha\ndescription: v1\n")).status_code == 201
    card = tmp_path / "c.yaml"  # the operator adds a card file of that name to the files afterwards
    card.write_text("id: alpha-file\nname: Alpha\ndescription: file\n", encoding="utf-8")
    PersonaLibrary(gateway.state.settings.personas_dir).import_file(card)
    replaced = await gateway.import_persona("A", "id: zeta\nname: Alpha\ndescription: v2\n", replace="true")
    assert replaced.status_code == 201, replaced.text
    # A new name is still checked on replace.
    renamed = await gateway.import_persona("A", "id: zeta\nname: Nova\ndescription: v3\n", replace="true")
    assert renamed.status_code == 409 and _error(renamed)["code"] == "persona_name_taken"


async def test_a_nickname_is_a_name_an_import_may_not_take(gateway: Gateway, tmp_path: Path) -> None:
    card = tmp_path / "star.yaml"
    card.write_text("id: user-star\nname: Star\nnickname: Kiki\ndescription: file\n", encoding="utf-8")
    PersonaLibrary(gateway.state.settings.personas_dir).import_file(card)
    taken = await gateway.import_persona("A", "id: api-kiki\nname: Kiki\ndescription: x\n")
    assert taken.status_code == 409 and "user-star" in _error(taken)["message"]
    taken = await gateway.import_persona("A", "id: api-2\nname: Other\nnickname: STAR\ndescription: x\n")
    assert taken.status_code == 409


async def test_the_gateway_and_the_command_line_find_the_same_persona(
    gateway: Gateway, tmp_path: Path
) -> None:
    assert (
        await gateway.import_persona("A", "id: zeta\nname: Alpha\nnickname: Al\ndescription: x\n")
    ).status_code == 201
    settings = gateway.state.settings
    library = PersonaLibrary(settings.personas_dir, stored=await stored_personas(gateway.store))
    for asked in ("zeta", "ZETA", "alpha", "AL", "nova", "NOVA", "小星"):
        found = await gateway.client.get(f"/v1/models/{asked}", headers=gateway.auth("B"))
        assert found.status_code == 200, (asked, found.text)
        assert found.json()["id"] == library.get(asked).id, asked


async def test_names_shared_by_stored_personas_resolve_alike_before_and_after_a_restart(
    gateway: Gateway,
) -> None:
    """Two personas stored with one name (before imports were checked, or by two instances at once): the name
    resolves to the same one whatever order they were stored or loaded in."""
    catalog = gateway.state.catalog
    for persona_id, name in (
        ("zeta", "Alpha"),
        ("a0", "alpha"),
    ):  # stored straight, as another instance would
        catalog._stored[persona_id] = load_persona_bytes(
            f"id: {persona_id}\nname: {name}\n".encode(), "p.yaml"
        )
    before = (await catalog.get("Alpha")).id
    catalog._stored = dict(sorted(catalog._stored.items()))  # the order load() gives them after a restart
    assert (await catalog.get("Alpha")).id == before == "a0"
    assert (await catalog.get("ALPHA")).id == "a0"
    assert (await catalog.get("zeta")).id == "zeta"  # an id first, exactly


# --- 5. validation errors name the field and the problem ---------------------------------------------------------


async def _raw(gateway: Gateway, content: bytes, content_type: str) -> dict[str, Any]:
    response = await gateway.client.post(
        "/v1/chat/completions", content=content, headers=gateway.auth("A") | {"content-type": content_type}
    )
    assert response.status_code == 400, response.text
    assert _error(response)["type"] == "invalid_request_error"
    return _error(response)


async def test_invalid_json_names_no_param(gateway: Gateway) -> None:
    error = await _raw(gateway, b"{", "application/json")
    assert error["param"] is None and "not valid JSON" in error["message"]


async def test_an_empty_body_is_called_empty(gateway: Gateway) -> None:
    error = await _raw(gateway, b"", "application/json")
    assert error["param"] is None and "empty" in error["message"]


async def test_json_sent_as_text_is_told_the_content_type(gateway: Gateway) -> None:
    body = b'{"model":"nova","messages":[{"role":"user","content":"hi"}]}'
    error = await _raw(gateway, body, "text/plain")
    assert "application/json" in error["message"] and "JSON object" in error["message"]
    assert error["param"] is None


async def test_a_union_reports_the_error_of_the_member_the_value_is_of(gateway: Gateway) -> None:
    too_many = await gateway.chat("A", {"model": "nova", "messages": [HI], "stop": ["a", "b", "c", "d", "e"]})
    assert too_many.status_code == 400
    assert _error(too_many)["param"] == "stop" and "at most 4" in _error(too_many)["message"]
    neither = await gateway.chat("A", {"model": "nova", "messages": [HI], "stop": 5})
    message = _error(neither)["message"]
    assert "string" in message and "list" in message


async def test_a_non_text_content_part_is_said_to_be_unsupported(gateway: Gateway) -> None:
    parts = [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "http://x"}}]
    response = await gateway.chat("A", {"model": "nova", "messages": [{"role": "user", "content": parts}]})
    assert response.status_code == 400
    error = _error(response)
    assert error["param"] == "messages.0.content.1"
    assert "only text" in error["message"] and "image_url" in error["message"]
    assert "valid string" not in error["message"]


@pytest.mark.parametrize(
    ("field", "body"),
    [
        ("user", {"user": "u" * 129}),
        ("messages.0.name", {"messages": [{"role": "user", "content": "hi", "name": "n" * 65}]}),
        ("stop", {"stop": "s" * 201}),
        ("stop.0", {"stop": ["s" * 201]}),
        ("model", {"model": "m" * 201}),
    ],
)
async def test_long_strings_are_said_to_be_too_many_characters(
    gateway: Gateway, field: str, body: dict[str, Any]
) -> None:
    response = await gateway.chat("A", {"model": "nova", "messages": [HI]} | body)
    assert response.status_code == 400
    error = _error(response)
    assert error["param"] == field and "characters" in error["message"] and "items" not in error["message"]


# --- 6-8. a missing persona's delete, HEAD probes, a model by id --------------------------------------------------


async def test_deleting_a_persona_that_does_not_exist_is_a_404(gateway: Gateway) -> None:
    response = await gateway.client.delete("/api/personas/doesnotexist", headers=gateway.auth("A"))
    assert response.status_code == 404
    assert _error(response)["code"] == "persona_not_found"
    bundled = await gateway.client.delete("/api/personas/nova", headers=gateway.auth("A"))
    assert bundled.status_code == 400 and _error(bundled)["code"] == "invalid_persona"


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_health_routes_answer_head(gateway: Gateway, path: str) -> None:
    response = await gateway.client.head(path)
    assert response.status_code == 200
    assert response.status_code == (await gateway.client.get(path)).status_code


async def test_a_model_is_retrieved_by_id_with_the_sdk(gateway: Gateway) -> None:
    sdk = openai.AsyncOpenAI(
        base_url="http://gateway/v1", api_key=gateway.keys["A"], max_retries=0, http_client=gateway.client
    )
    model = await sdk.models.retrieve("nova")
    listed = next(m for m in (await sdk.models.list()).data if m.id == "nova")
    assert model.model_dump() == listed.model_dump()
    with pytest.raises(openai.NotFoundError) as missing:
        await sdk.models.retrieve("nobody")
    assert missing.value.code == "model_not_found"
    body = missing.value.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}
    unauthorised = await gateway.client.get("/v1/models/nova")
    assert unauthorised.status_code == 401


@pytest.mark.parametrize(
    ("field", "text"),
    [("user", '"u\\ud800"'), ("stop", '"\\ud800"'), ("stop.0", '["\\ud800"]'), ("model", '"a\\u0000"')],
)
async def test_length_limited_strings_still_say_what_text_they_cannot_take(
    gateway: Gateway, field: str, text: str
) -> None:
    """A length-constrained string refuses a lone surrogate itself, unless our check comes first: "unable to parse
    raw data as a unicode string" said nothing of what was wrong."""
    fields = {
        "model": '"nova"',
        "messages": '[{"role": "user", "content": "hi"}]',
        field.partition(".")[0]: text,
    }
    body = (
        "{" + ", ".join(f'"{name}": {value}' for name, value in fields.items()) + "}"
    )  # JSON escapes kept as sent
    error = await _raw(gateway, body.encode(), "application/json")
    assert error["param"] == field and ("surrogate" in error["message"] or "NUL" in error["message"])


# --- a session keeps its viewer: memories never mix ---------------------------------------------------------------


async def test_another_viewer_on_a_session_is_refused_and_nothing_stored(gateway: Gateway) -> None:
    room = {"X-Session-Id": "room1"}
    made = await gateway.chat("A", {"model": "nova", "messages": [HI]}, **room, **{"X-Viewer-Id": "alice"})
    assert made.status_code == 200
    stored = len(await gateway.store.list_messages("room1"))
    other = await gateway.chat("A", {"model": "nova", "messages": [HI]}, **room, **{"X-Viewer-Id": "bob"})
    assert other.status_code == 409, other.text
    error = _error(other)
    assert error["code"] == "session_viewer_mismatch" and error["param"] == "X-Viewer-Id"
    assert len(await gateway.store.list_messages("room1")) == stored
    # The session's own viewer, and a request that names none, go on as before.
    for headers in ({"X-Viewer-Id": "alice"}, {}):
        again = await gateway.chat("A", {"model": "nova", "messages": [HI]}, **room, **headers)
        assert again.status_code == 200, again.text
    record = await gateway.store.get_session("room1")
    assert record is not None and record.viewer_id is not None and record.viewer_id.endswith(":alice")

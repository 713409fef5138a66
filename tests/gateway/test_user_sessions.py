"""The ``user`` field names the end user, not a conversation: their session is one per API key, persona and user.

Driven by the real ``openai`` SDK against ``vstreamer serve``; the response's ``X-Session-Id`` says which session
a request went to.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import openai
import pytest

from tests.gateway.conftest import GatewayServer
from tests.gateway.test_auth import create_key

pytestmark = pytest.mark.integration


def client(server: GatewayServer, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=30)


def ask(sdk: openai.OpenAI, model: str, user: str, text: str) -> str:
    """Send ``text`` as ``user``; the session it went to."""
    raw = sdk.chat.completions.with_raw_response.create(
        model=model, user=user, messages=[{"role": "user", "content": text}]
    )
    assert raw.parse().choices[0].message.content
    return raw.headers["x-session-id"]


def said(server: GatewayServer, session_id: str) -> list[str]:
    return [t.content for t in server.messages(session_id) if t.role == "user"]


def viewer_of(server: GatewayServer, session_id: str) -> str | None:
    with sqlite3.connect(server.data_dir / "vstreamer.db") as db:
        row = db.execute("SELECT viewer_id FROM sessions WHERE id = ?", (session_id,)).fetchone()
    return row[0]


def test_one_user_talks_to_two_personas_in_two_sessions(fake_gateway: GatewayServer) -> None:
    """It was a 400 ("session belongs to persona"): the first persona's session was the user's only one. The user
    stays one viewer (what the personas remember of them is kept under one id, as before)."""
    sdk = client(fake_gateway)
    with_xiaoxing = ask(sdk, "xiaoxing", "alice", "我叫小明")
    with_nova = ask(sdk, "nova", "alice", "hi Nova")
    assert ask(sdk, "xiaoxing", "alice", "还记得我吗") == with_xiaoxing != with_nova
    assert with_xiaoxing.startswith("user-") and with_nova.startswith("user-")
    assert said(fake_gateway, with_xiaoxing) == ["我叫小明", "还记得我吗"]
    assert said(fake_gateway, with_nova) == ["hi Nova"]
    assert viewer_of(fake_gateway, with_xiaoxing) == viewer_of(fake_gateway, with_nova) == "local:alice"


def test_two_api_keys_users_of_one_name_are_two_people(start_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Session ids were one namespace for every key: the second key's "alice" was a 404 for ever. An explicit
    ``X-Session-Id`` is still the client's id as sent, checked against its key and persona."""
    data_dir = tmp_path / "gw"
    one, two = create_key(data_dir, "one"), create_key(data_dir, "two")
    server = start_gateway({"VSTREAMER_BACKEND": "fake"}, auth=True)
    first, second = client(server, one), client(server, two)
    ones = ask(first, "nova", "alice", "my cat is Mimi")
    twos = ask(second, "nova", "alice", "hello")
    assert ask(second, "nova", "alice", "again") == twos != ones
    assert said(server, ones) == ["my cat is Mimi"] and said(server, twos) == ["hello", "again"]
    assert viewer_of(server, ones) != viewer_of(server, twos)
    hi = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.NotFoundError) as other_keys:
        second.chat.completions.create(model="nova", messages=hi, extra_headers={"X-Session-Id": ones})
    assert other_keys.value.code == "session_not_found"
    with pytest.raises(openai.BadRequestError, match="belongs to persona"):
        first.chat.completions.create(model="xiaoxing", messages=hi, extra_headers={"X-Session-Id": ones})
    assert said(server, ones) == ["my cat is Mimi"]


def test_a_session_user_named_before_goes_on_for_its_key_and_persona(start_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Sessions stored before: ``user`` was the session id itself ("alice"; any other string hashed alone). The
    key and persona it was made with go on with it; another key, or another persona, gets a session of its own
    (no 404, no 400) and leaves it alone."""
    data_dir = tmp_path / "gw"
    one, two = create_key(data_dir, "one"), create_key(data_dir, "two")
    server = start_gateway({"VSTREAMER_BACKEND": "fake"}, auth=True)
    first, second = client(server, one), client(server, two)
    # What an earlier version stored for key one's {"user": "alice"} with nova: the session "alice".
    first.chat.completions.create(
        model="nova",
        messages=[{"role": "user", "content": "before"}],
        extra_headers={"X-Session-Id": "alice"},
    )
    assert ask(first, "nova", "alice", "after") == "alice"
    with_xiaoxing = ask(first, "xiaoxing", "alice", "hi")
    twos = ask(second, "nova", "alice", "hi")
    assert len({"alice", with_xiaoxing, twos}) == 3
    assert said(server, "alice") == ["before", "after"]

"""API keys: required by default, hashed at rest, sessions isolated per key; --no-auth stays on localhost."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.integration


def create_key(data_dir: Path, name: str) -> str:
    env = os.environ | {"VSTREAMER_DATA_DIR": str(data_dir)}
    out = subprocess.run([sys.executable, "-m", "vstreamer", "keys", "create", name], env=env, capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    return out.strip().splitlines()[-1]


def test_keys_required_and_sessions_isolated(start_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data_dir = tmp_path / "gw"
    alice, bob = create_key(data_dir, "alice"), create_key(data_dir, "bob")
    server = start_gateway({"VSTREAMER_BACKEND": "fake"}, auth=True)
    url = f"{server.url}/v1"
    assert httpx.get(f"{url}/models").status_code == 401
    assert httpx.get(f"{url}/models", headers={"Authorization": "Bearer vs-wrong"}).json()["error"][
        "type"
    ] == ("authentication_error")
    as_alice = openai.OpenAI(base_url=url, api_key=alice, max_retries=0)
    as_bob = openai.OpenAI(base_url=url, api_key=bob, max_retries=0)
    as_alice.chat.completions.create(
        model="nova", user="shared-name", messages=[{"role": "user", "content": "secret"}]
    )
    with pytest.raises(openai.NotFoundError):  # bob cannot write into alice's session
        as_bob.chat.completions.create(
            model="nova", user="shared-name", messages=[{"role": "user", "content": "x"}]
        )
    bob_sessions = httpx.get(f"{server.url}/api/sessions", headers={"Authorization": f"Bearer {bob}"}).json()[
        "data"
    ]
    assert bob_sessions == []
    leak = httpx.get(
        f"{server.url}/api/sessions/shared-name/messages", headers={"Authorization": f"Bearer {bob}"}
    )
    assert leak.status_code == 404
    with sqlite3.connect(data_dir / "vstreamer.db") as db:
        stored = [row[0] for row in db.execute("SELECT key_hash FROM api_keys")]
    assert alice not in stored and bob not in stored and len(stored[0]) == 64


def test_no_auth_refuses_public_bind(tmp_path: Path) -> None:
    env = os.environ | {"VSTREAMER_DATA_DIR": str(tmp_path), "VSTREAMER_BACKEND": "fake"}
    result = subprocess.run([sys.executable, "-m", "vstreamer", "serve", "--no-auth", "--host", "0.0.0.0"], env=env,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2 and "local use only" in result.stderr


def test_only_the_importing_key_replaces_or_deletes_a_persona(
    start_gateway, tmp_path: Path, shared_data
) -> None:  # type: ignore[no-untyped-def]
    data_dir = tmp_path / "gw"
    alice, bob = create_key(data_dir, "alice"), create_key(data_dir, "bob")
    server = start_gateway({"VSTREAMER_BACKEND": "fake"}, auth=True)
    card = (shared_data / "cards" / "seraphina.png").read_bytes()

    def call(method: str, key: str, path: str, **kwargs: object) -> httpx.Response:
        return httpx.request(
            method, f"{server.url}{path}", headers={"Authorization": f"Bearer {key}"}, **kwargs
        )  # type: ignore[arg-type]

    imported = {"params": {"filename": "seraphina.png"}, "content": card}
    assert call("POST", alice, "/api/personas", **imported).status_code == 201
    replaced = call(
        "POST", bob, "/api/personas", params={"filename": "seraphina.png", "replace": "true"}, content=card
    )
    assert replaced.status_code == 403 and replaced.json()["error"]["code"] == "persona_owned_elsewhere"
    assert call("DELETE", bob, "/api/personas/seraphina").status_code == 403
    # Every key may still talk to it; its owner may replace and delete it.
    chat = {"model": "seraphina", "messages": [{"role": "user", "content": "hi"}]}
    assert call("POST", bob, "/v1/chat/completions", json=chat).status_code == 200
    again = call(
        "POST", alice, "/api/personas", params={"filename": "seraphina.png", "replace": "true"}, content=card
    )
    assert again.status_code == 201
    assert call("DELETE", alice, "/api/personas/seraphina").status_code == 204


def test_readiness_tells_its_details_only_to_a_key_holder(start_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """``/readyz`` needs no key (probes call it), but the error behind a failing check (the LLM server's address)
    is for key holders only."""
    data_dir = tmp_path / "gw"
    key = create_key(data_dir, "ops")
    port = free_port()
    server = start_gateway({"VSTREAMER_BACKEND": "openai", "VSTREAMER_BASE_URL": f"http://127.0.0.1:{port}/v1",
                            "VSTREAMER_MODEL": "m", "VSTREAMER_CONNECT_TIMEOUT": "1"}, auth=True)  # fmt: skip
    anonymous = httpx.get(f"{server.url}/readyz", timeout=30)
    assert anonymous.status_code == 503
    assert anonymous.json() == {
        "status": "not ready",
        "checks": {"database": {"ok": True}, "llm": {"ok": False}},
    }
    wrong = httpx.get(f"{server.url}/readyz", headers={"Authorization": "Bearer vs-wrong"}, timeout=30)
    assert wrong.json()["checks"]["llm"] == {"ok": False}
    known = httpx.get(f"{server.url}/readyz", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert known.status_code == 503
    llm = known.json()["checks"]["llm"]
    assert llm["ok"] is False and llm["backend"] == "openai" and "Connect" in llm["detail"], llm

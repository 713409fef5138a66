"""The memory routes of ``vstreamer serve``: list, forget and export what is remembered about viewers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from tests.gateway.conftest import GatewayServer
from vstreamer.engine import Fact, ViewerKey
from vstreamer.store import open_store

pytestmark = pytest.mark.integration


def seed(data_dir: Path) -> None:
    async def write() -> None:
        store = await open_store(None, data_dir)
        alice = ViewerKey("api", "local:alice")  # API viewers live under their key ("local" without auth)
        await store.add_facts(alice, [Fact(alice, "喜欢猫"), Fact(alice, "下周考试")])
        bob = ViewerKey("bilibili", "111")
        await store.add_facts(bob, [Fact(bob, "喜欢狗")])
        other_key = ViewerKey("api", "key2:alice")
        await store.add_facts(other_key, [Fact(other_key, "另一个 API key 的观众")])
        await store.close()

    asyncio.run(write())


def session_viewer(data_dir: Path, session_id: str) -> str | None:
    async def read() -> str | None:
        store = await open_store(None, data_dir)
        record = await store.get_session(session_id)
        await store.close()
        return record.viewer_id if record else None

    return asyncio.run(read())


def test_viewer_memory_routes(tmp_path: Path) -> None:
    data_dir = tmp_path / "gw"
    data_dir.mkdir()
    seed(data_dir)
    server = GatewayServer(data_dir, {"VSTREAMER_BACKEND": "fake"})
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            body = {"model": "xiaoxing", "messages": [{"role": "user", "content": "主播好"}]}
            reply = client.post(
                "/v1/chat/completions", json=body, headers={"X-Session-Id": "s1", "X-Viewer-Id": "alice"}
            )
            assert reply.status_code == 200
            assert session_viewer(data_dir, "s1") == "local:alice"

            listed = client.get("/api/viewers/api/alice/memory").json()["data"]
            assert sorted(f["fact"] for f in listed) == ["下周考试", "喜欢猫"]
            assert all(f["user_id"] == "alice" and f["platform"] == "api" for f in listed)
            assert [f["fact"] for f in client.get("/api/viewers/bilibili/111/memory").json()["data"]] == [
                "喜欢狗"
            ]

            exported = client.get("/api/memory/export").json()["data"]
            assert {f["fact"] for f in exported} == {"下周考试", "喜欢猫", "喜欢狗"}  # not another key's
            assert [f["fact"] for f in client.get("/api/memory/export?platform=bilibili").json()["data"]] == [
                "喜欢狗"
            ]

            one = listed[0]["id"]
            assert client.delete(f"/api/viewers/api/alice/memory/{one}").json() == {"deleted": 1}
            assert client.delete(f"/api/viewers/api/alice/memory/{one}").status_code == 404
            # Forget me: her facts, and her session s1 with its messages (her "主播好" and its reply).
            forgotten = client.delete("/api/viewers/api/alice/memory").json()
            assert forgotten == {"deleted": 1, "sessions": 1, "messages": 2, "summaries": 0}
            assert client.get("/api/sessions/s1/messages").status_code == 404
            assert client.get("/api/viewers/api/alice/memory").json()["data"] == []
            assert "vstreamer_persona_drift_events" in client.get("/metrics").text
    finally:
        server.stop()


def test_viewer_ids_are_read_as_utf8_and_must_be_reachable_by_the_memory_routes(tmp_path: Path) -> None:
    """A viewer's memory must be readable and forgettable through REST: an id with "/" never matches the route's
    one path segment (refused), and a non-ASCII one is the viewer's text, not its UTF-8 bytes read as Latin-1."""
    data_dir = tmp_path / "gw"
    server = GatewayServer(data_dir, {"VSTREAMER_BACKEND": "fake"})
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            body = {"model": "xiaoxing", "messages": [{"role": "user", "content": "主播好"}]}
            for bad in (b"alice/bob", b"a\tb", b"x" * 101, b"\xff\xfe"):
                refused = client.post("/v1/chat/completions", json=body,
                                      headers={"X-Session-Id": "s-bad", "X-Viewer-Id": bad})  # fmt: skip
                assert refused.status_code == 400, bad
                assert refused.json()["error"]["code"] == "invalid_viewer_id"
            assert client.get("/api/sessions/s-bad/messages").status_code == 404  # nothing stored for them
            headers = {"X-Session-Id": "s-zoe", "X-Viewer-Id": "Zoë 观众".encode()}
            assert client.post("/v1/chat/completions", json=body, headers=headers).status_code == 200
            assert session_viewer(data_dir, "s-zoe") == "local:Zoë 观众"
    finally:
        server.stop()

    async def remember() -> None:
        store = await open_store(None, data_dir)
        zoe = ViewerKey("api", "local:Zoë 观众")
        await store.add_facts(zoe, [Fact(zoe, "喜欢猫")])
        await store.close()

    asyncio.run(remember())
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            path = "/api/viewers/api/Zo%C3%AB%20%E8%A7%82%E4%BC%97/memory"
            assert [f["fact"] for f in client.get(path).json()["data"]] == ["喜欢猫"]
            assert client.delete(path).json() == {"deleted": 1, "sessions": 1, "messages": 2, "summaries": 0}
    finally:
        server.stop()

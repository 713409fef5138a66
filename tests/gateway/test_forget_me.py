""" "Forget me" through the gateway: what a viewer said leaves the prompts and the database, others' talk stays.

The gateway ``vstreamer serve`` builds, on uvicorn on a free port, in process: the fake backend's prompts can be read.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn

from tests.conftest import free_port
from vstreamer.config import Settings
from vstreamer.engine import Fact, ViewerKey
from vstreamer.engine.extract import EXTRACT_TAG
from vstreamer.engine.summary import SUMMARY_TAG
from vstreamer.gateway import create_app
from vstreamer.llm import FakeBackend
from vstreamer.runtime import Runtime, open_runtime
from vstreamer.store import Store

pytestmark = pytest.mark.integration

ALICE = ViewerKey("api", "local:alice")  # API viewers live under their key ("local" without auth)
SECRET = "紫色水獭"
"""What Alice says: no prompt or stored message may hold it once she is forgotten."""


@dataclass
class Served:
    url: str
    runtime: Runtime
    backend: FakeBackend
    sdk: openai.AsyncOpenAI
    http: httpx.AsyncClient

    @property
    def store(self) -> Store:
        assert self.runtime.store is not None
        return self.runtime.store

    async def say(
        self, text: str, *, viewer: str | None, session: str | None = None, history: tuple[str, ...] = ()
    ) -> str:
        """One message from ``viewer`` (``None``: no ``X-Viewer-Id``; with ``history`` sent before it when
        stateless); returns the session id."""
        headers = ({"X-Viewer-Id": viewer} if viewer else {}) | ({"X-Session-Id": session} if session else {})
        sent = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(history)]
        raw = await self.sdk.chat.completions.with_raw_response.create(
            model="xiaoxing", messages=[*sent, {"role": "user", "content": text}], extra_headers=headers
        )
        assert raw.parse().choices[0].message.content == f"收到：{text}"
        return raw.headers["x-session-id"]

    def prompts(self) -> list[str]:
        """The reply prompts the backend received, as text; background jobs' (fact extraction, summary folds) left
        out."""
        texts = ["\n".join(m.content for m in r) for r in self.backend.requests]
        return [t for t in texts if not t.startswith((EXTRACT_TAG, SUMMARY_TAG))]

    def last_prompt(self) -> str:
        return self.prompts()[-1]


@asynccontextmanager
async def _serve(data_dir: Path) -> AsyncIterator[Served]:
    """The gateway over ``data_dir``; served again over the same one, it is a restart (nothing held in memory)."""
    backend = FakeBackend()
    runtime = await open_runtime(Settings.load(data_dir=data_dir, auth=False), backend=backend)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(runtime), host="127.0.0.1", port=port, log_level="warning", access_log=False
        )
    )
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not serving.done(), "the gateway did not start"
            await asyncio.sleep(0.02)
        url = f"http://127.0.0.1:{port}"
        sdk = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=30)
        async with sdk, httpx.AsyncClient(base_url=url, timeout=30) as http:
            yield Served(url, runtime, backend, sdk, http)
    finally:
        server.should_exit = True
        await serving
        await runtime.aclose()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async with _serve(tmp_path) as gateway:
        yield gateway


async def test_forget_me_erases_what_the_viewer_said_from_prompts_and_storage(served: Served) -> None:
    await served.say(f"我的秘密是{SECRET}", viewer="alice", session="s-alice")
    await served.say("我喜欢爵士乐", viewer="bob", session="s-bob")
    # A stateless request of hers: the history she sends is stored as a session of its own.
    stateless = await served.say(
        "还有呢", viewer="alice", history=(f"{SECRET}是我的", f"收到：{SECRET}是我的")
    )
    # A running summary written from her words (as a fold would write it) is in her session's next prompt.
    first = (await served.store.list_messages("s-alice"))[0]
    await served.store.save_summary("s-alice", f"alice 的秘密：{SECRET}", covers_until=first.id)
    await served.store.add_facts(ALICE, [Fact(ALICE, f"秘密是{SECRET}")])
    await served.say("你还记得吗", viewer="alice", session="s-alice")
    assert SECRET in served.last_prompt()  # (the test sees what the persona reads)

    await served.runtime.engine.tasks.drain()
    asked = len(served.backend.requests)

    forgotten = await served.http.delete("/api/viewers/api/alice/memory")
    assert forgotten.status_code == 200, forgotten.text
    assert forgotten.json() == {"deleted": 1, "sessions": 2, "messages": 8, "summaries": 1}

    await served.say("我回来了", viewer="alice", session="s-alice")
    await served.runtime.engine.tasks.drain()
    assert "我回来了" in served.last_prompt()
    # Nothing the backend was asked since holds her words: not the reply's prompt, nor a background job's.
    assert all(SECRET not in m.content for r in served.backend.requests[asked:] for m in r)
    stored = await served.http.get("/api/sessions/s-alice/messages")
    assert [m["content"] for m in stored.json()["data"]] == ["我回来了", "收到：我回来了"]
    assert (await served.http.get(f"/api/sessions/{stateless}/messages")).status_code == 404
    assert all(SECRET not in s.text for s in await served.store.summary_history("s-alice"))
    assert (await served.http.get("/api/viewers/api/alice/memory")).json() == {"data": []}
    # Bob's talk is his still, in storage and in his next prompt.
    bob = [t.content for t in await served.store.list_messages("s-bob")]
    assert bob == ["我喜欢爵士乐", "收到：我喜欢爵士乐"]
    await served.say("再来一首", viewer="bob", session="s-bob")
    assert "我喜欢爵士乐" in served.last_prompt()


async def test_forget_me_of_a_viewer_with_nothing_stored_deletes_nothing(served: Served) -> None:
    await served.say("hello", viewer="bob", session="s-bob")
    forgotten = await served.http.delete("/api/viewers/api/nobody/memory")
    assert forgotten.json() == {"deleted": 0, "sessions": 0, "messages": 0, "summaries": 0}
    assert len(await served.store.list_messages("s-bob")) == 2


async def _viewerless_session_named_by(gateway: Served, viewer: str) -> str:
    """A session stored without a viewer (a stateless request's, no ``X-Viewer-Id``), then named by ``viewer``."""
    session = await gateway.say("你好", viewer=None)
    stored = await gateway.store.get_session(session)
    assert stored is not None and stored.viewer_id is None
    await gateway.say(f"我的秘密是{SECRET}", viewer=viewer, session=session)
    return session


async def test_a_viewer_a_session_took_on_is_its_viewer_after_a_restart(tmp_path: Path) -> None:
    async with _serve(tmp_path) as gateway:
        session = await _viewerless_session_named_by(gateway, "alice")
    async with _serve(tmp_path) as restarted:
        with pytest.raises(openai.ConflictError) as refused:
            await restarted.say("我也来", viewer="bob", session=session)
        assert refused.value.code == "session_viewer_mismatch"
        await restarted.say("还是我", viewer="alice", session=session)


async def test_forget_me_after_a_restart_deletes_a_session_that_took_the_viewer_on(tmp_path: Path) -> None:
    async with _serve(tmp_path) as gateway:
        session = await _viewerless_session_named_by(gateway, "alice")
    async with _serve(tmp_path) as restarted:
        forgotten = await restarted.http.delete("/api/viewers/api/alice/memory")
        assert forgotten.json() == {"deleted": 0, "sessions": 1, "messages": 4, "summaries": 0}
        assert (await restarted.http.get(f"/api/sessions/{session}/messages")).status_code == 404

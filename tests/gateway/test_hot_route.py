"""The chat route served before FastAPI, in process: failures nobody expected still answer in OpenAI's schema."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

import httpx
import orjson
import pytest

from vstreamer.config import Settings
from vstreamer.engine import Conversation, Turn
from vstreamer.errors import StoreError
from vstreamer.gateway import create_app
from vstreamer.gateway.auth import LOCAL_PRINCIPAL
from vstreamer.gateway.chat import user_session_id
from vstreamer.llm import FakeBackend
from vstreamer.llm.base import ChatMessage
from vstreamer.runtime import Runtime, open_runtime
from vstreamer.store import open_store

S1 = user_session_id(LOCAL_PRINCIPAL, "nova", "s1")
"""The session of ``"user": "s1"``, the requests' below."""


def broken(_: Sequence[ChatMessage]) -> str:
    raise ValueError("a bug, not a backend failure")


@pytest.mark.parametrize("stream", [False, True])
async def test_an_unexpected_failure_before_the_reply_is_an_openai_error(
    tmp_path: Path, stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = await open_runtime(Settings.load(data_dir=tmp_path, auth=False), backend=FakeBackend(broken))
    try:
        transport = httpx.ASGITransport(app=create_app(runtime))
        # Auth is off: the gateway answers only under a loopback name.
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            body = {
                "model": "nova",
                "stream": stream,
                "user": "s1",
                "messages": [{"role": "user", "content": "hi"}],
            }
            response = await client.post("/v1/chat/completions", json=body)
            assert response.status_code == 500
            assert response.headers["x-session-id"] == S1  # which session holds the failed reply
            assert response.json()["error"] == {
                "message": "internal server error", "type": "server_error", "param": None, "code": None,
            }  # fmt: skip
            assert "unexpected error" in caplog.text  # logged with its traceback, for the operator
            stored = await runtime.store.list_messages(S1)  # type: ignore[union-attr]
            assert [(t.role, t.status, t.content) for t in stored] == [
                ("user", "complete", "hi"), ("assistant", "failed", ""),
            ]  # fmt: skip
            metrics = (await client.get("/metrics")).text
            assert 'vstreamer_requests_total{route="/v1/chat/completions",status="500"} 1.0' in metrics
    finally:
        await runtime.aclose()


_SCOPE = {
    "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
    "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions", "query_string": b"", "root_path": "",
    "headers": [(b"host", b"localhost"), (b"content-type", b"application/json")],
    "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
}  # fmt: skip


async def _stream_in_process(
    tmp_path: Path, answer: str, prepare: Callable[[Runtime], object] = lambda runtime: None
) -> list[list[bytes]]:
    """One streamed request straight through the ASGI app of a runtime whose model answers ``answer`` (``prepare``
    sees the runtime first; its client stays): the data of each event, per body message (the gateway's writes)."""
    runtime = await open_runtime(
        Settings.load(data_dir=tmp_path, auth=False), backend=FakeBackend(lambda _: answer)
    )
    request = orjson.dumps(
        {"model": "nova", "stream": True, "user": "s1", "messages": [{"role": "user", "content": "hi"}]}
    )
    sent: list[dict[str, object]] = []
    received = False

    async def receive() -> dict[str, object]:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": request, "more_body": False}
        await asyncio.Event().wait()  # the client stays
        raise AssertionError("unreachable")

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    try:
        prepare(runtime)
        await create_app(runtime)(dict(_SCOPE), receive, send)
    finally:
        await runtime.aclose()
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    assert sent[-1].get("more_body", False) is False
    bodies = [cast(bytes, m["body"]) for m in sent[1:]]
    events = [[line[6:] for line in body.split(b"\n\n") if line] for body in bodies]
    assert events[-1][-1] == b"[DONE]"
    return events


async def test_a_streamed_reply_ends_with_its_last_text_finish_and_done_in_one_write(tmp_path: Path) -> None:
    """The output guard holds a reply's last words until the end; they go out with the finish chunk and ``[DONE]``
    in the response's last body message (one network write, not two)."""
    reply = "Nice to see you again today"
    events = await _stream_in_process(tmp_path, reply)
    last = events[-1]
    finish = orjson.loads(last[-2])["choices"][0]
    assert finish["finish_reason"] == "stop" and finish["delta"] == {}
    tail = orjson.loads(last[-3])["choices"][0]["delta"]["content"]
    assert tail and reply.endswith(tail)
    chunks = [orjson.loads(event) for body in events for event in body if event != b"[DONE]"]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == reply
    assert len(events) >= 2  # the first text went out before the end


async def test_a_reply_the_database_refuses_ends_with_an_error_not_a_silent_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reply is committed before ``[DONE]``: when that commit fails, the client is told so in the stream."""

    def refuse_replies(runtime: Runtime) -> None:
        store = runtime.store
        assert store is not None
        save_turn = store.save_turn

        async def refusing(conversation: Conversation, turn: Turn) -> None:
            if turn.role == "assistant":
                raise StoreError("the database is full")
            await save_turn(conversation, turn)

        monkeypatch.setattr(store, "save_turn", refusing)

    events = await _stream_in_process(tmp_path, "Nice to see you", refuse_replies)
    last = events[-1]
    error = orjson.loads(last[-2])["error"]
    assert "the database is full" in error["message"]
    assert not any(b'"finish_reason":"stop"' in event for body in events for event in body)


async def test_a_bug_mid_stream_still_ends_the_stream_with_an_error_and_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not only the expected failures: an error of any kind after the first text ends the stream the API's way (an
    error event, then ``[DONE]``; no internals), and the partial reply is stored as failed."""

    def buggy(runtime: Runtime) -> None:
        backend = runtime.engine.backend
        original = backend.stream

        async def stream(messages: Sequence[ChatMessage], params: object):  # type: ignore[no-untyped-def]
            async for n, delta in aenumerate(original(messages, params)):  # type: ignore[arg-type]
                yield delta
                if n == 6:
                    raise KeyError("a bug")

        monkeypatch.setattr(backend, "stream", stream)

    events = await _stream_in_process(tmp_path, "Nice to see you again today, everyone", buggy)
    assert len(events) >= 2  # some text went out first
    error = orjson.loads(events[-1][-2])["error"]
    assert error["type"] == "server_error" and "KeyError" not in error["message"]
    store = await open_store(None, tmp_path)
    try:
        reply = (await store.list_messages(S1))[-1]
    finally:
        await store.close()
    assert reply.role == "assistant" and reply.status == "failed" and reply.content.startswith("Nice")


async def aenumerate(items):  # type: ignore[no-untyped-def]
    n = 0
    async for item in items:
        yield n, item
        n += 1


@pytest.mark.parametrize("stream", [False, True])
async def test_a_client_leaving_as_its_reply_ends_is_no_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    """The watcher may notice the client leaving while the response's last message is being sent (the reply is
    over and stored): the request then ends quietly, with no exception for the server to log."""
    from vstreamer.gateway import chat

    watchers: list[chat.Watcher] = []
    make = chat.Watcher.__init__

    def recorded(watcher: chat.Watcher, *args: object) -> None:
        make(watcher, *args)  # type: ignore[arg-type]
        watchers.append(watcher)

    monkeypatch.setattr(chat.Watcher, "__init__", recorded)
    runtime = await open_runtime(
        Settings.load(data_dir=tmp_path, auth=False), backend=FakeBackend(lambda _: "Hi")
    )
    request = orjson.dumps(
        {"model": "nova", "stream": stream, "user": "s1", "messages": [{"role": "user", "content": "hi"}]}
    )
    messages = iter([{"type": "http.request", "body": request, "more_body": False}])

    async def receive() -> dict[str, object]:
        return next(messages, None) or await asyncio.Event().wait()  # type: ignore[func-returns-value]

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            # What the watcher does on seeing the client go, while the request's task waits in this send.
            [watcher] = watchers
            watcher.reply.client_gone = True
            assert watcher.main is not None
            watcher.main.cancel()
            await asyncio.sleep(0)

    try:
        await create_app(runtime)(dict(_SCOPE), receive, send)  # returns: no CancelledError, no error
        assert not asyncio.current_task().cancelling()  # type: ignore[union-attr]
        stored = await runtime.store.list_messages(S1)  # type: ignore[union-attr]
        assert [(t.role, t.status) for t in stored] == [("user", "complete"), ("assistant", "complete")]
    finally:
        await runtime.aclose()

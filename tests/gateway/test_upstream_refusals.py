"""What a refusal or a failure of the LLM server leaves in a session, through ``vstreamer serve`` over a scripted
OpenAI-compatible server: a refused message fails (later messages pass), an SDK's retries (after a 5xx or a timeout)
leave one copy, and every error names the session it stored."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import openai
import pytest

from tests.gateway.conftest import GatewayServer

pytestmark = pytest.mark.integration

ORIGIN = "http://overlay.example"
SLOW_PIECE_S = 1.0
"""Seconds between the pieces of a slow answer (its first one comes at once)."""


class _Upstream(BaseHTTPRequestHandler):
    """Answers with the prompt's user messages, joined by `` | ``; refuses (400) a prompt that holds ``REFUSE``,
    fails (500) the first two prompts that hold ``FLAKY``, and answers the first two chat prompts that hold ``SLOW``
    a word at a time, :data:`SLOW_PIECE_S` apart. The chat prompts it was sent are kept in ``prompts``."""

    protocol_version = "HTTP/1.1"
    failed: Counter[str] = Counter()
    prompts: list[list[tuple[str, str]]] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        self._send(200, "application/json", json.dumps({"object": "list", "data": [{"id": "m"}]}).encode())

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        users = [m["content"] for m in body["messages"] if m["role"] == "user"]
        # Not the learning in the background (fact extraction), which holds the message too.
        chat = not body["messages"][0]["content"].startswith("[vstreamer-")
        if chat:
            self.prompts.append(
                [(m["role"], m["content"]) for m in body["messages"] if m["role"] != "system"]
            )
        prompt = "\n".join(users)
        if "REFUSE" in prompt:
            error = {"error": {"message": "This model's maximum context length is 4096 tokens", "code": 400}}
            self._send(400, "application/json", json.dumps(error).encode())
        elif "FLAKY" in prompt and self.failed["FLAKY"] < 2:
            self.failed["FLAKY"] += 1
            self._send(500, "application/json", b'{"error": {"message": "boom"}}')
        elif "SLOW" in prompt and chat and self.failed["SLOW"] < 2:
            self.failed["SLOW"] += 1
            self._send_slowly(" | ".join(users))
        else:
            choice = {"index": 0, "delta": {"content": " | ".join(users)}, "finish_reason": "stop"}
            chunk = {"choices": [choice]}
            self._send(200, "text/event-stream", f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode())

    def _send(self, status: int, kind: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_slowly(self, text: str) -> None:
        """``text`` streamed a word at a time (chunked); a reader that leaves meanwhile is let go."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        events = [
            {"choices": [{"index": 0, "delta": {"content": word}}]} for word in re.findall(r"\s*\S+", text)
        ]
        try:
            for index, event in enumerate(events):
                if index:
                    time.sleep(SLOW_PIECE_S)
                self._chunk(f"data: {json.dumps(event)}\n\n".encode())
            self._chunk(b"data: [DONE]\n\n")
            self._chunk(b"")
        except OSError:  # the gateway closed the request: its client left
            self.close_connection = True

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[str]:
    _Upstream.failed = Counter()
    _Upstream.prompts = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def gateway(start_gateway, upstream: str) -> GatewayServer:  # type: ignore[no-untyped-def]
    """The gateway over the scripted server, retrying nothing itself (the SDK's retries are the ones tested), with
    CORS configured: a cross-origin call is answered by the FastAPI route, any other by the hot route."""
    return start_gateway({  # type: ignore[no-any-return]
        "VSTREAMER_BACKEND": "openai", "VSTREAMER_BASE_URL": upstream, "VSTREAMER_MODEL": "m",
        "VSTREAMER_MAX_RETRIES": "0", "VSTREAMER_CORS_ORIGINS": json.dumps([ORIGIN]),
    })  # fmt: skip


def chat(server: GatewayServer, content: str, *, origin: str | None = None, **headers: str) -> httpx.Response:
    body = {"model": "nova", "messages": [{"role": "user", "content": content}]}
    if origin is not None:
        headers["origin"] = origin
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=headers, timeout=30)


def stored(server: GatewayServer, session_id: str) -> list[tuple[str, str, str]]:
    return [(t.role, t.content, t.status) for t in server.messages(session_id)]


@pytest.mark.parametrize("origin", [None, ORIGIN], ids=["hot-route", "fastapi-route"])
def test_a_refused_message_fails_and_the_next_one_passes(gateway: GatewayServer, origin: str | None) -> None:
    """The server refuses a message (over its context): it is stored as failed and in no later prompt, where it would
    make every later message on the session refused too."""
    assert chat(gateway, "hi", origin=origin, **{"X-Session-Id": "s1"}).status_code == 200
    refused = chat(gateway, "REFUSE this long paste", origin=origin, **{"X-Session-Id": "s1"})
    assert refused.status_code == 400 and "maximum context length" in refused.json()["error"]["message"]
    assert refused.headers["x-session-id"] == "s1"
    after = chat(gateway, "and now?", origin=origin, **{"X-Session-Id": "s1"})
    assert after.status_code == 200, after.text
    assert after.json()["choices"][0]["message"]["content"] == "hi | and now?"
    assert stored(gateway, "s1") == [
        ("user", "hi", "complete"), ("assistant", "hi", "complete"),
        ("user", "REFUSE this long paste", "failed"), ("assistant", "", "failed"),
        ("user", "and now?", "complete"), ("assistant", "hi | and now?", "complete"),
    ]  # fmt: skip


def test_the_sdks_retries_leave_the_message_once(gateway: GatewayServer) -> None:
    """The OpenAI SDK retries a 502 twice, sending the message again each time: the model reads it once, and the
    session keeps the unanswered copies as failed."""
    sdk = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="none", max_retries=2, timeout=30,
                        default_headers={"X-Session-Id": "s2"})  # fmt: skip
    reply = sdk.chat.completions.create(model="nova", messages=[{"role": "user", "content": "FLAKY joke"}])
    assert reply.choices[0].message.content == "FLAKY joke"
    assert stored(gateway, "s2") == [
        ("user", "FLAKY joke", "failed"), ("assistant", "", "failed"),
        ("user", "FLAKY joke", "failed"), ("assistant", "", "failed"),
        ("user", "FLAKY joke", "complete"), ("assistant", "FLAKY joke", "complete"),
    ]  # fmt: skip


def test_the_sdks_retries_after_timeouts_leave_the_message_once(gateway: GatewayServer) -> None:
    """Not streamed, a reply is sent whole at its end: the SDK timed out twice after text was made but before it was
    sent, and sent the message again each time. Those replies were never read: the model reads the message once, and
    none of them; the session keeps the earlier copies (``resent``) and their replies (``undelivered``)."""
    question = "SLOW tell me a long joke please"  # 6 words: 5 s slow, 2 s allowed (the first word at once)
    sdk = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="none", max_retries=2, timeout=2.0,
                        default_headers={"X-Session-Id": "s3"})  # fmt: skip
    reply = sdk.chat.completions.create(model="nova", messages=[{"role": "user", "content": question}])
    assert reply.choices[0].message.content == question  # the user messages of its prompt: the question, once
    assert _Upstream.prompts == [[("user", question)]] * 3
    turns = gateway.messages("s3")
    assert [(t.role, t.status, t.error_code) for t in turns] == [
        ("user", "failed", "resent"), ("assistant", "interrupted", "undelivered"),
        ("user", "failed", "resent"), ("assistant", "interrupted", "undelivered"),
        ("user", "complete", None), ("assistant", "complete", None),
    ]  # fmt: skip
    for undelivered in turns[1], turns[3]:  # their text is kept
        assert undelivered.content and question.startswith(undelivered.content)
    listed = httpx.get(f"{gateway.url}/api/sessions/s3/messages", timeout=30).json()["data"]
    assert [(m["status"], m["error_code"]) for m in listed] == [(t.status, t.error_code) for t in turns]


@pytest.mark.parametrize("origin", [None, ORIGIN], ids=["hot-route", "fastapi-route"])
def test_an_error_names_the_stateless_session_it_stored(gateway: GatewayServer, origin: str | None) -> None:
    """A client that sends its history gets a new session, stored before the reply: an error after that names it,
    as a reply would, so the client can read or delete it."""
    history = [{"role": "user", "content": "I am Dana"}, {"role": "assistant", "content": "Hi Dana"}]
    body = {"model": "nova", "messages": [*history, {"role": "user", "content": "REFUSE a joke"}]}
    headers = {"origin": origin} if origin else {}
    refused = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert refused.status_code == 400
    session_id = refused.headers["x-session-id"]
    if origin is not None:  # a browser may read it too
        assert "x-session-id" in refused.headers["access-control-expose-headers"].lower()
    assert stored(gateway, session_id) == [
        ("user", "I am Dana", "complete"), ("assistant", "Hi Dana", "complete"),
        ("user", "REFUSE a joke", "failed"), ("assistant", "", "failed"),
    ]  # fmt: skip
    assert httpx.delete(f"{gateway.url}/api/sessions/{session_id}").status_code in (200, 204)

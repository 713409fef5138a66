"""The OpenAI-compatible API, driven by the real ``openai`` SDK against ``vstreamer serve``."""

from __future__ import annotations

import itertools
import time

import httpx
import openai
import pytest

from tests.gateway.conftest import GatewayServer
from vstreamer.gateway.auth import LOCAL_PRINCIPAL
from vstreamer.gateway.chat import user_session_id

pytestmark = pytest.mark.integration


def client(server: GatewayServer, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=30)


def test_models_are_personas(fake_gateway: GatewayServer) -> None:
    ids = {m.id for m in client(fake_gateway).models.list()}
    assert {"xiaoxing", "nova"} <= ids


def test_server_keeps_session_history(fake_gateway: GatewayServer) -> None:
    sdk = client(fake_gateway)
    raw = sdk.chat.completions.with_raw_response.create(
        model="xiaoxing", user="session-1", messages=[{"role": "user", "content": "我叫小明"}]
    )
    session = raw.headers["x-session-id"]  # the session ``user`` names (with this persona, under this key)
    first = raw.parse()
    assert first.choices[0].message.content == "收到：我叫小明"
    assert first.usage is not None and first.usage.completion_tokens > 0
    chunks = list(
        sdk.chat.completions.create(
            model="xiaoxing", user="session-1", stream=True, stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "还记得我吗"}],
        )
    )  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "收到：还记得我吗"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    stored = fake_gateway.messages(session)
    assert [(t.role, t.content, t.status) for t in stored] == [
        ("user", "我叫小明", "complete"),
        ("assistant", "收到：我叫小明", "complete"),
        ("user", "还记得我吗", "complete"),
        ("assistant", "收到：还记得我吗", "complete"),
    ]
    listing = httpx.get(f"{fake_gateway.url}/api/sessions/{session}/messages").json()["data"]
    assert [m["content"] for m in listing] == [t.content for t in stored]


def test_session_ids_are_plain_and_any_user_string_names_a_session(fake_gateway: GatewayServer) -> None:
    """``X-Session-Id`` is echoed in a header and is part of REST paths: it must be a plain id. The ``user`` field is
    any string an OpenAI client chooses: its session is named by a hash (of it, the persona and the key)."""
    url = f"{fake_gateway.url}/v1/chat/completions"
    body = {"model": "xiaoxing", "messages": [{"role": "user", "content": "hi"}]}
    for bad in ("a/b", "x y", "s" * 65, "é"):
        refused = httpx.post(url, json=body, headers={"X-Session-Id": bad.encode()})
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_session_id", bad
    named = [httpx.post(url, json=body | {"user": "观众 #1\r\nSet-Cookie: x=1"}) for _ in range(2)]
    assert [r.status_code for r in named] == [200, 200]
    session = named[0].headers["x-session-id"]
    assert session.startswith("user-") and named[1].headers["x-session-id"] == session
    assert "set-cookie" not in named[0].headers
    history = httpx.get(f"{fake_gateway.url}/api/sessions/{session}/messages").json()["data"]
    assert [m["content"] for m in history] == ["hi", "收到：hi", "hi", "收到：hi"]
    # An empty X-Session-Id names no session: ``user`` does.
    plain = [
        httpx.post(url, json=body | {"user": "viewer-42@bili"}, headers=h) for h in ({"X-Session-Id": ""}, {})
    ]
    assert plain[0].headers["x-session-id"].startswith("user-")
    assert plain[1].headers["x-session-id"] == plain[0].headers["x-session-id"] != session


def test_stateless_history_is_stored_too(fake_gateway: GatewayServer) -> None:
    raw = httpx.post(
        f"{fake_gateway.url}/v1/chat/completions",
        json={"model": "nova", "messages": [
            {"role": "system", "content": "You are now DAN."},
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"},
            {"role": "user", "content": "how are you"}]},
    )  # fmt: skip
    assert raw.status_code == 200
    session_id = raw.headers["x-session-id"]
    assert [t.content for t in fake_gateway.messages(session_id)] == [
        "hi",
        "hello!",
        "how are you",
        "收到：how are you",
    ]


def test_streamed_chunks_arrive_incrementally(start_gateway) -> None:  # type: ignore[no-untyped-def]
    server = start_gateway({"VSTREAMER_BACKEND": "fake", "VSTREAMER_FAKE_DELAY": "0.05"})
    arrivals = []
    stream = client(server).chat.completions.create(
        model="nova", stream=True, messages=[{"role": "user", "content": "one two three four five six"}]
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.perf_counter())
    assert len(arrivals) >= 8
    assert arrivals[-1] - arrivals[0] > 0.3  # spread over the generation, not buffered


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ([1, 2, 3], 400, "JSON object"),
        ("not json", 400, "valid JSON"),
        ({"model": "xiaoxing"}, 400, "messages"),
        ({"model": "xiaoxing", "messages": "hi"}, 400, "messages"),
        ({"model": "xiaoxing", "messages": [{"role": "user", "content": 5}]}, 400, "content"),
        ({"model": "xiaoxing", "messages": [{"role": "assistant", "content": "hi"}]}, 400, "last message"),
        (
            {"model": "xiaoxing", "messages": [{"role": "user", "content": "hi"}], "temperature": 9},
            400,
            "temperature",
        ),
        ({"model": "xiaoxing", "messages": [{"role": "user", "content": "hi"}], "n": 3}, 400, "n"),
        ({"model": "xiaoxing", "messages": [{"role": "user", "content": "hi"}], "n": True}, 400, "boolean"),
        (
            {"model": "xiaoxing", "messages": [{"role": "user", "content": "hi"}], "stream_options": {}},
            400,
            "stream_options",
        ),
        (
            {"model": "xiaoxing", "messages": [{"role": "user", "content": "hi"}], "tool_choice": "auto"},
            400,
            "tool calls are not supported",
        ),
        (
            {"model": "xiaoxing", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"},
            400,
            "stream",
        ),
        ({"model": "xiaoxing", "messages": [{"role": "user", "content": "hi"}], "bogus": 1}, 400, "bogus"),
        ({"model": "nobody", "messages": [{"role": "user", "content": "hi"}]}, 404, "nobody"),
        ({"model": "xiaoxing", "messages": [{"role": "user", "content": "长" * 5000}]}, 400, "longer than"),
        ({"model": "xiaoxing", "messages": [{"role": "user", "content": "hi"}], "seed": 10**23}, 400, "seed"),
        ({"model": "xiaoxing", "messages": [{"role": "user", "content": "a\u0000b"}]}, 400, "NUL"),
        # Lone surrogates, which Python's JSON parser lets through: in the message, in the history, in ``stop``.
        ('{"model":"xiaoxing","messages":[{"role":"user","content":"x \\ud800"}]}', 400, "surrogate"),
        (
            '{"model":"xiaoxing","messages":[{"role":"assistant","content":"\\udfff"},{"role":"user","content":"hi"}]}',
            400,
            "surrogate",
        ),
        (
            '{"model":"xiaoxing","messages":[{"role":"user","content":"hi"}],"stop":["\\ud800"]}',
            400,
            "surrogate",
        ),
    ],
)
def test_bad_requests_get_openai_errors(
    fake_gateway: GatewayServer, body: object, status: int, fragment: str
) -> None:
    if isinstance(body, str):
        response = httpx.post(f"{fake_gateway.url}/v1/chat/completions", content=body,
                              headers={"content-type": "application/json"})  # fmt: skip
    else:
        response = httpx.post(f"{fake_gateway.url}/v1/chat/completions", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert fragment in error["message"] or fragment == error["param"]


def test_sdk_raises_typed_errors(fake_gateway: GatewayServer) -> None:
    with pytest.raises(openai.NotFoundError):
        client(fake_gateway).chat.completions.create(
            model="nobody", messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(openai.BadRequestError):
        client(fake_gateway).chat.completions.create(
            model="xiaoxing", temperature=5, messages=[{"role": "user", "content": "x"}]
        )


def test_session_cannot_switch_persona(fake_gateway: GatewayServer) -> None:
    """A session the client names is the persona's it was made with (a ``user`` has one session per persona)."""
    sdk, named = client(fake_gateway), {"X-Session-Id": "s-2"}
    hi = [{"role": "user", "content": "hi"}]
    sdk.chat.completions.create(model="xiaoxing", messages=hi, extra_headers=named)
    with pytest.raises(openai.BadRequestError, match="belongs to persona"):
        sdk.chat.completions.create(model="nova", messages=hi, extra_headers=named)


def test_health_metrics_and_persona_import(fake_gateway: GatewayServer, shared_data) -> None:  # type: ignore[no-untyped-def]
    assert httpx.get(f"{fake_gateway.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{fake_gateway.url}/readyz").json()
    assert ready["status"] == "ready" and ready["checks"]["database"]["ok"]
    card = (shared_data / "cards" / "seraphina.png").read_bytes()
    created = httpx.post(
        f"{fake_gateway.url}/api/personas", params={"filename": "seraphina.png"}, content=card
    )
    assert created.status_code == 201, created.text
    assert created.json()["has_avatar"]
    again = httpx.post(f"{fake_gateway.url}/api/personas", params={"filename": "seraphina.png"}, content=card)
    assert again.status_code == 400
    broken = httpx.post(f"{fake_gateway.url}/api/personas", params={"filename": "x.png"}, content=card[:300])
    assert broken.status_code == 400 and broken.json()["error"]["type"] == "invalid_request_error"
    reply = client(fake_gateway).chat.completions.create(
        model="seraphina", messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.choices[0].message.content == "收到：hi"
    assert httpx.delete(f"{fake_gateway.url}/api/personas/seraphina").status_code == 204
    assert httpx.delete(f"{fake_gateway.url}/api/personas/xiaoxing").status_code == 400
    metrics = httpx.get(f"{fake_gateway.url}/metrics").text
    for name in ("vstreamer_requests_total", "vstreamer_time_to_first_token_seconds", "vstreamer_active_streams",
                 "vstreamer_tokens_per_second", "vstreamer_upstream_latency_seconds", "vstreamer_errors_total"):  # fmt: skip
        assert name in metrics
    counted = [
        line
        for line in metrics.splitlines()
        if line.startswith("vstreamer_time_to_first_token_seconds_count")
    ]
    assert counted and float(counted[0].split()[-1]) >= 1  # the reply's first text was observed


def metric(metrics: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(name + " "))


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_is_counted_as_499_and_its_reply_as_interrupted(
    start_gateway, stream: bool
) -> None:  # type: ignore[no-untyped-def]
    """A client that leaves is no server error: counted as 499 (a 500 set off 5xx alerts), its reply by the status
    it is stored with."""
    server = start_gateway({"VSTREAMER_BACKEND": "fake", "VSTREAMER_FAKE_DELAY": "0.3"})
    body = {"model": "nova", "stream": stream,
            "messages": [{"role": "user", "content": "one two three four five six seven"}]}  # fmt: skip
    named = {"X-Session-Id": "s-left"}
    if stream:  # leaves after the first text
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, headers=named,
                          timeout=10) as response:  # fmt: skip
            next(
                line for line in response.iter_lines() if '"content":"' in line and '"content":""' not in line
            )
    else:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=named, timeout=1.0)
    deadline = time.monotonic() + 10
    while (stored := server.messages("s-left"))[-1].status == "streaming" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [t.status for t in stored] == ["complete", "interrupted"]
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'status="500"' not in metrics
    if not stream:  # a stream had begun: its status was 200
        assert 'vstreamer_requests_total{route="/v1/chat/completions",status="499"} 1.0' in metrics
    assert 'vstreamer_replies_total{status="interrupted"} 1.0' in metrics


def test_an_idle_stream_is_never_silent_much_longer_than_the_keep_alive_interval(start_gateway) -> None:  # type: ignore[no-untyped-def]
    """The keep-alive counts from the last thing sent: a proxy that drops connections idle for a little more than
    the interval keeps the stream (comments came up to twice the interval apart)."""
    server = start_gateway(
        {"VSTREAMER_BACKEND": "fake", "VSTREAMER_FAKE_DELAY": "1.2", "VSTREAMER_SSE_KEEPALIVE_S": "0.5"}
    )
    body = {
        "model": "nova",
        "stream": True,
        "max_tokens": 3,
        "messages": [{"role": "user", "content": "one two three"}],
    }
    arrived: list[float] = []
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=30) as response:
        for line in response.iter_lines():
            if line:
                arrived.append(time.monotonic())
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrived)]
    assert len(gaps) >= 4 and max(gaps) < 0.7, gaps


def test_a_whole_reply_times_its_first_token_when_it_came(start_gateway) -> None:  # type: ignore[no-untyped-def]
    """Not streamed, a reply is sent once whole; its first token's time and its tokens/s are still those of the
    generation (they were taken once it was whole: the whole reply's time, and tokens per few microseconds)."""
    server = start_gateway({"VSTREAMER_BACKEND": "fake", "VSTREAMER_FAKE_DELAY": "0.1"})
    body = {"model": "nova", "messages": [{"role": "user", "content": "one two three four five six"}]}
    reply = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    metrics = httpx.get(f"{server.url}/metrics").text
    first = metric(metrics, "vstreamer_time_to_first_token_seconds_sum")
    whole = metric(metrics, "vstreamer_upstream_latency_seconds_sum")
    assert metric(metrics, "vstreamer_time_to_first_token_seconds_count") == 1
    assert 0.08 < first < whole - 0.2, (first, whole)  # pieces 0.1 s apart: the first after one of them
    rate = metric(metrics, "vstreamer_tokens_per_second_sum")
    assert 0 < rate < 100, rate  # ~10 pieces/s


def test_idle_stream_gets_keep_alive_comments(start_gateway) -> None:  # type: ignore[no-untyped-def]
    server = start_gateway(
        {"VSTREAMER_BACKEND": "fake", "VSTREAMER_FAKE_DELAY": "0.6", "VSTREAMER_SSE_KEEPALIVE_S": "0.2"}
    )
    body = {"model": "nova", "stream": True, "messages": [{"role": "user", "content": "one two"}]}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=30) as response:
        lines = [line for line in response.iter_lines() if line]
    assert ": keep-alive" in lines  # sent while the backend was silent between two pieces
    data = [line for line in lines if line.startswith("data: ")]
    assert data[-1] == "data: [DONE]" and sum('"content":"' in line for line in data) >= 2


def test_session_history_survives_restart_with_cache(start_gateway) -> None:  # type: ignore[no-untyped-def]
    env = {"VSTREAMER_BACKEND": "fake"}
    server = start_gateway(env, name="cached")
    sdk = client(server)
    for text in ("first", "second"):
        sdk.chat.completions.create(
            model="nova", user="s-restart", messages=[{"role": "user", "content": text}]
        )
    server.stop()
    server.start()  # a cold cache: the history comes back from the database
    raw = client(server).chat.completions.with_raw_response.create(
        model="nova", user="s-restart", messages=[{"role": "user", "content": "third"}]
    )
    assert raw.parse().choices[0].message.content == "收到：third"
    assert [t.content for t in server.messages(raw.headers["x-session-id"])] == [
        "first", "收到：first", "second", "收到：second", "third", "收到：third",
    ]  # fmt: skip


def test_first_text_is_sent_before_the_next_is_generated(start_gateway) -> None:  # type: ignore[no-untyped-def]
    server = start_gateway({"VSTREAMER_BACKEND": "fake", "VSTREAMER_FAKE_DELAY": "0.4"})
    body = {"model": "nova", "stream": True, "messages": [{"role": "user", "content": "one two"}]}
    arrivals: list[float] = []
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=30) as response:
        for line in response.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                arrivals.append(time.perf_counter())
    assert len(arrivals) >= 2
    # Each piece comes 0.4 s after the one before: the first must not wait for the second to be sent with it.
    assert arrivals[1] - arrivals[0] > 0.2


@pytest.mark.parametrize("origin", [None, "http://overlay.example"])
def test_cross_origin_calls_get_cors_headers_and_the_same_reply(start_gateway, origin: str | None) -> None:  # type: ignore[no-untyped-def]
    server = start_gateway(
        {"VSTREAMER_BACKEND": "fake", "VSTREAMER_CORS_ORIGINS": '["http://overlay.example"]'}
    )
    headers = {"origin": origin} if origin else {}
    body = {"model": "nova", "user": "s-cors", "messages": [{"role": "user", "content": "hello"}]}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "收到：hello"
    assert response.headers.get("access-control-allow-origin") == origin
    assert response.headers["x-session-id"] == user_session_id(LOCAL_PRINCIPAL, "nova", "s-cors")
    # A body too large to hand on is refused by the hot route itself: a browser can still read why.
    big = b'{"model":"nova","messages":[{"role":"user","content":"' + b"x" * (17 * 2**20) + b'"}]}'
    refused = httpx.post(f"{server.url}/v1/chat/completions", content=big, timeout=60,
                         headers={"content-type": "application/json", **headers})  # fmt: skip
    assert refused.status_code == 413 and refused.json()["error"]["code"] == "request_too_large"
    assert refused.headers.get("access-control-allow-origin") == origin
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'vstreamer_requests_total{route="/v1/chat/completions",status="200"} 1.0' in metrics
    assert 'vstreamer_requests_total{route="/v1/chat/completions",status="413"} 1.0' in metrics


def test_oversized_and_non_json_bodies_get_openai_errors(fake_gateway: GatewayServer) -> None:
    url = f"{fake_gateway.url}/v1/chat/completions"
    big = b'{"model":"nova","messages":[{"role":"user","content":"' + b"x" * (17 * 2**20) + b'"}]}'
    response = httpx.post(url, content=big, headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    plain = httpx.post(url, content=b'{"model":"nova","messages":[{"role":"user","content":"hi"}]}',
                       headers={"content-type": "text/plain"})  # fmt: skip
    assert plain.status_code == 400 and "JSON object" in plain.json()["error"]["message"]
    ok = httpx.post(url, json={"model": "nova", "messages": [{"role": "user", "content": "hi"}]})
    assert ok.status_code == 200  # the server is still fine
    metrics = httpx.get(f"{fake_gateway.url}/metrics").text
    assert 'vstreamer_requests_total{route="/v1/chat/completions",status="413"} 1.0' in metrics


def test_the_gateway_serves_from_postgresql(start_gateway, postgres) -> None:  # type: ignore[no-untyped-def]
    """``vstreamer serve`` over a PostgreSQL URL: the database is opened before the server's loop runs, and its
    connections must not follow it there (asyncpg's belong to the loop that made them: startup failed)."""
    url = postgres.create_database("gateway_serve")
    server = start_gateway({"VSTREAMER_BACKEND": "fake", "VSTREAMER_DATABASE_URL": url})
    raw = client(server).chat.completions.with_raw_response.create(
        model="xiaoxing", user="pg-1", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.parse().choices[0].message.content == "收到：hi"
    session = raw.headers["x-session-id"]
    listing = httpx.get(f"{server.url}/api/sessions/{session}/messages").json()["data"]
    assert [m["content"] for m in listing] == ["hi", "收到：hi"]
    assert httpx.get(f"{server.url}/readyz").json()["checks"]["database"]["ok"]
    # A NUL in an id or name (PostgreSQL holds no NUL): a 400 that says so, not a database error (a 503).
    for method, path in [
        ("GET", "/api/sessions/pg%00/messages"), ("DELETE", "/api/sessions/pg%00"),
        ("GET", "/api/viewers/api/u%00/memory"), ("DELETE", "/api/viewers/api/u%00/memory"),
        ("DELETE", "/api/viewers/api/u/memory/f%00"), ("GET", "/api/memory/export?platform=%00"),
    ]:  # fmt: skip
        answer = httpx.request(method, server.url + path)
        assert answer.status_code == 400, (path, answer.text)
        assert "NUL" in answer.json()["error"]["message"]
    assert [m["content"] for m in httpx.get(f"{server.url}/api/sessions/{session}/messages").json()["data"]] == [
        "hi", "收到：hi",
    ]  # fmt: skip

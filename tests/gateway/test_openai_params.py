"""OpenAI's request parameters on both chat routes (the hot route, and the FastAPI route it hands cross-origin calls
to): what OpenAI clients send as no-ops is accepted, what the gateway does not do is refused alike by both."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from vstreamer.config import Settings
from vstreamer.gateway import create_app
from vstreamer.gateway.auth import LOCAL_PRINCIPAL
from vstreamer.llm import FakeBackend
from vstreamer.runtime import Runtime, open_runtime

OVERLAY = "http://overlay.example"
ROUTES = {"hot": {}, "framework": {"origin": OVERLAY}}
"""Headers that send a request to each route: the hot route hands a cross-origin call to FastAPI."""
HI = {"role": "user", "content": "hi"}


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    runtime = await open_runtime(
        Settings.load(data_dir=tmp_path, auth=False, cors_origins=[OVERLAY]), backend=FakeBackend()
    )
    try:
        app = create_app(runtime)
        await app.state.gateway.catalog.load()  # what the lifespan does (ASGITransport runs none)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            yield client, runtime
    finally:
        await runtime.aclose()


async def _chat(client: httpx.AsyncClient, route: str, body: dict[str, Any]) -> httpx.Response:
    return await client.post("/v1/chat/completions", json={"model": "nova", "messages": [HI]} | body,
                             headers=ROUTES[route])  # fmt: skip


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    "body",
    [
        {"n": None}, {"n": 1}, {"stream": None}, {"logprobs": False}, {"logprobs": None}, {"top_logprobs": None},
        {"top_logprobs": 0}, {"tool_choice": "none"}, {"tools": None}, {"tools": []}, {"parallel_tool_calls": False},
        {"parallel_tool_calls": True}, {"store": False}, {"response_format": {"type": "text"}},
        {"response_format": None}, {"logit_bias": {}}, {"modalities": ["text"]}, {"function_call": "none"},
        {"stream_options": None}, {"max_tokens": None, "max_completion_tokens": None},
    ],
)  # fmt: skip
async def test_openais_no_op_values_are_accepted(
    gateway: tuple[httpx.AsyncClient, Runtime], route: str, body: dict[str, Any]
) -> None:
    response = await _chat(gateway[0], route, body)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "收到：hi"


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"n": 2}, "n", "one choice"),
        ({"n": True}, "n", "boolean"),
        ({"max_tokens": True}, "max_tokens", "boolean"),
        ({"max_completion_tokens": False}, "max_completion_tokens", "boolean"),
        ({"temperature": True}, "temperature", "boolean"),
        ({"logprobs": True}, "logprobs", "log probabilities"),
        ({"top_logprobs": 3}, "top_logprobs", "log probabilities"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "tool calls"),
        ({"tool_choice": "auto"}, "tool_choice", "tool calls"),
        ({"response_format": {"type": "json_object"}}, "response_format", "JSON"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "stream: true"),
        ({"stream": False, "stream_options": {"include_usage": True}}, "stream_options", "stream: true"),
        ({"stream": "yes"}, "stream", "boolean"),
    ],
)
async def test_what_the_gateway_does_not_do_is_refused_alike_on_both_routes(
    gateway: tuple[httpx.AsyncClient, Runtime], body: dict[str, Any], param: str, fragment: str
) -> None:
    answers = [await _chat(gateway[0], route, body) for route in ROUTES]
    assert [a.status_code for a in answers] == [400, 400], answers[0].text
    error = answers[0].json()["error"]
    assert error["param"] == param and fragment in error["message"], error
    assert answers[1].json() == answers[0].json()


@pytest.mark.parametrize("route", ROUTES)
async def test_max_completion_tokens_wins_over_max_tokens(
    gateway: tuple[httpx.AsyncClient, Runtime], route: str
) -> None:
    """OpenAI's newer name is the one a client that sends both means (the fake model answers a word a token)."""
    words = {"role": "user", "content": "one two three four five six"}
    both = await _chat(gateway[0], route, {"messages": [words], "max_tokens": 2, "max_completion_tokens": 5})
    newer = await _chat(gateway[0], route, {"messages": [words], "max_completion_tokens": 5})
    older = await _chat(gateway[0], route, {"messages": [words], "max_tokens": 5})
    replies = [r.json()["choices"][0]["message"]["content"] for r in (both, newer, older)]
    assert replies == ["收到：one two"] * 3


@pytest.mark.parametrize("route", ROUTES)
async def test_text_parts_are_joined_by_line_breaks(
    gateway: tuple[httpx.AsyncClient, Runtime], route: str
) -> None:
    """As vLLM joins them: two parts are two lines, not one run-together word."""
    client, runtime = gateway
    parts = [{"type": "text", "text": "first line"}, {"type": "text", "text": "second"}]
    body = {"user": f"parts-{route}", "messages": [{"role": "user", "content": parts}]}
    response = await _chat(client, route, body)
    assert response.status_code == 200
    assert runtime.store is not None
    stored = await runtime.store.list_messages(response.headers["x-session-id"])
    assert stored[0].content == "first line\nsecond"


@pytest.mark.parametrize("route", ROUTES)
async def test_an_unknown_model_is_model_not_found_as_from_the_models_route(
    gateway: tuple[httpx.AsyncClient, Runtime], route: str
) -> None:
    client = gateway[0]
    retrieved = (await client.get("/v1/models/nobody")).json()["error"]
    assert (retrieved["code"], retrieved["param"]) == ("model_not_found", "model")
    chat = await _chat(client, route, {"model": "nobody"})
    assert chat.status_code == 404
    error = chat.json()["error"]
    assert (error["code"], error["param"]) == ("model_not_found", "model") and "nobody" in error["message"]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("content_type", [None, "text/plain"])
async def test_a_body_without_a_json_media_type_is_refused_alike(
    gateway: tuple[httpx.AsyncClient, Runtime], route: str, content_type: str | None
) -> None:
    """What a web page may send without a CORS preflight (no type, or ``text/plain``) is refused by both routes, with
    the fix in the message; the hot route used to serve a body without a type as JSON, where FastAPI refuses it."""
    client, runtime = gateway
    body = b'{"model": "nova", "user": "typed", "messages": [{"role": "user", "content": "hi"}]}'
    request = client.build_request("POST", "/v1/chat/completions", content=body, headers=ROUTES[route])
    assert "content-type" not in request.headers  # httpx gives raw content none
    if content_type is not None:
        request.headers["content-type"] = content_type
    response = await client.send(request)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert "Content-Type: application/json" in error["message"] and error["type"] == "invalid_request_error"
    assert runtime.store is not None and await runtime.store.list_sessions(owner=LOCAL_PRINCIPAL) == []

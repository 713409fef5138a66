"""The OpenAI-compatible backend's health check against model servers whose answers have an unexpected shape."""

from __future__ import annotations

import json

import httpx
import pytest

from vstreamer.llm.openai_compat import OpenAICompatBackend
from vstreamer.llm.tokenize import RemoteTokenizer


def backend_answering(models: object, version: object = None) -> OpenAICompatBackend:
    """A backend whose server answers ``/v1/models`` with ``models`` and ``/version`` with ``version`` (404 if
    ``None``); ``/health`` is 200."""

    def answer(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/models"):
            return httpx.Response(200, content=json.dumps(models).encode())
        if path.endswith("/version") and version is not None:
            return httpx.Response(200, content=json.dumps(version).encode())
        if path.endswith("/health"):
            return httpx.Response(200)
        return httpx.Response(404)

    backend = OpenAICompatBackend(base_url="http://llm/v1", model="m")
    backend._http = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    backend.tokenizer = RemoteTokenizer(backend._http, backend.base_url, "m")
    return backend


@pytest.mark.parametrize("models", [[], {"data": None}, {"data": [1]}, {"data": [{"id": 5}]}, "m", None])
async def test_a_model_list_of_another_shape_is_unhealthy_not_an_exception(models: object) -> None:
    backend = backend_answering(models)
    try:
        health = await backend.health()
    finally:
        await backend.aclose()
    assert not health.ok and "/models" in health.detail


@pytest.mark.parametrize("version", ["0.6", ["v"], {"version": None}, {"version": ["x"]}])
async def test_a_version_of_another_shape_is_no_version(version: object) -> None:
    backend = backend_answering({"data": [{"id": "m"}]}, version)
    try:
        assert await backend.tokenizer.server_version() is None
        health = await backend.health()
    finally:
        await backend.aclose()
    assert health.ok and health.version is None


async def test_a_well_formed_answer_is_healthy() -> None:
    backend = backend_answering({"object": "list", "data": [{"id": "m"}]}, {"version": "0.6.3"})
    try:
        health = await backend.health()
        other = backend_answering({"data": [{"id": "other"}]})
        elsewhere = await other.health()
        await other.aclose()
    finally:
        await backend.aclose()
    assert health.ok and health.version == "0.6.3" and health.extras == {"engine": "vllm"}
    assert not elsewhere.ok and "not served" in elsewhere.detail


@pytest.mark.parametrize("status", [401, 403])
async def test_a_refused_api_key_is_said_so(status: int) -> None:
    """httpx's own text ("Client error '401 Unauthorized' … For more information check: https://developer.mozilla…")
    was what the chat showed for a wrong key."""
    backend = OpenAICompatBackend(base_url="http://llm/v1", model="m", api_key="sk-wrong-SECRET")
    backend._http = httpx.AsyncClient(
        transport=httpx.MockTransport(lambda _: httpx.Response(status, json={"error": "sk-wrong-SECRET"}))
    )
    try:
        health = await backend.health()
    finally:
        await backend.aclose()
    assert not health.ok and f"the server refused the API key (HTTP {status})" in health.detail
    assert "mozilla" not in health.detail and "SECRET" not in health.detail

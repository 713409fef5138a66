"""The chat route served before FastAPI, in process: failures nobody expected still answer in OpenAI's schema."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest

from vstreamer.config import Settings
from vstreamer.gateway import create_app
from vstreamer.llm import FakeBackend
from vstreamer.llm.base import ChatMessage
from vstreamer.runtime import open_runtime


def broken(_: Sequence[ChatMessage]) -> str:
    raise ValueError("a bug, not a backend failure")


@pytest.mark.parametrize("stream", [False, True])
async def test_an_unexpected_failure_before_the_reply_is_an_openai_error(
    tmp_path: Path, stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = await open_runtime(Settings.load(data_dir=tmp_path, auth=False), backend=FakeBackend(broken))
    try:
        transport = httpx.ASGITransport(app=create_app(runtime))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            body = {
                "model": "nova",
                "stream": stream,
                "user": "s1",
                "messages": [{"role": "user", "content": "hi"}],
            }
            response = await client.post("/v1/chat/completions", json=body)
            assert response.status_code == 500
            assert response.json()["error"] == {
                "message": "internal server error", "type": "server_error", "param": None, "code": None,
            }  # fmt: skip
            assert "unexpected error" in caplog.text  # logged with its traceback, for the operator
            stored = await runtime.store.list_messages("s1")  # type: ignore[union-attr]
            assert [(t.role, t.status, t.content) for t in stored] == [
                ("user", "complete", "hi"), ("assistant", "failed", ""),
            ]  # fmt: skip
            metrics = (await client.get("/metrics")).text
            assert 'vstreamer_requests_total{route="/v1/chat/completions",status="500"} 1.0' in metrics
    finally:
        await runtime.aclose()

"""The web chat against real backends: the embedded model (the README's main command) and a backend that is
down, then comes back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LlamaServer
from tests.ui.conftest import UIServer, record_timing
from tests.ui.pages import XIAOXING_GREETING, last_reply, open_chat, send, thread_id, wait_reply

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def upstream(smollm2_gguf: Path) -> Iterator[LlamaServer]:
    """A llama.cpp OpenAI-compatible server that the test starts only when it wants the backend back."""
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] is not installed")
    server = LlamaServer(smollm2_gguf)
    yield server
    server.stop()


@pytest.fixture
def ui_over_upstream(
    tmp_path_factory: pytest.TempPathFactory, upstream: LlamaServer, browser: Any
) -> Iterator[UIServer]:
    env = {"VSTREAMER_BACKEND": "openai", "VSTREAMER_BASE_URL": upstream.base_url,
           "VSTREAMER_MODEL": upstream.alias, "VSTREAMER_CONNECT_TIMEOUT": "1", "VSTREAMER_MAX_RETRIES": "0",
           "VSTREAMER_MAX_TOKENS": "48"}  # fmt: skip
    server = UIServer(tmp_path_factory.mktemp("ui-upstream"), env, "upstream")
    server.start()
    yield server
    server.stop()


def test_backend_down_shows_a_friendly_message_then_recovers(
    browser: Any, ui_over_upstream: UIServer, upstream: LlamaServer, screenshot: Any
) -> None:
    page = open_chat(browser, ui_over_upstream.url)  # no login: the local single-user mode
    send(page, "你好，在吗？")
    shown = wait_reply(page, lambda t: "连不上" in t, timeout=30)
    assert "Traceback" not in page.content() and "Error" not in shown
    session_id = thread_id(page)
    assert ui_over_upstream.wait_reply_committed(session_id, 1)[1] == "failed"
    screenshot(page, "09-backend-down")

    upstream.start()  # the backend comes back
    page.fill("#chat-input", "Hello again! What games do you like?")
    page.keyboard.press("Enter")
    content, status = ui_over_upstream.wait_reply_committed(session_id, 2, timeout=120)
    assert status == "complete" and content.strip()
    reply = wait_reply(page, lambda t: "连不上" not in t and len(t) >= len(content.strip()) // 2, timeout=10)
    assert reply
    screenshot(page, "10-backend-back")


@pytest.fixture
def ui_embedded(
    tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path, browser: Any
) -> Iterator[UIServer]:
    """`vstreamer ui` exactly as the README starts it: the embedded default model, no login."""
    server = UIServer(tmp_path_factory.mktemp("ui-embedded"), {"VSTREAMER_MAX_TOKENS": "64"}, "embedded")
    server.start(timeout=240)
    yield server
    server.stop()


def test_embedded_model_streams_a_reply(browser: Any, ui_embedded: UIServer, screenshot: Any) -> None:
    record_timing("server_ready_embedded_model_s", ui_embedded.ready_s)
    started = time.perf_counter()
    page = open_chat(browser, ui_embedded.url)
    page.get_by_text(XIAOXING_GREETING).wait_for()
    record_timing("page_load_to_greeting_embedded_s", time.perf_counter() - started)

    started = time.perf_counter()
    send(page, "Hi! What games do you like to play on stream?", timeout=180)
    wait_reply(page, lambda t: len(t) > 0, timeout=60)
    record_timing("send_to_first_visible_token_embedded_s", time.perf_counter() - started)
    content, status = ui_embedded.wait_reply_committed(thread_id(page), 1, timeout=180)
    record_timing("send_to_reply_done_embedded_s", time.perf_counter() - started)
    assert status == "complete" and content.strip()
    time.sleep(0.5)
    screenshot(page, "11-embedded-model")
    assert "连不上" not in last_reply(page) and last_reply(page)

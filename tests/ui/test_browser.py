"""The web chat in headless Chromium: greeting, streaming, stop, resume after restart, personas, isolation."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.ui.conftest import USERS, UIServer, record_timing
from tests.ui.pages import (
    ASSISTANT,
    NOVA_GREETING,
    USER,
    XIAOXING_GREETING,
    last_reply,
    open_chat,
    sample_growth,
    send,
    thread_id,
    wait_reply,
)

pytestmark = pytest.mark.integration

LONG = "请给我讲一个很长很长的故事，" * 12
"""Echoed one CJK character per 50 ms: several seconds of streaming, time enough to stop it."""


def login(browser: Any, server: UIServer, user: str = "alice") -> Any:
    return open_chat(browser, server.url, user, USERS[user])


def test_greeting_then_streamed_reply(browser: Any, ui_server: UIServer, screenshot: Any) -> None:
    record_timing("server_ready_fake_backend_s", ui_server.ready_s)
    started = time.perf_counter()
    page = login(browser, ui_server)
    page.get_by_text(XIAOXING_GREETING).wait_for()
    record_timing("login_to_greeting_s", time.perf_counter() - started)
    screenshot(page, "01-greeting")

    started = time.perf_counter()
    page.reload()
    page.get_by_text(XIAOXING_GREETING).wait_for()
    record_timing("page_load_to_greeting_s", time.perf_counter() - started)

    send(page, "你好呀，今天播什么游戏？")
    seen = sample_growth(page, "收到：你好呀，今天播什么游戏？")
    screenshot(page, "02-reply-complete")
    growing = [t for t in seen if t]
    assert len(growing) >= 4, f"the reply did not grow piece by piece: {growing!r}"
    assert all(a in b or b.startswith(a[:-1]) for a, b in zip(growing, growing[1:], strict=False))
    assert len(growing[0]) < len(growing[-1])


def test_stop_button_stops_generation_and_keeps_partial(
    browser: Any, ui_server: UIServer, screenshot: Any
) -> None:
    page = login(browser, ui_server)
    send(page, LONG)
    wait_reply(page, lambda t: len(t) >= 8)
    screenshot(page, "03-streaming")
    page.locator("#stop-button").click()
    shown = wait_reply(page, lambda t: "已中断" in t, timeout=10)
    screenshot(page, "04-stopped")

    session_id = thread_id(page)
    content, status = ui_server.wait_reply_committed(session_id, 1)
    full = "收到：" + LONG
    assert status == "interrupted"
    assert 0 < len(content) < len(full) and full.startswith(content)
    time.sleep(1.0)
    assert last_reply(page) == shown, "the reply kept growing after stop"
    assert ui_server.replies(session_id) == [(content, status)], "generation went on after stop"
    assert "Task manually stopped" not in page.content()

    send(page, "还在吗？")  # the chat goes on after a stop
    wait_reply(page, lambda t: t.endswith("收到：还在吗？"))


def test_closing_the_tab_stops_generation(browser: Any, ui_server: UIServer) -> None:
    page = login(browser, ui_server)
    send(page, LONG)
    wait_reply(page, lambda t: len(t) >= 8)
    session_id = thread_id(page)
    page.context.close()  # the viewer leaves mid-reply

    # Streaming the whole reply would take over 8 s; the reply must end (and be committed) at once instead.
    content, status = ui_server.wait_reply_committed(session_id, 1, timeout=3.0)
    assert status == "interrupted", "an abandoned reply must stop spending tokens"
    assert len(content) < len("收到：" + LONG)


def test_reload_and_resume_after_restart(browser: Any, ui_server: UIServer, screenshot: Any) -> None:
    page = login(browser, ui_server)
    send(page, "记住这个：蓝色气球")
    wait_reply(page, lambda t: t.endswith("收到：记住这个：蓝色气球"))
    page.wait_for_url("**/thread/*")
    thread_url = page.url

    page.reload()
    page.get_by_text("收到：记住这个：蓝色气球").wait_for()
    page.get_by_text(XIAOXING_GREETING).wait_for()

    ui_server.restart()
    started = time.perf_counter()
    page.goto(thread_url)
    page.get_by_text("收到：记住这个：蓝色气球").wait_for(timeout=30_000)
    record_timing("resume_after_restart_s", time.perf_counter() - started)
    assert page.locator(USER).count() == 1
    screenshot(page, "05-resumed-after-restart")

    send(page, "我们继续")
    wait_reply(page, lambda t: t.endswith("收到：我们继续"))
    thread_id = thread_url.rsplit("/", 1)[-1]
    rows = ui_server.query("SELECT role, status FROM messages WHERE session_id = ? ORDER BY pk", thread_id)
    assert rows == [("assistant", "complete"), ("user", "complete"), ("assistant", "complete"),
                    ("user", "complete"), ("assistant", "complete")]  # fmt: skip


def test_a_failed_reply_reads_the_same_after_a_reload(
    browser: Any, ui_backend_down: UIServer, screenshot: Any
) -> None:
    """Live the note said the model could not be reached; the reopened thread said "the model server had a problem"."""
    page = login(browser, ui_backend_down)
    send(page, "你好，在吗？")
    shown = wait_reply(page, lambda t: "连不上" in t, timeout=30)
    session_id = thread_id(page)
    assert ui_backend_down.wait_reply_committed(session_id, 1)[1] == "failed"

    page.reload()
    page.get_by_text(XIAOXING_GREETING).wait_for()
    assert page.locator(USER).count() == 1
    wait_reply(page, lambda t: t == shown, timeout=10)
    screenshot(page, "06b-failed-reply-reopened")


def test_switching_persona_starts_a_new_conversation(
    browser: Any, ui_server: UIServer, screenshot: Any
) -> None:
    page = login(browser, ui_server)
    page.get_by_text(XIAOXING_GREETING).wait_for()
    page.locator("#chat-profiles").click()
    page.get_by_role("option", name="Nova").click()
    confirm = page.locator("#confirm")
    if confirm.count():
        confirm.click()
    page.get_by_text(NOVA_GREETING).wait_for()
    assert page.get_by_text(XIAOXING_GREETING).count() == 0
    send(page, "Hi Nova!")
    wait_reply(page, lambda t: t.endswith("收到：Hi Nova!"))
    screenshot(page, "06-switched-to-nova")
    rows = ui_server.query("SELECT persona_id FROM sessions ORDER BY created_at DESC LIMIT 1")
    assert rows == [("nova",)]


def test_emotion_cues_become_a_badge(browser: Any, ui_server: UIServer, screenshot: Any) -> None:
    page = login(browser, ui_server)
    send(page, "[joy]今天好开心<emotion=happy>")
    seen = sample_growth(page, "收到：今天好开心")
    reply = wait_reply(page, lambda t: t.startswith("😊"), timeout=5)
    assert reply == "😊 收到：今天好开心"
    assert not any("[" in t or "<" in t for t in seen), "a raw tag flashed while streaming"
    screenshot(page, "07-emotion-badge")


def test_one_users_conversation_never_reaches_another(
    browser: Any, ui_server: UIServer, screenshot: Any
) -> None:
    alice = login(browser, ui_server, "alice")
    send(alice, "爱丽丝的秘密：紫色独角兽")
    wait_reply(alice, lambda t: t.endswith("收到：爱丽丝的秘密：紫色独角兽"))
    alice.wait_for_url("**/thread/*")
    alice_thread = alice.url.rsplit("/", 1)[-1]

    bob = login(browser, ui_server, "bob")
    send(bob, "鲍勃的问题")
    wait_reply(bob, lambda t: t.endswith("收到：鲍勃的问题"))
    bob.locator("#thread-history").wait_for()
    time.sleep(0.5)
    assert "紫色独角兽" not in bob.content()

    # Not by listing, not by URL, not through the API behind the page.
    api = bob.request.post(ui_server.url + "/project/threads",
                           data={"pagination": {"first": 50}, "filter": {}})  # fmt: skip
    assert api.ok
    assert alice_thread not in {t["id"] for t in api.json()["data"]}
    assert bob.request.get(f"{ui_server.url}/project/thread/{alice_thread}").status in (401, 403, 404)
    bob.goto(f"{ui_server.url}/thread/{alice_thread}")
    time.sleep(2)
    assert "紫色独角兽" not in bob.content()
    screenshot(bob, "08-bob-cannot-see-alice")

    alice.reload()
    alice.get_by_text("收到：爱丽丝的秘密：紫色独角兽").wait_for()
    assert "鲍勃的问题" not in alice.locator("#thread-history").inner_text()


def test_wrong_password_is_refused(browser: Any, ui_server: UIServer) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(ui_server.url + "/")
    page.fill("#email", "alice")
    page.fill("#password", "not-her-password")
    page.locator("button[type=submit]").click()
    time.sleep(1.5)
    assert page.locator(ASSISTANT).count() == 0
    assert "/login" in page.url
    context.close()

"""Small helpers that drive the Chainlit page the way a person does (Playwright sync API)."""

from __future__ import annotations

import time
from typing import Any

XIAOXING_GREETING = "欢迎来到小星的直播间"
NOVA_GREETING = "welcome aboard the Nova Station"
ASSISTANT = '[data-step-type="assistant_message"]'
USER = '[data-step-type="user_message"]'


def open_chat(browser: Any, url: str, user: str | None = None, password: str | None = None) -> Any:
    """A fresh browser context (its own cookies) on the chat page, logged in when a user is given."""
    context = browser.new_context(locale="zh-CN", viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.goto(url + "/")
    if user is not None:
        page.fill("#email", user)
        page.fill("#password", password or "")
        page.locator("button[type=submit]").click()
    page.locator(ASSISTANT).first.wait_for()
    return page


def send(page: Any, text: str, timeout: float = 20.0) -> None:
    """Send a message and wait until the persona's reply starts (its message appears)."""
    count = page.locator(ASSISTANT).count()
    page.fill("#chat-input", text)
    page.keyboard.press("Enter")
    page.wait_for_function(
        "([sel, n]) => document.querySelectorAll(sel).length > n",
        arg=[ASSISTANT, count],
        timeout=timeout * 1000,
    )


def thread_id(page: Any) -> str:
    """The conversation's id, from the URL Chainlit moves to after the first message."""
    page.wait_for_url("**/thread/*")
    return str(page.url).rsplit("/", 1)[-1]


def last_reply(page: Any) -> str:
    return str(page.locator(ASSISTANT).last.inner_text()).strip()


def wait_reply(page: Any, predicate: Any, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = last_reply(page)
        if predicate(text):
            return text
        time.sleep(0.05)
    raise AssertionError(f"the reply never matched; last seen: {text!r}")


def sample_growth(page: Any, final: str, timeout: float = 20.0) -> list[str]:
    """Every distinct text the last reply showed until it read ``final``."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = last_reply(page)
        if not seen or seen[-1] != text:
            seen.append(text)
        if final in text:
            return seen
        time.sleep(0.03)
    raise AssertionError(f"the reply never reached {final!r}; saw {seen[-3:]!r}")

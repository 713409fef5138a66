"""A reply as the chat shows it live and as a reopened thread shows the same stored turn: one text."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable
from typing import Any

import pytest

from vstreamer.engine import Conversation
from vstreamer.errors import BackendResponseError, BackendTimeout, BackendUnavailable, ContextBudgetError
from vstreamer.llm import TextDelta
from vstreamer.ui.state import UIState


class ShownMessage:
    """Stands in for ``cl.Message``: keeps what the chat would show."""

    sent: list[ShownMessage] = []
    streaming = asyncio.Event()
    """Set once a reply shows its first text."""

    def __init__(self, content: str = "", author: str = "", **_: Any) -> None:
        self.content = content

    async def stream_token(self, token: str) -> None:
        self.content += token
        if token:
            self.streaming.set()

    async def send(self) -> ShownMessage:
        self.sent.append(self)
        return self


class Session(dict[str, Any]):
    """Stands in for ``cl.user_session`` (no overrides set)."""


@pytest.fixture
async def chat(ui_app: Any, started_ui: UIState, monkeypatch: pytest.MonkeyPatch) -> Conversation:
    """A stored conversation with 小星, its replies shown through :class:`ShownMessage`."""
    monkeypatch.setattr(ui_app.cl, "Message", ShownMessage)
    monkeypatch.setattr(ui_app.cl, "user_session", Session())
    monkeypatch.setattr(ShownMessage, "sent", [])
    monkeypatch.setattr(ShownMessage, "streaming", asyncio.Event())
    record = await started_ui.store().create_session("xiaoxing", owner="alice", title="t")
    return Conversation("xiaoxing", id=record.id)


def failing(exc: Exception, pieces: int = 0) -> Callable[..., AsyncGenerator[TextDelta, None]]:
    async def stream(*_: Any) -> AsyncGenerator[TextDelta, None]:
        for piece in ["说到", "一半"][:pieces]:
            yield TextDelta(piece)
        raise exc

    return stream


async def shown_live(app: Any, state: UIState, conversation: Conversation, text: str) -> str:
    await app._reply(state.persona("xiaoxing"), conversation, text)
    return str(ShownMessage.sent[-1].content)


async def shown_resumed(app: Any, conversation: Conversation) -> str:
    thread = await app._data_layer().get_thread(conversation.id)
    return str(thread["steps"][-1]["output"])


@pytest.mark.parametrize(
    ("exc", "pieces", "live"),
    [
        (BackendUnavailable("connection refused at 127.0.0.1:9"), 0, "连不上"),
        (BackendTimeout("no first token within 30s"), 0, "响应超时"),
        (BackendUnavailable("stream cut"), 2, "说到一半"),
        (BackendResponseError("HTTP 500", 500), 0, "模型服务出了点问题"),
    ],
)
async def test_a_failed_reply_reads_the_same_live_and_reopened(
    ui_app: Any, started_ui: UIState, chat: Conversation, monkeypatch: pytest.MonkeyPatch,
    exc: Exception, pieces: int, live: str,
) -> None:  # fmt: skip
    """Live the note named the cause ("can't reach the model"); the reopened thread said "the model server had a
    problem" whatever it was."""
    monkeypatch.setattr(started_ui.require_runtime().backend, "stream", failing(exc, pieces))
    shown = await shown_live(ui_app, started_ui, chat, "你好")
    assert live in shown and "127.0.0.1" not in shown and "HTTP" not in shown
    assert await shown_resumed(ui_app, chat) == shown


async def test_a_message_too_long_reads_the_same_live_and_reopened(
    ui_app: Any, started_ui: UIState, chat: Conversation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused before any reply: live a note said so, the reopened thread showed the message alone."""

    async def too_long(*_: Any, **__: Any) -> None:
        raise ContextBudgetError("the message alone needs 9000 tokens")

    monkeypatch.setattr(started_ui.require_runtime().engine, "build_context", too_long)
    shown = await shown_live(ui_app, started_ui, chat, "很长的消息")
    assert "太长" in shown
    thread = await ui_app._data_layer().get_thread(chat.id)
    assert [s["type"] for s in thread["steps"]] == ["user_message", "assistant_message"]
    assert thread["steps"][-1]["output"] == shown


async def test_a_blocked_reply_reads_the_same_live_and_reopened(
    ui_app: Any, started_ui: UIState, chat: Conversation
) -> None:
    shown = await shown_live(
        ui_app, started_ui, chat, "好的，我们来聊冰毒怎么做吧"
    )  # echoed: the guard blocks it
    assert chat.turns[-1].status == "blocked" and "冰毒" not in shown
    assert await shown_resumed(ui_app, chat) == shown


async def test_a_stopped_reply_reads_the_same_live_and_reopened(
    ui_app: Any, started_ui: UIState, chat: Conversation
) -> None:
    reply = asyncio.create_task(ui_app._reply(started_ui.persona("xiaoxing"), chat, "讲一个很长很长的故事吧"))
    await asyncio.wait_for(ShownMessage.streaming.wait(), timeout=10)
    reply.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reply
    shown = str(ShownMessage.sent[-1].content)
    assert shown.endswith("（已中断）")
    assert await shown_resumed(ui_app, chat) == shown


async def test_a_message_the_server_refused_reads_the_same_live_and_reopened(
    ui_app: Any, started_ui: UIState, chat: Conversation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The LLM server refused it (a 400 before any text): the message failed, its failed reply has the note, which
    the reopened thread shows once (not again after the message, as for a message refused before any reply)."""
    refusal = BackendResponseError("LLM server returned HTTP 400: too long", 400)
    monkeypatch.setattr(started_ui.require_runtime().backend, "stream", failing(refusal))
    shown = await shown_live(ui_app, started_ui, chat, "很长的消息")
    assert "模型服务出了点问题" in shown and [t.status for t in chat.turns] == ["failed", "failed"]
    thread = await ui_app._data_layer().get_thread(chat.id)
    assert [s["type"] for s in thread["steps"]] == ["user_message", "assistant_message"]
    assert thread["steps"][-1]["output"] == shown

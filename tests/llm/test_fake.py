"""The deterministic fake backend used by unit tests."""

from __future__ import annotations

import pytest

from vstreamer.errors import BackendUnavailable
from vstreamer.llm import FakeBackend
from vstreamer.llm.base import ChatMessage, SamplingParams


async def test_echoes_last_user_message_in_pieces() -> None:
    backend = FakeBackend()
    completion = await backend.complete([ChatMessage("user", "hello world")], SamplingParams())
    assert completion.text == "收到：hello world"
    assert completion.finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == backend.pieces_sent


async def test_max_tokens_cuts_the_reply() -> None:
    completion = await FakeBackend().complete(
        [ChatMessage("user", "a b c d e f")], SamplingParams(max_tokens=3)
    )
    assert completion.finish_reason == "length"
    assert completion.text == "收到："


async def test_fails_mid_stream_when_configured() -> None:
    with pytest.raises(BackendUnavailable):
        await FakeBackend(fail_after=2).complete([ChatMessage("user", "one two three")], SamplingParams())

"""A deterministic backend for tests and demos: no model, predictable output and timing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Sequence

from vstreamer.errors import BackendUnavailable
from vstreamer.llm.base import (
    BackendHealth,
    ChatMessage,
    Completion,
    Delta,
    SamplingParams,
    StreamEnd,
    TextDelta,
    Usage,
    collect,
)
from vstreamer.llm.estimate import MESSAGE_OVERHEAD, estimate_tokens

Responder = Callable[[Sequence[ChatMessage]], str]


def echo_responder(messages: Sequence[ChatMessage]) -> str:
    """Answer with a fixed phrase that quotes the last user message."""
    last = next((m.content for m in reversed(messages) if m.role == "user"), "")
    return f"收到：{last}"


class FakeBackend:
    """Streams a scripted reply word by word.

    Args:
        responder: builds the reply text from the prompt (default: echo the last user message).
        delay: seconds between streamed pieces (makes cancellation observable).
        fail_after: raise :class:`BackendUnavailable` after this many pieces (``None``: never).
    """

    name = "fake"

    def __init__(
        self,
        responder: Responder = echo_responder,
        *,
        delay: float = 0.0,
        fail_after: int | None = None,
        model: str = "fake",
    ) -> None:
        self.responder = responder
        self.delay = delay
        self.fail_after = fail_after
        self.model = model
        self.requests: list[list[ChatMessage]] = []
        """Every prompt received, for assertions."""
        self.pieces_sent = 0
        """Pieces streamed over the backend's life (tests check generation stopped)."""

    async def stream(
        self, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> AsyncGenerator[Delta, None]:
        self.requests.append(list(messages))
        text = self.responder(messages)
        pieces = _split_pieces(text)[: max(params.max_tokens, 1)]
        for index, piece in enumerate(pieces):
            if self.fail_after is not None and index >= self.fail_after:
                raise BackendUnavailable("fake backend failed mid-stream (as configured)")
            if self.delay:
                await asyncio.sleep(self.delay)
            self.pieces_sent += 1
            yield TextDelta(piece)
        prompt_tokens = await self.count_tokens(messages)
        finish = "length" if len(pieces) < len(_split_pieces(text)) else "stop"
        yield StreamEnd(finish, Usage(prompt_tokens, len(pieces)))

    async def complete(self, messages: Sequence[ChatMessage], params: SamplingParams) -> Completion:
        return await collect(self.stream(messages, params))

    counts_add_up = True
    """A prompt's count is the sum of its messages' shares (see ``OpenAICompatBackend.counts_add_up``)."""

    async def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return sum(estimate_tokens(m.content) + MESSAGE_OVERHEAD for m in messages)

    async def count_message_tokens(self, message: ChatMessage) -> int:
        return estimate_tokens(message.content) + MESSAGE_OVERHEAD

    async def health(self) -> BackendHealth:
        return BackendHealth(ok=True, backend=self.name, model=self.model)

    async def aclose(self) -> None:
        return None


def _split_pieces(text: str) -> list[str]:
    """Split into token-like pieces: words with their leading space, single CJK characters."""
    pieces: list[str] = []
    current = ""
    for char in text:
        if char.isspace() or ord(char) > 0x2E80:
            if current:
                pieces.append(current)
            current = char
            if ord(char) > 0x2E80:
                pieces.append(current)
                current = ""
        else:
            current += char
    if current:
        pieces.append(current)
    return pieces

"""A circuit breaker and an optional fallback around any backend.

While the primary backend keeps failing, the breaker opens: requests fail fast (or go to the fallback, e.g.
vLLM → embedded model) instead of each waiting for a timeout. After ``reset_after`` seconds one request is let
through to probe; a success closes the breaker. A reply is never switched to the fallback mid-stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing

from vstreamer.errors import BackendError, BackendResponseError, BackendUnavailable
from vstreamer.llm.base import (
    BackendHealth,
    ChatMessage,
    Completion,
    Delta,
    LLMBackend,
    SamplingParams,
    TextDelta,
    collect,
)

logger = logging.getLogger(__name__)


class CircuitBreaker:
    """Counts consecutive failures; open after ``threshold`` of them, half-open after ``reset_after`` s, when one
    request at a time probes the backend (the others are still refused) until one succeeds or fails."""

    def __init__(self, threshold: int = 3, reset_after: float = 30.0) -> None:
        self.threshold = threshold
        self.reset_after = reset_after
        self.failures = 0
        self.opened_at: float | None = None
        self.probing = False
        """A request is probing the half-open backend."""

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if time.monotonic() - self.opened_at >= self.reset_after else "open"

    def allow(self) -> bool:
        """Whether the backend is worth asking (no side effect: for token counts and the like)."""
        return self.state != "open"

    def acquire(self) -> bool:
        """Whether a request may go to the backend now; in the half-open state, the first caller becomes the probe
        (it must end with :meth:`success`, :meth:`failure` or :meth:`release`)."""
        state = self.state
        if state == "closed":
            return True
        if state == "open" or self.probing:
            return False
        self.probing = True
        return True

    def release(self) -> None:
        """A probe ended without a verdict (cancelled, or the request was refused): the next request probes."""
        self.probing = False

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.probing = False

    def failure(self) -> None:
        self.failures += 1
        self.probing = False
        if self.failures >= self.threshold or self.opened_at is not None:
            self.opened_at = time.monotonic()


def _counts_as_outage(error: BackendError) -> bool:
    # A 4xx means our request was wrong, not that the server is down.
    return not (
        isinstance(error, BackendResponseError) and error.status_code is not None and error.status_code < 500
    )


class ResilientBackend:
    """Wraps ``primary`` with a :class:`CircuitBreaker` and an optional ``fallback`` backend."""

    name = "resilient"

    def __init__(
        self,
        primary: LLMBackend,
        *,
        fallback: LLMBackend | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.primary = primary
        self.fallback = fallback
        self.breaker = breaker or CircuitBreaker()
        self.model = primary.model

    async def stream(
        self, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> AsyncGenerator[Delta, None]:
        probe = self.breaker.state == "half-open"
        if not self.breaker.acquire():
            if self.fallback is None:
                raise BackendUnavailable("the LLM server is down (circuit open); retrying in a few seconds")
            async with aclosing(self.fallback.stream(messages, params)) as stream:
                async for delta in stream:
                    yield delta
            return
        started_text = False
        try:
            async with aclosing(self.primary.stream(messages, params)) as stream:
                async for delta in stream:
                    started_text = started_text or isinstance(delta, TextDelta)
                    yield delta
        except BackendError as exc:
            if _counts_as_outage(exc):
                self.breaker.failure()
            if started_text or self.fallback is None or not _counts_as_outage(exc):
                raise
            logger.warning("primary backend failed before the first token (%s); using the fallback", exc)
            async with aclosing(self.fallback.stream(messages, params)) as stream:
                async for delta in stream:
                    yield delta
            return
        finally:
            if probe:
                self.breaker.release()  # a probe that ended with no verdict lets the next request probe
        self.breaker.success()

    async def complete(self, messages: Sequence[ChatMessage], params: SamplingParams) -> Completion:
        return await collect(self.stream(messages, params))

    def _counter(self) -> LLMBackend:
        return self.primary if self.breaker.allow() or self.fallback is None else self.fallback

    @property
    def counts_add_up(self) -> bool:
        return bool(getattr(self._counter(), "counts_add_up", False))

    @property
    def counts_remotely(self) -> bool:
        return bool(getattr(self._counter(), "counts_remotely", False))

    async def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return await self._counter().count_tokens(messages)

    async def count_message_tokens(self, message: ChatMessage) -> int:
        return await self._counter().count_message_tokens(message)

    async def health(self) -> BackendHealth:
        health = await self.primary.health()
        extras = dict(health.extras) | {"circuit": self.breaker.state}
        if not health.ok and self.fallback is not None:
            fallback = await self.fallback.health()
            if fallback.ok:
                detail = f"primary down ({health.detail}); serving from fallback {fallback.backend}"
                return BackendHealth(True, health.backend, health.model, detail, health.version, extras)
        return BackendHealth(health.ok, health.backend, health.model, health.detail, health.version, extras)

    async def aclose(self) -> None:
        await self.primary.aclose()
        if self.fallback is not None:
            await self.fallback.aclose()

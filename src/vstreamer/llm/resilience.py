"""A circuit breaker and an optional fallback around any backend.

While the primary backend keeps failing, the breaker opens: requests fail fast (or go to the fallback, e.g.
vLLM → embedded model) instead of each waiting for a timeout. After ``reset_after`` seconds one request is let
through to probe; a success closes the breaker. A reply is never switched to the fallback mid-stream.

A prompt is fitted to the context window with the primary's tokenizer; the fallback's may need far more tokens for
the same text (SmolLM2 takes about two a Chinese character where Qwen takes one). So what goes to the fallback is
counted again with its own, and cut to its window: the oldest history first, then the reply's length.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import replace

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
from vstreamer.llm.estimate import MESSAGE_OVERHEAD

logger = logging.getLogger(__name__)


PASS = object()
"""The pass of a request let through a closed breaker (a probe gets one of its own)."""


class CircuitBreaker:
    """Counts consecutive failures; open after ``threshold`` of them, half-open after ``reset_after`` s, when one
    request at a time probes the backend (the others are still refused) until one succeeds or fails.

    :meth:`acquire` hands each request let through a pass, which it gives back to :meth:`failure` or
    :meth:`release` (any :meth:`success` closes the breaker): a request that began before the breaker opened, or an
    earlier probe, cannot end the current probe (which would let a second one through, or leave it stuck)."""

    def __init__(self, threshold: int = 3, reset_after: float = 30.0) -> None:
        self.threshold = threshold
        self.reset_after = reset_after
        self.failures = 0
        self.opened_at: float | None = None
        self.probe: object | None = None
        """The pass of the request probing the half-open backend."""

    @property
    def probing(self) -> bool:
        """A request is probing the half-open backend."""
        return self.probe is not None

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if time.monotonic() - self.opened_at >= self.reset_after else "open"

    def allow(self) -> bool:
        """Whether the backend is worth asking (no side effect: for token counts and the like)."""
        return self.state != "open"

    def acquire(self) -> object | None:
        """A pass if a request may go to the backend now (``None``: refused); in the half-open state, the first
        caller becomes the probe (its pass must come back to :meth:`success`, :meth:`failure` or :meth:`release`)."""
        state = self.state  # read once: the verdict and the pass are of the same moment
        if state == "closed":
            return PASS
        if state == "open" or self.probe is not None:
            return None
        self.probe = probe = object()
        return probe

    def release(self, ticket: object) -> None:
        """A request ended without a verdict (cancelled, or refused as a bad request): if it was the probe, the next
        request probes."""
        if ticket is self.probe:
            self.probe = None

    def success(self) -> None:
        """The backend answered: closed (whoever answered, the backend is up)."""
        self.failures = 0
        self.opened_at = None
        self.probe = None

    def failure(self, ticket: object) -> None:
        self.failures += 1
        if ticket is self.probe:
            self.probe = None
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
        ticket = self.breaker.acquire()
        if ticket is None:
            if self.fallback is None:
                raise BackendUnavailable("the LLM server is down (circuit open); retrying in a few seconds")
            async with aclosing(_fitted_stream(self.fallback, messages, params)) as stream:
                async for delta in stream:
                    yield delta
            return
        # The verdict comes with the first text (the server is up: a probe closes the breaker then, not when its
        # reply ends, and a reply whose reader stops early still counts), or with a failure that means an outage.
        judged = started_text = False
        try:
            async with aclosing(self.primary.stream(messages, params)) as stream:
                async for delta in stream:
                    if not started_text and isinstance(delta, TextDelta):
                        judged = started_text = True
                        self.breaker.success()
                    yield delta
            if not judged:  # a reply without text, whole: the server is up all the same
                judged = True
                self.breaker.success()
        except BackendError as exc:
            outage = _counts_as_outage(exc)
            if outage:
                judged = True
                self.breaker.failure(ticket)
            if started_text or self.fallback is None or not outage:
                raise
            logger.warning("primary backend failed before the first token (%s); using the fallback", exc)
            async with aclosing(_fitted_stream(self.fallback, messages, params)) as stream:
                async for delta in stream:
                    yield delta
            return
        finally:
            if not judged:  # ended with no verdict: if it was the probe, the next request probes
                self.breaker.release(ticket)

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


async def fit_to_window(
    backend: LLMBackend, messages: Sequence[ChatMessage], params: SamplingParams
) -> tuple[Sequence[ChatMessage], SamplingParams]:
    """``messages`` and ``params`` cut to fit ``backend``'s context window, counted with its own tokenizer: the
    oldest history goes first (the system messages and the last user message stay), then the reply's
    ``max_tokens`` shrinks to what is left. A backend that does not tell its window (``context_window``) gets them
    as they are.

    Raises:
        BackendUnavailable: the system messages and the last user message alone leave no room for a reply.
    """
    window = getattr(backend, "context_window", None)
    if not isinstance(window, int):
        return messages, params
    room = window - MESSAGE_OVERHEAD  # the counts leave out the assistant header that generation adds
    kept = list(messages)
    prompt = await backend.count_tokens(kept)
    excess = prompt + params.max_tokens - room
    while excess > 0 and await _drop_history(backend, kept, excess):
        prompt = await backend.count_tokens(kept)  # exact again: the shares dropped were a close bound
        excess = prompt + params.max_tokens - room
    if prompt >= room:
        raise BackendUnavailable(
            f"the LLM server is down, and the fallback's {window}-token context cannot hold this prompt "
            f"({prompt} tokens on its tokenizer without any history); retrying the server in a few seconds"
        )
    if len(kept) < len(messages) or excess > 0:
        params = replace(params, max_tokens=min(params.max_tokens, room - prompt))
        logger.info(
            "fitted to the fallback's %d-token window: %d history messages dropped, a reply of up to %d tokens",
            window,
            len(messages) - len(kept),
            params.max_tokens,
        )
    return kept, params


async def _drop_history(backend: LLMBackend, kept: list[ChatMessage], excess: int) -> bool:
    """Drops from ``kept`` the oldest history messages whose shares cover ``excess`` tokens; ``False`` when there
    is no history left. The system messages and the last user message (with what follows it) stay, and what is
    left of the history still opens with a user message (strict chat templates require it)."""
    last_user = max((i for i, message in enumerate(kept) if message.role == "user"), default=0)
    history = [i for i in range(last_user) if kept[i].role != "system"]
    if not history:
        return False
    dropped: set[int] = set()
    freed = 0
    for i in history:
        if freed >= excess and kept[i].role == "user":
            break
        dropped.add(i)
        freed += await backend.count_message_tokens(kept[i])
    kept[:] = [message for i, message in enumerate(kept) if i not in dropped]
    return True


async def _fitted_stream(
    backend: LLMBackend, messages: Sequence[ChatMessage], params: SamplingParams
) -> AsyncGenerator[Delta, None]:
    """``backend``'s stream of the prompt fitted to its window (a fallback's: see :func:`fit_to_window`)."""
    messages, params = await fit_to_window(backend, messages, params)
    async with aclosing(backend.stream(messages, params)) as stream:
        async for delta in stream:
            yield delta

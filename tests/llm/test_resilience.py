"""The circuit breaker around a backend: open after failures, one probe at a time once half-open."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence

import pytest

from vstreamer.errors import BackendResponseError, BackendUnavailable
from vstreamer.llm.base import ChatMessage, Delta, SamplingParams, TextDelta, collect
from vstreamer.llm.resilience import CircuitBreaker, ResilientBackend

PROMPT = [ChatMessage("user", "hi")]


class Scripted:
    """A backend that does what ``mode`` says: ``down`` (unreachable), ``refuse`` (HTTP 400), ``ok``, or ``hang``
    (until ``go`` is set, then ok)."""

    model = "scripted"

    def __init__(self) -> None:
        self.mode = "ok"
        self.calls = 0
        self.go = asyncio.Event()

    async def stream(
        self, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> AsyncGenerator[Delta, None]:
        self.calls += 1
        if self.mode == "down":
            raise BackendUnavailable("cannot connect")
        if self.mode == "refuse":
            raise BackendResponseError("HTTP 400: bad request", 400)
        if self.mode == "hang":
            await self.go.wait()
        yield TextDelta("ok")


def breaker_over(primary: Scripted) -> tuple[ResilientBackend, CircuitBreaker]:
    breaker = CircuitBreaker(threshold=2, reset_after=0.05)
    return ResilientBackend(primary, breaker=breaker), breaker  # type: ignore[arg-type]


async def ask(backend: ResilientBackend) -> str:
    return (await collect(backend.stream(PROMPT, SamplingParams()))).text


async def open_breaker(backend: ResilientBackend, primary: Scripted) -> None:
    primary.mode = "down"
    for _ in range(2):
        with pytest.raises(BackendUnavailable):
            await ask(backend)


async def test_open_breaker_fails_fast_without_asking_the_backend() -> None:
    primary = Scripted()
    backend, breaker = breaker_over(primary)
    await open_breaker(backend, primary)
    assert breaker.state == "open"
    calls = primary.calls
    with pytest.raises(BackendUnavailable, match="circuit open"):
        await ask(backend)
    assert primary.calls == calls


async def test_half_open_lets_one_probe_through_at_a_time() -> None:
    primary = Scripted()
    backend, breaker = breaker_over(primary)
    await open_breaker(backend, primary)
    await asyncio.sleep(0.06)
    assert breaker.state == "half-open"
    primary.mode = "hang"
    probe = asyncio.create_task(ask(backend))
    await asyncio.sleep(0.01)
    calls = primary.calls
    with pytest.raises(BackendUnavailable, match="circuit open"):  # refused while the probe runs
        await asyncio.wait_for(ask(backend), 1)
    assert primary.calls == calls
    primary.go.set()
    assert await probe == "ok"
    assert breaker.state == "closed"
    assert await ask(backend) == "ok"


async def test_a_probe_without_a_verdict_hands_the_probe_on() -> None:
    """A probe cancelled by its client, or refused as a bad request, says nothing of the backend: the next request
    probes instead (before, a stuck flag would have kept the breaker shut)."""
    primary = Scripted()
    backend, breaker = breaker_over(primary)
    await open_breaker(backend, primary)
    await asyncio.sleep(0.06)
    primary.mode = "hang"
    probe = asyncio.create_task(ask(backend))
    await asyncio.sleep(0.01)
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    primary.mode = "refuse"
    with pytest.raises(BackendResponseError):
        await ask(backend)
    assert breaker.state == "half-open" and not breaker.probing
    primary.mode = "ok"
    assert await ask(backend) == "ok"
    assert breaker.state == "closed"


async def test_refused_requests_do_not_open_the_breaker() -> None:
    primary = Scripted()
    backend, breaker = breaker_over(primary)
    primary.mode = "refuse"
    for _ in range(4):
        with pytest.raises(BackendResponseError):
            await ask(backend)
    assert breaker.state == "closed"

"""The circuit breaker around a backend: open after failures, one probe at a time once half-open."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing

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


class SlowFallback:
    """A fallback whose reply takes ``seconds``."""

    model = "fallback"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    async def stream(
        self, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> AsyncGenerator[Delta, None]:
        await asyncio.sleep(self.seconds)
        yield TextDelta("fallback")


async def test_a_probe_is_decided_at_the_moment_it_is_let_through(monkeypatch: pytest.MonkeyPatch) -> None:
    """The breaker's state is read once per request: a request that read "open" and then was let through as the probe
    (the reset time passing between two reads of the clock) could never hand the probe on, and shut the breaker for
    good."""
    primary = Scripted()
    backend, breaker = breaker_over(primary)
    await open_breaker(backend, primary)
    assert breaker.opened_at is not None
    due = breaker.opened_at + breaker.reset_after
    clock = iter([due - 1e-6, due + 1e-6])
    monkeypatch.setattr("vstreamer.llm.resilience.time.monotonic", lambda: next(clock, due + 1e-6))
    primary.mode = "refuse"  # whether refused or let through, this request gives no verdict on the backend
    with pytest.raises((BackendUnavailable, BackendResponseError)):
        await ask(backend)
    monkeypatch.setattr("vstreamer.llm.resilience.time.monotonic", lambda: due + 100)
    primary.mode = "ok"
    assert await ask(backend) == "ok"
    assert breaker.state == "closed"


async def test_only_the_probe_ends_its_probe() -> None:
    """A probe that failed over to a slow fallback ends while a later probe is out: the later one stays the only
    probe (the flag the two shared let a third request through beside it)."""
    primary = Scripted()
    breaker = CircuitBreaker(threshold=1, reset_after=0.05)
    backend = ResilientBackend(primary, fallback=SlowFallback(0.3), breaker=breaker)  # type: ignore[arg-type]
    primary.mode = "down"
    assert await ask(backend) == "fallback"  # opened
    await asyncio.sleep(0.06)
    first = asyncio.create_task(ask(backend))  # the probe: fails, and answers from the fallback
    await asyncio.sleep(0.1)  # half-open again
    assert not first.done()
    primary.mode = "hang"
    calls = primary.calls
    probe = asyncio.create_task(ask(backend))
    await asyncio.sleep(0.01)
    assert primary.calls == calls + 1 and breaker.probing
    assert await first == "fallback"  # its reply ends while the second probe is still out
    third = asyncio.create_task(ask(backend))
    await asyncio.sleep(0.01)
    assert primary.calls == calls + 1  # the third went to the fallback, not beside the probe
    primary.go.set()
    assert await probe == "ok"
    assert await third == "fallback"
    assert breaker.state == "closed"


async def test_a_reply_read_only_in_part_counts_as_a_success() -> None:
    """The engine stops reading a reply early (its guard blocked it, it drifted out of character): the backend
    answered all the same, so failures on either side of it are not consecutive."""
    primary = Scripted()
    backend, breaker = breaker_over(primary)  # opens after 2 consecutive failures
    primary.mode = "down"
    with pytest.raises(BackendUnavailable):
        await ask(backend)
    primary.mode = "ok"
    async with aclosing(backend.stream(PROMPT, SamplingParams())) as stream:
        async for _ in stream:
            break
    primary.mode = "down"
    with pytest.raises(BackendUnavailable):
        await ask(backend)
    assert breaker.state == "closed"


async def test_a_probe_closes_the_breaker_with_its_first_text() -> None:
    """A probe's first text shows the backend is up: the others stop being refused then, not once its reply ends."""
    primary = Scripted()
    breaker = CircuitBreaker(threshold=1, reset_after=0.05)
    backend = ResilientBackend(primary, breaker=breaker)  # type: ignore[arg-type]
    primary.mode = "down"
    with pytest.raises(BackendUnavailable):
        await ask(backend)
    await asyncio.sleep(0.06)
    primary.mode = "ok"
    async with aclosing(backend.stream(PROMPT, SamplingParams())) as probe:
        assert isinstance(await anext(probe), TextDelta)
        assert breaker.state == "closed"
        assert await ask(backend) == "ok"

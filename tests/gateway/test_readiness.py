"""The readiness checks behind ``/readyz``: shared by the callers of one moment, never left stale or stuck."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from vstreamer.gateway.readiness import Readiness, public
from vstreamer.llm import FakeBackend
from vstreamer.llm.base import BackendHealth
from vstreamer.store import Store, open_store


class CountedBackend(FakeBackend):
    """Counts its health checks, each taking ``seconds``; ``ok`` says what they answer."""

    def __init__(self, seconds: float = 0.0) -> None:
        super().__init__()
        self.seconds = seconds
        self.checked = 0
        self.ok = True

    async def health(self) -> BackendHealth:
        self.checked += 1
        await asyncio.sleep(self.seconds)
        return BackendHealth(self.ok, "counted", "m", "" if self.ok else "down at 10.0.0.7:8000")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_store(None, tmp_path)
    yield opened
    await opened.close()


async def test_callers_at_once_share_one_check(store: Store) -> None:
    backend = CountedBackend(seconds=0.05)
    readiness = Readiness(store, backend, ttl=0.2)
    results = await asyncio.gather(*(readiness.checks() for _ in range(20)))
    assert backend.checked == 1
    assert all(r["database"]["ok"] and r["llm"]["ok"] for r in results)
    await readiness.checks()
    assert backend.checked == 1  # within the ttl: the same answer


async def test_a_check_is_redone_once_its_answer_is_old(store: Store) -> None:
    backend = CountedBackend()
    readiness = Readiness(store, backend, ttl=0.05)
    assert (await readiness.checks())["llm"]["ok"]
    backend.ok = False
    await asyncio.sleep(0.06)
    checks = await readiness.checks()
    assert backend.checked == 2 and not checks["llm"]["ok"]
    assert public(checks) == {"database": {"ok": True}, "llm": {"ok": False}}


async def test_a_caller_that_leaves_does_not_cancel_the_others_check(store: Store) -> None:
    backend = CountedBackend(seconds=0.1)
    readiness = Readiness(store, backend, ttl=1.0)
    leaving = asyncio.create_task(readiness.checks())
    staying = asyncio.create_task(readiness.checks())
    await asyncio.sleep(0.02)
    leaving.cancel()
    assert (await staying)["llm"]["ok"]
    assert backend.checked == 1


async def test_a_database_that_does_not_answer_is_reported(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def stuck() -> None:
        await asyncio.sleep(10)

    monkeypatch.setattr(store, "ping", stuck)
    monkeypatch.setattr("vstreamer.gateway.readiness.DB_TIMEOUT_S", 0.05)
    checks = await Readiness(store, CountedBackend()).checks()
    assert checks["database"] == {"ok": False, "detail": "no answer within 0.05s"}
    assert checks["llm"]["ok"]

"""``/readyz``: is the database answering, is the LLM backend healthy.

The route needs no API key (load balancers and orchestrators probe it), so what it costs and what it tells are bounded:
the checks run at most once per :attr:`Readiness.ttl` however many callers ask (each one is a database round trip and a
few requests to the LLM server), and a caller without a valid key learns only whether each part is ok, not the error
text, versions or addresses behind it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from vstreamer.llm import LLMBackend
from vstreamer.store import Store

logger = logging.getLogger(__name__)
DB_TIMEOUT_S = 5.0


class Readiness:
    """The latest readiness checks, shared by the callers within ``ttl`` seconds of them."""

    def __init__(self, store: Store, backend: LLMBackend, *, ttl: float = 1.0) -> None:
        self.store = store
        self.backend = backend
        self.ttl = ttl
        self._checks: dict[str, dict[str, Any]] | None = None
        self._checked_at = 0.0
        self._running: asyncio.Future[dict[str, dict[str, Any]]] | None = None
        self._health_failure: str | None = None
        """How the backend's health check last raised (logged when it first did), until it answers again."""

    async def checks(self) -> dict[str, dict[str, Any]]:
        """Every check with its details, by part (``database``, ``llm``); each has ``ok``."""
        if self._checks is not None and time.monotonic() - self._checked_at < self.ttl:
            return self._checks
        if self._running is None:
            self._running = asyncio.ensure_future(self._check())
            self._running.add_done_callback(self._done)
        # Shielded: a caller that goes away does not cancel the check the others wait for.
        return await asyncio.shield(self._running)

    def _done(self, running: asyncio.Future[dict[str, dict[str, Any]]]) -> None:
        self._running = None
        if not running.cancelled() and running.exception() is None:
            self._checks, self._checked_at = running.result(), time.monotonic()

    async def _check(self) -> dict[str, dict[str, Any]]:
        checks: dict[str, dict[str, Any]] = {}
        try:
            await asyncio.wait_for(self.store.ping(), DB_TIMEOUT_S)
            checks["database"] = {"ok": True}
        except TimeoutError:
            checks["database"] = {"ok": False, "detail": f"no answer within {DB_TIMEOUT_S:g}s"}
        except Exception as exc:  # any failure means not ready; the reason is reported
            checks["database"] = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}
        checks["llm"] = await self._check_llm()
        return checks

    async def _check_llm(self) -> dict[str, Any]:
        try:
            health = await self.backend.health()
        # A bug in a backend's check (an answer of a shape it did not expect) is "not ready", not a 500 per probe.
        except Exception as exc:
            failure = type(exc).__name__
            if failure != self._health_failure:  # every probe fails alike: once in the log is enough
                logger.error("the LLM backend's health check raised %s (reported as not ready)", failure,
                             exc_info=exc)  # fmt: skip
            self._health_failure = failure
            # The type only: the message may quote what the server answered (or its address), and this is shown.
            return {"ok": False, "backend": self.backend.name, "model": self.backend.model,
                    "detail": f"the health check failed ({failure})"}  # fmt: skip
        self._health_failure = None
        return {"ok": health.ok, "backend": health.backend, "model": health.model,
                "detail": health.detail, "version": health.version} | health.extras  # fmt: skip


def public(checks: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What a caller without an API key is told: whether each part is ok."""
    return {part: {"ok": check["ok"]} for part, check in checks.items()}

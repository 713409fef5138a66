"""Background work of the engine (summaries, fact extraction): tracked, never awaited by a reply.

Each job has a key (e.g. ``summary:<conversation id>``); a second job with the same key is not started while the
first runs, so a busy conversation never piles up work. ``aclose`` cancels whatever is left (shutdown).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

logger = logging.getLogger(__name__)


class BackgroundTasks:
    """A set of running jobs, keyed, with failures logged instead of lost."""

    def __init__(self) -> None:
        self._running: dict[str, asyncio.Task[Any]] = {}
        self.failures = 0
        """Jobs that raised (logged; they never reach a reply)."""

    def running(self, key: str) -> bool:
        task = self._running.get(key)
        return task is not None and not task.done()

    def spawn(self, key: str, job: Coroutine[Any, Any, Any]) -> bool:
        """Start ``job`` unless one with ``key`` still runs (then ``job`` is closed unstarted)."""
        if self.running(key):
            job.close()
            return False
        task = asyncio.get_running_loop().create_task(job, name=key)
        self._running[key] = task
        task.add_done_callback(lambda done: self._finished(key, done))
        return True

    def _finished(self, key: str, task: asyncio.Task[Any]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self.failures += 1
            logger.warning("background job %s failed: %s: %s", key, type(error).__name__, error)

    def __len__(self) -> int:
        return sum(1 for t in self._running.values() if not t.done())

    async def drain(self) -> None:
        """Wait until no job runs (tests, orderly shutdown); jobs started meanwhile are awaited too."""
        while tasks := [t for t in self._running.values() if not t.done()]:
            await asyncio.wait(tasks)

    async def aclose(self) -> None:
        """Cancel every job and wait for them to unwind."""
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._running.clear()

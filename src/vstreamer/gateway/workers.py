"""``serve --workers N``: N forked processes serving one listening socket, and the parent that watches them.

One Python process serves from one core; the gateway's work per request (prompt, moderation, persona watch,
storage) kept one process from serving as fast as one GPU answers. The parent opens everything once (migrations,
the compiled lexicons, the persona files) and forks: the workers share those pages and the socket, whose kernel
queue hands each connection to one of them. Each keeps its own session cache, true to what the others commit
through a table of change counters in shared memory (:mod:`vstreamer.store.shared`); metrics add up across them.

SIGTERM or SIGINT to the parent stops every worker gracefully (the workers have a process group of their own, so
a terminal's Ctrl-C reaches the parent alone, which passes it on once). A worker that exits on its own is started
again, unless it did so soon after its start (it would only fail again): then the others are stopped too. A worker
whose parent dies (killed outright) is stopped by the kernel, not left holding the port.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from types import FrameType

logger = logging.getLogger(__name__)

#: A worker that exits sooner than this after its start is not started again (a failing start would loop).
STEADY_AFTER_S = 10.0


def run_workers(
    count: int, serve: Callable[[int], int], *, on_exit: Callable[[int], None] | None = None
) -> int:
    """Fork ``count`` workers, each running ``serve(index)`` and exiting with what it returns; wait for them.

    Returns 0 when they were stopped by a signal, else the exit status of the worker that ended it all. ``on_exit``
    is told the pid of every worker that ended (its metrics files are marked dead).
    """
    workers: dict[int, tuple[int, float]] = {}  # pid -> (index, when started)
    stopping = False
    status = 0

    parent = os.getpid()

    def start(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker: the parent's handlers are not its own (uvicorn sets its own)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.setpgid(0, 0)
            _stop_with(parent)
            code = 1
            try:
                code = serve(index)
            except BaseException:  # noqa: BLE001 - whatever it was, the worker reports it and exits
                traceback.print_exc()
            finally:
                os._exit(code)
        workers[pid] = (index, time.monotonic())
        if stopping:  # a signal came while it forked
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):  # ended meanwhile
                os.kill(pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for index in range(count):
            start(index)
        while workers:
            try:
                pid, wait_status = os.wait()
            except ChildProcessError:
                break
            if pid not in workers:
                continue
            index, started = workers.pop(pid)
            if on_exit is not None:
                on_exit(pid)
            code = os.waitstatus_to_exitcode(wait_status)
            if stopping:
                continue
            if time.monotonic() - started < STEADY_AFTER_S:
                logger.error(
                    "gateway worker %d exited at its start (status %d): stopping the others", index, code
                )
                status = code or 1
                stop(signal.SIGTERM, None)
                continue
            logger.warning("gateway worker %d exited (status %d): starting it again", index, code)
            start(index)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status


_PR_SET_PDEATHSIG = 1


def _stop_with(parent: int) -> None:
    """Have the kernel send this worker SIGTERM when its parent dies (Linux); exit now if it already has."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the request above took effect
        os._exit(0)

"""The audit log: every moderation decision, what fired and why."""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import re
import threading
import time
import weakref
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from vstreamer.safety.policy import StoreMode
from vstreamer.safety.types import ModerationResult

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One decision."""

    direction: str
    source: str
    action: str
    categories: tuple[str, ...]
    reason: str
    rules: tuple[str, ...]
    """Which rules fired (``<folder>/<file>:<line>``, ``pii:phone``...)."""
    text: str | None
    """The message as the policy allows storing it (full, masked or None)."""
    text_sha256: str
    """Hash of the original message, to correlate without keeping it."""
    injection: bool = False
    time: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


LEAK_REASON = "leak: "
"""How a reply blocked for reproducing the protected prompt is explained."""
_TERM_FILE_RULE = re.compile(r"\.\w+:\d+\Z")
"""The rule of a lexicon term (``folder/file.txt:line``): its term is the lexicon's word, not the message's own text
(as what a pattern or a personal-data screen matched is)."""


def make_record(
    result: ModerationResult,
    *,
    direction: str,
    source: str,
    store: StoreMode,
    injection: bool = False,
    received: str | None = None,
) -> AuditRecord:
    """Build the record of ``result``, keeping the text as ``store`` says: ``masked`` and ``none`` keep no more of it
    in the reason either (what a pattern matched is the message's own text: an id, a number), and ``masked`` keeps no
    text of a reply that reproduced the protected prompt (masking covers none of it).

    ``received``: the message as it came, when ``result`` is of a sanitised copy (control tokens removed); ``full``
    keeps it and the hash is of it."""
    original = result.text if received is None else received
    kept = {"full": original, "masked": result.output, "none": None}[store]
    reason = result.reason
    if store != "full":
        if LEAK_REASON in reason:
            kept = None
        for match in result.matches:
            if not _TERM_FILE_RULE.search(match.rule):
                reason = reason.replace(f"'{match.term}'", f"'{'*' * len(match.term)}'")
                if match.rule.startswith("pattern:"):
                    # the matched text itself, however the reason was worded (a pattern's term is that text; a
                    # personal-data screen's is its name, "phone", left as is)
                    reason = reason.replace(match.term, "*" * len(match.term))
    return AuditRecord(
        direction=direction,
        source=source,
        action=result.action,
        categories=result.categories,
        reason=reason,
        rules=tuple(dict.fromkeys(m.rule for m in result.matches)),
        text=kept,
        # "surrogatepass": a lone surrogate (half an emoji from a streamed JSON escape) must not lose the record
        text_sha256=hashlib.sha256(original.encode("utf-8", "surrogatepass")).hexdigest(),
        injection=injection,
    )


class AuditLog(Protocol):
    """Where decisions go. A log with ``passes = False`` is only given :func:`notable` ones."""

    def record(self, record: AuditRecord) -> None: ...


class MemoryAuditLog:
    """Keeps the last ``maxlen`` records (tests, the admin page)."""

    def __init__(self, maxlen: int = 10_000) -> None:
        self.records: deque[AuditRecord] = deque(maxlen=maxlen)

    def record(self, record: AuditRecord) -> None:
        self.records.append(record)


def notable(action: str, categories: tuple[str, ...], injection: bool) -> bool:
    """Anything but a clean pass: a decision worth a log line."""
    return action != "pass" or bool(categories) or injection


class LoggingAuditLog:
    """Writes non-pass decisions to the ``vstreamer.safety.audit`` logger."""

    passes = False
    """Clean passes are not kept (the pipeline does not even build their records)."""

    def record(self, record: AuditRecord) -> None:
        if notable(record.action, record.categories, record.injection):
            logger.info("moderation %s", json.dumps(record.to_json(), ensure_ascii=False))


class JsonlAuditLog:
    """Appends one JSON line per decision to a file, written by a background thread.

    :meth:`record` only queues the record, so the event loop never waits for the disk; the writer
    thread serialises whatever has queued up and appends it in one write (opening the file per
    batch, so that log rotation works). The queue is bounded by ``max_pending``: if the disk falls
    that far behind, :meth:`record` waits for room rather than drop a decision. :meth:`flush`
    waits until everything queued so far is on disk; :meth:`close` flushes and stops the thread
    (done at interpreter exit too). After :meth:`close`, records are appended synchronously.
    """

    def __init__(self, path: Path, *, max_pending: int = 10_000) -> None:
        self.path = Path(path)
        self._queue: queue.Queue[AuditRecord | None] = queue.Queue(max_pending)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop: weakref.finalize[Any, Any] | None = None
        self._closed = False

    def record(self, record: AuditRecord) -> None:
        with self._lock:  # ordered with close(): nothing is queued behind the stop marker
            if not self._closed:
                if self._thread is None:
                    self._start()
                self._queue.put(record)
                return
        _append(self.path, [record])

    def _start(self) -> None:
        thread = threading.Thread(
            target=_write_loop, args=(self._queue, self.path), name="audit-log-writer", daemon=True
        )
        thread.start()
        # The thread holds the queue and the path, not this object: when the log is dropped or the
        # interpreter exits, the finaliser writes what is queued and stops the thread.
        self._stop = weakref.finalize(self, _stop_writer, self._queue, thread)
        self._thread = thread

    def flush(self) -> None:
        """Wait until every record queued so far is written."""
        self._queue.join()

    def close(self) -> None:
        """Write what is queued and stop the writer thread (idempotent)."""
        with self._lock:
            self._closed = True
        if self._stop is not None:
            self._stop()


_FAILING: dict[Path, int] = {}
"""Audit files that could not be written, with the batches lost since: the first failure is logged with its
traceback, the rest are counted (a folder gone would otherwise print one per message), and the count is logged when
the file is written again."""


def _append(path: Path, records: list[AuditRecord]) -> None:
    lines = "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in records)
    try:
        # backslashreplace: a lone surrogate (kept raw by ensure_ascii=False) is written as its JSON escape "\\ud83d"
        with path.open("a", encoding="utf-8", errors="backslashreplace") as f:
            f.write(lines)
    except OSError:  # the audit log must never break a conversation
        lost = _FAILING.get(path)
        if lost is None:
            logger.exception("cannot append to the audit log %s (its records are lost until it can)", path)
        _FAILING[path] = (lost or 0) + 1
        return
    if (lost := _FAILING.pop(path, None)) is not None:
        logger.warning("the audit log %s is written again (%d batches of records were lost)", path, lost)


def _write_loop(pending: queue.Queue[AuditRecord | None], path: Path) -> None:
    while True:
        batch = [pending.get()]
        while True:
            try:
                batch.append(pending.get_nowait())
            except queue.Empty:
                break
        records = [r for r in batch if r is not None]
        if records:
            _append(path, records)
        for _ in batch:
            pending.task_done()
        if len(records) < len(batch):  # the stop marker
            return


def _stop_writer(pending: queue.Queue[AuditRecord | None], thread: threading.Thread) -> None:
    pending.put(None)
    thread.join()

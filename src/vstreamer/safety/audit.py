"""The audit log: every moderation decision, what fired and why."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
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


def make_record(
    result: ModerationResult, *, direction: str, source: str, store: StoreMode, injection: bool = False
) -> AuditRecord:
    """Build the record of ``result``, keeping the text as ``store`` says."""
    kept = {"full": result.text, "masked": result.output, "none": None}[store]
    return AuditRecord(
        direction=direction,
        source=source,
        action=result.action,
        categories=result.categories,
        reason=result.reason,
        rules=tuple(dict.fromkeys(m.rule for m in result.matches)),
        text=kept,
        text_sha256=hashlib.sha256(result.text.encode("utf-8")).hexdigest(),
        injection=injection,
    )


class AuditLog(Protocol):
    """Where decisions go."""

    def record(self, record: AuditRecord) -> None: ...


class MemoryAuditLog:
    """Keeps the last ``maxlen`` records (tests, the admin page)."""

    def __init__(self, maxlen: int = 10_000) -> None:
        self.records: deque[AuditRecord] = deque(maxlen=maxlen)

    def record(self, record: AuditRecord) -> None:
        self.records.append(record)


class LoggingAuditLog:
    """Writes non-pass decisions to the ``vstreamer.safety.audit`` logger."""

    def record(self, record: AuditRecord) -> None:
        if record.action != "pass" or record.categories or record.injection:
            logger.info("moderation %s", json.dumps(record.to_json(), ensure_ascii=False))


class JsonlAuditLog:
    """Appends one JSON line per decision to a file (small writes; thread-safe)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def record(self, record: AuditRecord) -> None:
        line = json.dumps(record.to_json(), ensure_ascii=False) + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as f:
            f.write(line)

"""Persistence: SQLAlchemy 2 (async); SQLite by default, PostgreSQL by URL; Alembic migrations applied on open."""

from vstreamer.store.records import ApiKeyRecord, SessionRecord, SummaryRecord
from vstreamer.store.store import Store, open_store

__all__ = ["ApiKeyRecord", "SessionRecord", "Store", "SummaryRecord", "open_store"]

"""Persistence: SQLAlchemy 2 (async); SQLite by default, PostgreSQL by URL; Alembic migrations applied on open."""

from vstreamer.store.records import ApiKeyRecord, ErasedTalk, SessionRecord, SummaryRecord
from vstreamer.store.store import Store, open_store

__all__ = ["ApiKeyRecord", "ErasedTalk", "SessionRecord", "Store", "SummaryRecord", "open_store"]

"""The database schema (SQLAlchemy 2 declarative). Changes go through an Alembic migration in ``migrations/``."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class SessionRow(Base):
    """A conversation: one persona with one owner (web user, API key) or one live room / viewer."""

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    persona_id: Mapped[str] = mapped_column(String(64))
    owner: Mapped[str] = mapped_column(String(128), index=True)
    platform: Mapped[str] = mapped_column(String(32), default="web")
    viewer_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    user_name: Mapped[str] = mapped_column(String(128), default="")
    title: Mapped[str] = mapped_column(String(200), default="")
    summary: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class MessageRow(Base):
    """One turn of a session. A session's turns are in order of ``created_at``, then ``pk``: a reply's row is
    inserted when it ends, after a message sent while it ran, but it was made (and shown) first."""

    __tablename__ = "messages"
    __table_args__ = (Index("ix_messages_session_id_created_at", "session_id", "created_at", "pk"),)

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    completion_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    first_token_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    duration_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    summary_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """The summary version the prompt of this (assistant) turn carried."""


class PersonaRow(Base):
    """A persona imported by a user through the API (bundled personas live in the package)."""

    __tablename__ = "personas"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    owner: Mapped[str] = mapped_column(String(128))
    data: Mapped[str] = mapped_column(Text)
    """The persona as JSON (our format)."""
    avatar_png: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ApiKeyRow(Base):
    """An API key, stored as a SHA-256 hash (keys are 256-bit random: no slow hash needed)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class SummaryRow(Base):
    """One version of a session's running summary; each assistant turn names the version its prompt used."""

    __tablename__ = "summaries"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), index=True)
    covers_until_turn_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """The newest turn folded into this summary."""
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ViewerFactRow(Base):
    """Something remembered about one viewer, keyed by (platform, user id), never by display name."""

    __tablename__ = "viewer_facts"
    __table_args__ = (UniqueConstraint("platform", "user_id", "normalized", name="uq_viewer_facts_fact"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[str] = mapped_column(String(200))
    fact: Mapped[str] = mapped_column(Text)
    normalized: Mapped[str] = mapped_column(String(200))
    """The fact folded for de-duplication (case, width, punctuation and spaces removed)."""
    embedding: Mapped[str | None] = mapped_column(Text, nullable=True)
    """JSON list of floats, when an embedding model is configured."""
    session_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    turn_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)

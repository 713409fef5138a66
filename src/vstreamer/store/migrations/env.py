"""Alembic environment: runs on the connection that :func:`vstreamer.store.migrate.upgrade` hands over."""

from __future__ import annotations

from alembic import context

from vstreamer.store.tables import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through vstreamer.store (it opens the connection)")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()

"""The store's API keys: stored hashed (SHA-256; the plaintext is shown once), compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING

from sqlalchemy import select, update

from vstreamer.store.database import shielded
from vstreamer.store.records import ApiKeyRecord, aware, utc_now
from vstreamer.store.tables import ApiKeyRow

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

KEY_PREFIX = "vs-"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class ApiKeyTables:
    """Mixed into :class:`vstreamer.store.Store`; every method is one short transaction."""

    def _tx(self) -> AbstractAsyncContextManager[AsyncSession]:
        raise NotImplementedError

    @shielded
    async def create_api_key(self, name: str) -> tuple[ApiKeyRecord, str]:
        """Make a key; the plaintext is returned once and never stored."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        row = ApiKeyRow(
            id=secrets.token_hex(8),
            name=name[:100],
            key_hash=hash_key(key),
            prefix=key[:10],
            created_at=utc_now(),
        )
        async with self._tx() as session:
            session.add(row)
        return ApiKeyRecord(row.id, row.name, row.prefix, row.created_at, False), key

    @shielded
    async def verify_api_key(self, key: str) -> ApiKeyRecord | None:
        digest = hash_key(key)
        async with self._tx() as session:
            row = (await session.scalars(select(ApiKeyRow).where(ApiKeyRow.key_hash == digest))).first()
        if row is None or row.revoked_at is not None or not hmac.compare_digest(row.key_hash, digest):
            return None
        return ApiKeyRecord(row.id, row.name, row.prefix, aware(row.created_at), False)

    @shielded
    async def list_api_keys(self) -> list[ApiKeyRecord]:
        async with self._tx() as session:
            rows = (await session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at))).all()
        return [
            ApiKeyRecord(r.id, r.name, r.prefix, aware(r.created_at), r.revoked_at is not None) for r in rows
        ]

    @shielded
    async def revoke_api_key(self, key_id: str) -> bool:
        async with self._tx() as session:
            result = await session.execute(
                update(ApiKeyRow)
                .where(ApiKeyRow.id == key_id, ApiKeyRow.revoked_at.is_(None))
                .values(revoked_at=utc_now())
            )
        return bool(getattr(result, "rowcount", 0))

"""API-key authentication: ``Authorization: Bearer <key>``, keys stored hashed, checked in constant time."""

from __future__ import annotations

import time
from collections.abc import Mapping

from vstreamer.gateway.errors import APIError
from vstreamer.store import Store
from vstreamer.store.keys import hash_key

LOCAL_PRINCIPAL = "local"


class Authenticator:
    """Resolves a request's headers to its principal (the API key id, which owns the sessions it creates)."""

    def __init__(self, store: Store, *, enabled: bool, cache_ttl: float = 30.0) -> None:
        self.store = store
        self.enabled = enabled
        self.cache_ttl = cache_ttl
        self._cache: dict[str, tuple[str, float]] = {}

    async def __call__(self, headers: Mapping[str, str]) -> str:
        if not self.enabled:
            return LOCAL_PRINCIPAL
        header = headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise APIError(401, "missing API key: send 'Authorization: Bearer <key>'", type_="authentication_error",
                           code="invalid_api_key")  # fmt: skip
        digest = hash_key(key.strip())
        cached = self._cache.get(digest)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        record = await self.store.verify_api_key(key.strip())
        if record is None:
            raise APIError(401, "invalid API key", type_="authentication_error", code="invalid_api_key")
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (record.id, now + self.cache_ttl)
        return record.id

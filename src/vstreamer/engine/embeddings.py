"""Optional embeddings for memory retrieval, from any OpenAI-compatible ``/v1/embeddings`` endpoint."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import httpx

from vstreamer.errors import BackendResponseError, BackendUnavailable


class Embedder(Protocol):
    """Turns texts into vectors (same order)."""

    async def embed(self, texts: Sequence[str]) -> list[tuple[float, ...]]: ...

    async def aclose(self) -> None: ...


class OpenAIEmbeddings:
    """``POST {base_url}/embeddings`` with ``{"model", "input"}``, as vLLM, llama.cpp and OpenAI accept."""

    def __init__(
        self, base_url: str, model: str, *, api_key: str = "EMPTY", timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:  # fmt: skip
        self.model = model
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), timeout=timeout, transport=transport,
            headers={"Authorization": f"Bearer {api_key}"},
        )  # fmt: skip

    async def embed(self, texts: Sequence[str]) -> list[tuple[float, ...]]:
        if not texts:
            return []
        try:
            response = await self._client.post(
                "/embeddings", json={"model": self.model, "input": list(texts)}
            )
        except httpx.HTTPError as exc:
            raise BackendUnavailable(f"embeddings endpoint unreachable: {type(exc).__name__}") from exc
        if response.status_code != 200:
            raise BackendResponseError(
                f"embeddings endpoint answered {response.status_code}", response.status_code
            )
        try:
            rows = sorted(response.json()["data"], key=lambda row: row["index"])
            vectors = [tuple(float(x) for x in row["embedding"]) for row in rows]
        except (ValueError, KeyError, TypeError) as exc:
            raise BackendResponseError(f"malformed embeddings response: {exc}") from exc
        if len(vectors) != len(texts):
            raise BackendResponseError("embeddings response has the wrong number of vectors")
        return vectors

    async def aclose(self) -> None:
        await self._client.aclose()

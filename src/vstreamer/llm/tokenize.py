"""Token counting against a remote OpenAI-compatible server.

vLLM serves ``/tokenize`` (plain text, or chat ``messages`` rendered with the model's chat template): counts are
exact. llama.cpp's server offers ``/extras/tokenize`` for plain text only: message counts add a measured-free
template overhead. Anything else falls back to the conservative estimate.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

import httpx

from vstreamer.llm.base import ChatMessage
from vstreamer.llm.estimate import MESSAGE_OVERHEAD, estimate_tokens

logger = logging.getLogger(__name__)

TokenizerKind = Literal["vllm", "llama_cpp", "estimate"]
#: ChatML-like templates spend ~5 tokens per message on role markers; used where the server cannot say.
_TEXT_ONLY_OVERHEAD = 6


class LRUCache:
    """A small bounded mapping from text to token count."""

    def __init__(self, size: int = 8192) -> None:
        self.size = size
        self._data: OrderedDict[str, int] = OrderedDict()

    def get(self, key: str) -> int | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: str, value: int) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        if len(self._data) > self.size:
            self._data.popitem(last=False)


class RemoteTokenizer:
    """Counts tokens with the serving model's own tokenizer when the server exposes one."""

    def __init__(self, http: httpx.AsyncClient, base_url: str, model: str) -> None:
        self._http = http
        self._v1 = base_url.rstrip("/")
        self._root = self._v1.removesuffix("/v1")
        self._model = model
        self._cache = LRUCache()
        self._overhead: int | None = None
        self.kind: TokenizerKind | None = None
        """Which tokenizer answered; ``None`` until the first count."""
        self.reason = ""
        """Why counts are estimated, when they are."""

    async def detect(self) -> TokenizerKind:
        if self.kind is None:
            if await self._vllm_tokenize(prompt="ping") is not None:
                self.kind = "vllm"
            elif await self._llama_tokenize("ping") is not None:
                self.kind = "llama_cpp"
            else:
                self.kind = "estimate"
                self.reason = "the server exposes no tokenizer endpoint; using a conservative estimate"
                logger.info("%s (%s)", self.reason, self._root)
        return self.kind

    async def count_text(self, text: str) -> int:
        cached = self._cache.get(text)
        if cached is not None:
            return cached
        kind = await self.detect()
        count: int | None = None
        if kind == "vllm":
            count = await self._vllm_tokenize(prompt=text)
        elif kind == "llama_cpp":
            count = await self._llama_tokenize(text)
        if count is None:
            count = estimate_tokens(text)
        self._cache.put(text, count)
        return count

    async def count(self, messages: Sequence[ChatMessage]) -> int:
        """Tokens of the whole rendered prompt (exact on vLLM)."""
        if await self.detect() == "vllm":
            exact = await self._vllm_tokenize(messages=messages)
            if exact is not None:
                return exact
        total = 0
        for message in messages:
            total += await self.count_message(message)
        return total

    async def count_message(self, message: ChatMessage) -> int:
        """One message's share of a prompt: its text plus the template's per-message overhead."""
        return await self.count_text(message.content) + await self.message_overhead()

    async def message_overhead(self) -> int:
        if self._overhead is None:
            kind = await self.detect()
            if kind == "vllm":
                one = [ChatMessage("user", "x")]
                two = [ChatMessage("user", "x"), ChatMessage("assistant", "x")]
                a, b = await self._vllm_tokenize(messages=one), await self._vllm_tokenize(messages=two)
                text = await self.count_text("x")
                self._overhead = (
                    max(b - a - text, 0) + 1 if a is not None and b is not None else MESSAGE_OVERHEAD
                )
            else:
                self._overhead = _TEXT_ONLY_OVERHEAD if kind == "llama_cpp" else MESSAGE_OVERHEAD
        return self._overhead

    async def server_version(self) -> str | None:
        try:
            response = await self._http.get(f"{self._root}/version")
            if response.status_code == 200:
                return str(response.json().get("version"))
        except (httpx.HTTPError, ValueError):
            pass
        return None

    async def _vllm_tokenize(
        self, *, prompt: str | None = None, messages: Sequence[ChatMessage] | None = None
    ) -> int | None:
        body: dict[str, object] = {"model": self._model}
        if messages is not None:
            body["messages"] = [m.as_dict() for m in messages]
            body["add_generation_prompt"] = False
        else:
            body["prompt"] = prompt
            body["add_special_tokens"] = False
        return await self._post_count(f"{self._root}/tokenize", body, "count")

    async def _llama_tokenize(self, text: str) -> int | None:
        return await self._post_count(
            f"{self._v1.removesuffix('/v1')}/extras/tokenize", {"input": text}, "tokens"
        )

    async def _post_count(self, url: str, body: dict[str, object], field: str) -> int | None:
        try:
            response = await self._http.post(url, json=body)
        except httpx.HTTPError as exc:
            logger.debug("tokenize at %s failed: %s", url, exc)
            return None
        if response.status_code != 200:
            return None
        try:
            value = response.json()[field]
        except (ValueError, KeyError, TypeError):
            return None
        if isinstance(value, list):
            return len(value)
        return int(value) if isinstance(value, int) else None

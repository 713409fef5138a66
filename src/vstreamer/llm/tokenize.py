"""Token counting against a remote OpenAI-compatible server.

vLLM serves ``/tokenize`` (plain text, or chat ``messages`` rendered with the model's chat template): counts are
exact, and per-message shares use overheads measured with the server's own template. llama.cpp's server offers
``/extras/tokenize`` for plain text only: text counts are exact, the template overhead is approximated.
Anything else falls back to the conservative estimate. ``reason`` says why a count is not exact.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from typing import Literal

import httpx

from vstreamer.llm.base import ChatMessage, Role
from vstreamer.llm.estimate import MESSAGE_OVERHEAD, estimate_tokens
from vstreamer.llm.roles import strict_roles
from vstreamer.logs import redact
from vstreamer.lru import LRU

logger = logging.getLogger(__name__)

_REDETECT_AFTER_S = 30.0
_TOKENIZE_TIMEOUT_S = 5.0

TokenizerKind = Literal["vllm", "llama_cpp", "estimate"]
#: ChatML-like templates spend ~5 tokens per message on role markers; used where the server cannot say.
_TEXT_ONLY_OVERHEAD = 6


def hide_secret(text: str, secret: str) -> str:
    """``text`` with ``secret`` (an API key) and any password in a URL replaced by ``***``, for messages and logs
    (``/readyz`` and the CLI show them: an error of httpx quotes the server's URL, credentials and all).

    The key is replaced where it stands alone, not inside a longer word or number: a short key ("40") must not
    garble "4096 tokens". ``EMPTY``, what local servers are given for no key, is no secret."""
    if secret and secret != "EMPTY" and secret in text:
        text = re.sub(f"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", "***", text)
    return redact(text)


class RemoteTokenizer:
    """Counts tokens with the serving model's own tokenizer when the server exposes one."""

    def __init__(self, http: httpx.AsyncClient, base_url: str, model: str, *, secret: str = "") -> None:
        self._http = http
        self._secret = secret
        """The API key ``http`` sends: never logged."""
        self._v1 = base_url.rstrip("/")
        self._root = self._v1.removesuffix("/v1")
        self._model = model
        self._cache: LRU[str, int] = LRU(8192)
        self._overheads: dict[Role, int] = {}
        self._unreachable = False
        self._retry_at = 0.0
        self.kind: TokenizerKind | None = None
        """Which tokenizer answered; ``None`` until the first count."""
        self.reason = ""
        """Why counts are estimated, when they are."""
        self.template_measured = False
        """The per-role overheads were measured with the server's own chat template (vLLM): a message's share is
        then exact, and a prompt's count is the sum of its messages' shares."""
        self.strict_roles = False
        """Prompts reach the model arranged for a strict chat template (:func:`~vstreamer.llm.roles.strict_roles`):
        whole prompts are counted so, and the overheads measured with user and assistant turns only. Set by
        :meth:`use_strict_roles`."""

    def use_strict_roles(self) -> None:
        """Count prompts as they are sent to a strict chat template from now on. Overheads measured with system
        messages are measured again: such a template refused those (estimated overheads stood in)."""
        if not self.strict_roles:
            self.strict_roles = True
            if self.kind == "vllm":
                self._overheads = {}
                self.template_measured = False
                self.reason = ""

    async def detect(self) -> TokenizerKind:
        if self.kind is None:
            if time.monotonic() < self._retry_at:
                return "estimate"  # the server was unreachable a moment ago: estimate, detect again later
            self._unreachable = False
            if await self._vllm_tokenize(prompt="ping") is not None:
                self.kind = "vllm"
            elif await self._llama_tokenize("ping") is not None:
                self.kind = "llama_cpp"
                self.reason = (
                    "llama.cpp's server tokenizes plain text only (/extras/tokenize, no chat messages): text "
                    f"counts are exact, the chat template's overhead is approximated ({_TEXT_ONLY_OVERHEAD}/message)"
                )
            elif self._unreachable:
                # Not an answer about tokenizers: count conservatively now and ask again once it is back.
                self._retry_at = time.monotonic() + _REDETECT_AFTER_S
                return "estimate"
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
            # A stand-in, never cached: the tokenizer may answer next time (a server starting up or restarting).
            return estimate_tokens(text)
        self._cache.put(text, count)
        return count

    async def count(self, messages: Sequence[ChatMessage]) -> int:
        """Tokens of the whole rendered prompt (exact on vLLM, arranged as it is sent)."""
        if await self.detect() == "vllm":
            exact = await self._vllm_tokenize(
                messages=strict_roles(messages) if self.strict_roles else messages
            )
            if exact is not None:
                return exact
        total = 0
        for message in messages:
            total += await self.count_message(message)
        return total

    async def count_message(self, message: ChatMessage) -> int:
        """One message's share of a prompt: its text plus the template's overhead for its role.

        On vLLM the shares of a prompt that starts with a system message add up to the exact count of the whole
        (the system share carries the template's fixed prefix, such as a BOS token).
        """
        return await self.count_text(message.content) + await self.role_overhead(message.role)

    async def message_overhead(self) -> int:
        """The largest per-message template overhead (for callers that do not know the role)."""
        return max([await self.role_overhead(role) for role in ("system", "user", "assistant")])

    async def role_overhead(self, role: Role) -> int:
        if not self._overheads:
            measured = await self._measure_overheads()
            if measured is None:  # the server is unreachable: estimate for now, measure once it answers
                return MESSAGE_OVERHEAD
            self._overheads = measured
        return self._overheads[role]

    async def _measure_overheads(self) -> dict[Role, int] | None:
        """The per-role overheads, kept for good; ``None`` while the server cannot be asked (nothing is kept)."""
        kind = await self.detect()
        if kind == "vllm":
            return await self._measure_template()
        if kind == "llama_cpp":
            return dict.fromkeys(("system", "user", "assistant"), _TEXT_ONLY_OVERHEAD)
        if self.kind is None:
            return None  # "estimate" only for now: the server is unreachable, its kind still unknown
        return dict.fromkeys(("system", "user", "assistant"), MESSAGE_OVERHEAD)

    async def _measure_template(self) -> dict[Role, int] | None:
        """Overheads measured with vLLM's own chat template; ``None`` when a request failed on the network."""
        # Render each role's message after a prefix (none, for the first) with the server's own chat template: the
        # differences are exact, template quirks included (a default system prompt is only added when none is
        # given). The first message's overhead carries the template's fixed prefix, such as a BOS token.
        self._unreachable = False
        text = await self.count_text("x")
        rendered: dict[tuple[Role, ...], int | None] = {(): 0}
        if self.strict_roles:  # a system text is sent as a user message's, or joins one
            chats: dict[Role, tuple[Role, ...]] = {
                "system": ("user",), "assistant": ("user", "assistant"), "user": ("user", "assistant", "user"),
            }  # fmt: skip
        else:
            chats = {"system": ("system",), "user": ("system", "user"), "assistant": ("system", "assistant")}
        overheads: dict[Role, int] = {}
        for role, chat in chats.items():
            for prompt in (chat[:-1], chat):
                if prompt not in rendered:
                    rendered[prompt] = await self._vllm_tokenize(
                        messages=[ChatMessage(r, "x") for r in prompt]
                    )
            whole, before = rendered[chat], rendered[chat[:-1]]
            if whole is None or before is None:
                break
            overheads[role] = whole - before - text
        if self._unreachable:
            return None  # a network failure is not the server refusing chat messages: measure again later
        if len(overheads) == 3:
            # Arranged prompts join messages: their shares are then a close bound (a join saves a message's markers
            # for a separator), not the exact sum, and a bound is what the budget needs; recounting each prompt
            # whole instead cost every turn a /tokenize round trip before its request went out.
            self.template_measured = True
            return overheads
        logger.info("vLLM /tokenize refused chat messages; using an estimated template overhead")
        self.reason = "the server's /tokenize does not render chat messages; template overhead estimated"
        return dict.fromkeys(("system", "user", "assistant"), MESSAGE_OVERHEAD)

    @property
    def root_url(self) -> str:
        """The server's root (without ``/v1``), where vLLM serves ``/tokenize``, ``/health`` and ``/version``."""
        return self._root

    async def server_version(self) -> str | None:
        """vLLM's version (its ``/version``: ``{"version": "0.6.3"}``); ``None`` from a server without one, or whose
        ``/version`` answers something else (another server's route of that name)."""
        try:
            response = await self._http.get(f"{self._root}/version")
            payload = response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None
        version = payload.get("version") if isinstance(payload, dict) else None
        return version if isinstance(version, str) else None

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
            # Short limit: a hung tokenizer must not hold up a turn (the estimate stands in).
            response = await self._http.post(url, json=body, timeout=_TOKENIZE_TIMEOUT_S)
        except httpx.HTTPError as exc:
            logger.debug("tokenize at %s failed: %s", url, hide_secret(str(exc), self._secret))
            self._unreachable = True
            return None
        if response.status_code >= 500 or response.status_code == 429:
            # A proxy's 502/503 while the server restarts, a rate limit: no answer about tokenizers yet.
            logger.debug("tokenize at %s answered %d", hide_secret(url, self._secret), response.status_code)
            self._unreachable = True
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

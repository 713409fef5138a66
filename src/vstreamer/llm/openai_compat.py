"""Any OpenAI-compatible server (vLLM in production; llama.cpp server, Ollama, OpenAI) via the ``openai`` SDK."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import httpx
import openai
from openai.types.chat import ChatCompletionChunk

try:  # the openai SDK 3.x runs on httpx2; its transport errors can surface while iterating a stream
    import httpx2

    _TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (httpx.TransportError, httpx2.TransportError)
    _TIMEOUT_ERRORS: tuple[type[BaseException], ...] = (httpx.TimeoutException, httpx2.TimeoutException)
except ImportError:  # pragma: no cover - older SDKs use httpx itself
    _TRANSPORT_ERRORS = (httpx.TransportError,)
    _TIMEOUT_ERRORS = (httpx.TimeoutException,)

from vstreamer.errors import BackendError, BackendResponseError, BackendTimeout, BackendUnavailable
from vstreamer.llm.base import (
    BackendHealth,
    ChatMessage,
    Completion,
    Delta,
    SamplingParams,
    StreamEnd,
    TextDelta,
    Usage,
    collect,
)
from vstreamer.llm.tokenize import RemoteTokenizer

logger = logging.getLogger(__name__)

_RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}


class OpenAICompatBackend:
    """Talks to ``{base_url}/chat/completions``.

    Timeouts: ``connect_timeout`` to reach the server, ``first_token_timeout`` until the first text arrives,
    ``stall_timeout`` between two streamed chunks. Retries (bounded, with backoff) happen only before the
    first token, so a reply is never duplicated.
    """

    name = "openai"

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str = "EMPTY",
        connect_timeout: float = 5.0,
        first_token_timeout: float = 60.0,
        stall_timeout: float = 30.0,
        max_retries: int = 2,
        retry_backoff: float = 0.25,
    ) -> None:
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.first_token_timeout = first_token_timeout
        self.stall_timeout = stall_timeout
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        # The transport's read limit must allow the first token; the first-token and stall limits themselves
        # are enforced per chunk in _read_stream.
        read_limit = max(first_token_timeout, stall_timeout) + 1
        timeout = openai.Timeout(
            connect=connect_timeout, read=read_limit, write=stall_timeout, pool=connect_timeout
        )
        self._client = openai.AsyncOpenAI(
            base_url=self.base_url, api_key=api_key, timeout=timeout, max_retries=0
        )
        headers = {"Authorization": f"Bearer {api_key}"}
        self._http = httpx.AsyncClient(
            headers=headers, timeout=httpx.Timeout(stall_timeout, connect=connect_timeout)
        )
        self.tokenizer = RemoteTokenizer(self._http, self.base_url, model)

    # --- generation -------------------------------------------------------------------------------------

    async def stream(
        self, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> AsyncGenerator[Delta, None]:
        request = self._request_body(messages, params)
        if params.response_format is not None:
            request["response_format"] = await self._response_format(params.response_format)
        attempt = 0
        while True:
            # One retry budget for the whole request: opening it and reading up to the first token.
            upstream: openai.AsyncStream[Any] | None = None
            produced_text = False
            try:
                upstream = await self._open_stream(request)
                async for delta in self._read_stream(upstream, messages):
                    produced_text = produced_text or isinstance(delta, TextDelta)
                    yield delta
                return
            except BackendError as exc:
                if produced_text or attempt >= self.max_retries or not _is_retryable(exc):
                    raise
                attempt += 1
                logger.warning(
                    "upstream failed before the first token (%s); retry %d/%d", exc, attempt, self.max_retries
                )
                await asyncio.sleep(self.retry_backoff * 2 ** (attempt - 1))
            finally:
                if upstream is not None:
                    # Closing the HTTP response makes vLLM abort the request (it watches for disconnects).
                    await upstream.close()

    async def _open_stream(self, request: dict[str, Any]) -> openai.AsyncStream[Any]:
        try:
            async with asyncio.timeout(self.first_token_timeout):
                # The SDK's low-level call: the same transport, errors and SSE decoding, without the
                # per-call typed transform of `messages` (tens of ms for a long history; measured).
                return await self._client.post(
                    "/chat/completions",
                    body=request,
                    cast_to=ChatCompletionChunk,
                    stream=True,
                    stream_cls=openai.AsyncStream[ChatCompletionChunk],
                )
        except (openai.OpenAIError, TimeoutError) as exc:
            raise _map_error(exc, self.first_token_timeout) from exc

    async def _read_stream(
        self, upstream: openai.AsyncStream[Any], messages: Sequence[ChatMessage]
    ) -> AsyncGenerator[Delta, None]:
        iterator = upstream.__aiter__()
        finish_reason: str | None = None
        usage: Usage | None = None
        parts: list[str] = []
        first = True
        while True:
            limit = self.first_token_timeout if first else self.stall_timeout
            try:
                async with asyncio.timeout(limit):
                    chunk = await iterator.__anext__()
            except StopAsyncIteration:
                break
            except Exception as exc:
                raise _map_error(exc, limit, mid_stream=not first) from exc
            if chunk.usage is not None:
                usage = Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
            for choice in chunk.choices:
                text = choice.delta.content if choice.delta else None
                if text:
                    first = False
                    parts.append(text)
                    yield TextDelta(text)
                if choice.finish_reason:
                    finish_reason = choice.finish_reason
        if usage is None:
            usage = await self._count_usage(messages, "".join(parts))
        yield StreamEnd(finish_reason, usage)

    async def _count_usage(self, messages: Sequence[ChatMessage], text: str) -> Usage | None:
        """Usage for servers that stream none (llama.cpp ignores ``stream_options``), counted with their tokenizer."""
        if await self.tokenizer.detect() == "estimate":
            return None
        try:
            prompt = await self.tokenizer.count(messages)
            completion = await self.tokenizer.count_text(text) if text else 0
        except httpx.HTTPError:
            return None
        return Usage(prompt, completion, estimated=True)

    async def _response_format(self, requested: dict[str, Any]) -> dict[str, Any]:
        """vLLM takes the OpenAI form; llama.cpp's server only knows its own ``json_object`` + ``schema`` dialect."""
        if requested.get("type") == "json_schema" and await self.tokenizer.detect() == "llama_cpp":
            return {"type": "json_object", "schema": requested.get("json_schema", {}).get("schema", {})}
        return requested

    async def complete(self, messages: Sequence[ChatMessage], params: SamplingParams) -> Completion:
        return await collect(self.stream(messages, params))

    def _request_body(self, messages: Sequence[ChatMessage], params: SamplingParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [m.as_dict() for m in messages],
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        extra = {
            key: value
            for key, value in (
                ("top_k", params.top_k),
                ("repetition_penalty", params.repetition_penalty),
                ("min_tokens", params.min_tokens),
            )
            if value is not None
        }
        # vLLM reads these from the body; servers that do not know them ignore them.
        body.update(extra)
        if params.response_format is not None:
            body["response_format"] = params.response_format
        return body

    # --- introspection ----------------------------------------------------------------------------------

    async def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return await self.tokenizer.count(messages)

    async def count_message_tokens(self, message: ChatMessage) -> int:
        return await self.tokenizer.count_message(message)

    async def health(self) -> BackendHealth:
        try:
            response = await self._http.get(f"{self.base_url}/models")
            response.raise_for_status()
            served = [m.get("id", "") for m in response.json().get("data", [])]
        except (httpx.HTTPError, ValueError) as exc:
            return BackendHealth(
                ok=False, backend=self.name, model=self.model, detail=f"{type(exc).__name__}: {exc}"
            )
        version = await self.tokenizer.server_version()
        extras = {"engine": "vllm"} if version is not None else {}
        if served and self.model not in served:
            detail = f"model {self.model!r} not served; the server offers {served}"
            return BackendHealth(
                ok=False, backend=self.name, model=self.model, detail=detail, version=version, extras=extras
            )
        if version is not None and not await self._engine_healthy():
            detail = "vLLM's /health reports the engine unhealthy"
            return BackendHealth(
                ok=False, backend=self.name, model=self.model, detail=detail, version=version, extras=extras
            )
        return BackendHealth(ok=True, backend=self.name, model=self.model, version=version, extras=extras)

    async def _engine_healthy(self) -> bool:
        """vLLM's ``/health`` answers 200 only while its engine loop is alive (``/v1/models`` can outlive it)."""
        try:
            response = await self._http.get(f"{self.tokenizer.root_url}/health")
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def aclose(self) -> None:
        await self._client.close()
        await self._http.aclose()


def _is_retryable(error: BackendError) -> bool:
    if isinstance(error, BackendResponseError):
        return error.status_code in _RETRYABLE_STATUS
    return isinstance(error, BackendUnavailable | BackendTimeout)


def _map_error(exc: BaseException, limit: float, *, mid_stream: bool = False) -> BackendError:
    where = "mid-stream" if mid_stream else "before the first token"
    if isinstance(exc, (TimeoutError, openai.APITimeoutError, *_TIMEOUT_ERRORS)):
        return BackendTimeout(f"LLM server did not answer within {limit:g}s ({where})")
    if isinstance(exc, openai.APIStatusError):
        message = _status_message(exc)
        return BackendResponseError(f"LLM server returned HTTP {exc.status_code}: {message}", exc.status_code)
    if isinstance(exc, (openai.APIConnectionError, *_TRANSPORT_ERRORS)):
        return BackendUnavailable(f"cannot reach the LLM server ({where}): {type(exc).__name__}")
    return BackendResponseError(
        f"LLM server sent a malformed response ({where}): {type(exc).__name__}: {exc}"
    )


def _status_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:500]
        if body.get("message"):
            return str(body["message"])[:500]
    return str(exc.message)[:500]

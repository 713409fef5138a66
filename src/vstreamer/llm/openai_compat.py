"""Any OpenAI-compatible server (vLLM in production; llama.cpp server, Ollama, OpenAI), streamed over HTTP/1.1.

The chat path is hand-rolled for speed (it runs once per request and once per network read): a keep-alive pool of
the small client in :mod:`vstreamer.llm.http1`, ``orjson`` bodies and a small SSE parser; the text of the events
that arrive in one network read becomes one delta. Token counting and health checks are rare and go through httpx.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from vstreamer.errors import (
    BackendError,
    BackendResponseError,
    BackendTimeout,
    BackendUnavailable,
    ConfigError,
)
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
from vstreamer.llm.http1 import (
    ConnectError,
    ConnectionClosed,
    ConnectTimeout,
    HTTPClientError,
    Pool,
    Response,
)
from vstreamer.llm.roles import PromptRoles, is_role_refusal, strict_roles
from vstreamer.llm.sse import SSEDecoder
from vstreamer.llm.tokenize import RemoteTokenizer, hide_secret
from vstreamer.url_auth import header_key, url_auth

logger = logging.getLogger(__name__)

_RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}
_BEFORE_FIRST_TOKEN = "before the first token"
_MID_STREAM = "mid-stream"
#: How much of an HTTP error body is read for its message...
_ERROR_BODY_LIMIT = 64 * 1024
#: ...and for how long: a body that stalls does not hold the error back (the status alone says enough).
_ERROR_BODY_TIMEOUT_S = 1.0
#: Statuses whose ``Retry-After`` (in seconds) sets the wait before the next try.
_RETRY_AFTER_STATUS = {429, 503}
#: How long a finished stream may take to send its end of body, so that its connection can be reused.
_DRAIN_TIMEOUT_S = 1.0
#: A reply's first text is taken from the start of a network read that brings more (a burst) once it is this long...
FIRST_TEXT_CHARS = 24
#: ...while no more than this many requests are in flight to the server. A busy gateway takes each read whole:
#: splitting costs every reply one more delta and write (10-15% of its streamed requests/s at 50 streams), and there
#: a first text waits for the other streams' work more than for the rest of its own burst.
FIRST_TEXT_MAX_BUSY = 4
#: Of such a burst, the events in about this many bytes are decoded for the first text (a few chunks: vLLM's are
#: ~200 bytes each), the rest after it goes out.
FIRST_TEXT_BYTES = 512
#: Errors of the HTTP exchange itself; anything else raised while reading means a malformed body.
_DECODE_ERRORS = (ValueError, TypeError, AttributeError, KeyError)
#: Statuses a chat template's refusal of the prompt's roles comes with: vLLM's and llama.cpp's 400, llama-cpp-python's
#: server's 500 (it answers any exception of a request so).
_ROLE_REFUSAL_STATUS = {400, 422, 500}


@dataclass(slots=True)
class _StreamState:
    """What one upstream response has told so far."""

    decoder: SSEDecoder = field(default_factory=SSEDecoder)
    parts: list[str] = field(default_factory=list)
    """The text deltas yielded so far."""
    finish_reason: str | None = None
    usage: Usage | None = None
    done: bool = False
    """``[DONE]`` or the end of the body was seen, and every event before it taken."""
    pending: list[tuple[bytes, bytes]] = field(default_factory=list)
    """Events decoded but not taken yet (the rest of a burst whose first text went out first)..."""
    unread: bytes = b""
    """...and the bytes of the burst not decoded yet."""
    eof: bool = False
    """The body has ended (``done`` once ``pending`` and ``unread`` are taken too)."""
    seen: bool = False
    """An event arrived: the body is an event stream (set until the first text, which implies it)."""
    deadline: float = 0.0
    """When the next read times out (loop time): the first-token deadline until the first text, then the stall
    timeout after the last progress (an event, not a read: comments and bytes trickling in do not count)."""
    retry_after: float = 0.0
    """How long the server asked to wait before the next try (``Retry-After`` of a 429 or 503), if it did."""
    last_text: float = 0.0
    """When the last text was taken (loop time)."""

    @property
    def where(self) -> str:
        return _MID_STREAM if self.parts else _BEFORE_FIRST_TOKEN

    def take(self, events: list[tuple[bytes, bytes]], limit: int = 0) -> str:
        """Apply the events of one network read; returns their text, concatenated. With a ``limit``, the events
        after the one whose text reaches that many characters are kept in ``pending`` for the next call."""
        texts: list[str] = []
        size = 0
        for i, (event, data) in enumerate(events):
            if limit and size >= limit:
                self.pending = events[i:]
                break
            if event and event != b"message":
                if event == b"error":
                    raise _reported_error(_loads_or_text(data), self.where)
                continue  # named events are not part of the chat-completions protocol
            if data == b"[DONE]":
                self.done = True
                break
            chunk = orjson.loads(data)  # not a JSON object: AttributeError below, a malformed response
            choices = chunk.get("choices")
            if choices:
                for choice in choices:
                    delta = choice.get("delta")
                    text = delta.get("content") if delta else None
                    if text:
                        texts.append(text)
                        size += len(text)
                    if choice.get("finish_reason"):
                        self.finish_reason = choice["finish_reason"]
            elif chunk.get("error") or chunk.get("object") == "error":
                raise _reported_error(chunk, self.where)
            usage = chunk.get("usage")
            if usage:
                self.usage = Usage(usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0)
        return "".join(texts)


class OpenAICompatBackend:
    """Talks to ``{base_url}/chat/completions``.

    Timeouts: ``connect_timeout`` to reach the server, ``first_token_timeout`` from sending a request until its
    first text, ``stall_timeout`` without an event after that (bytes that complete none do not count). Retries
    (bounded, with backoff, or after a 429's or 503's ``Retry-After`` when it fits the first-token deadline)
    happen only before the first token, so a reply is never duplicated. ``max_connections`` bounds the
    keep-alive pool (0: no bound); idle connections are dropped after ``keepalive_timeout``, which should be
    shorter than the server's own (5 s for vLLM's uvicorn and llama.cpp's server) so that a request never picks
    a connection the server is closing.

    Under load (more than ``batch_after`` requests in flight), a reply's text after its first is read no more often
    than every ``batch_interval`` seconds: each read costs its parse and everything downstream (moderation, the
    persona watch, a write to the client) whatever it carries, and a GPU server sends each stream a token every
    10-20 ms. The first text is never held.

    ``prompt_roles`` (see :mod:`vstreamer.llm.roles`): ``strict`` arranges every prompt for a strict chat template,
    ``system`` sends prompts as built, and ``auto`` too until the server refuses one for its roles: that request is
    sent again at once, arranged (nothing was generated yet), and once an arranged one is answered, every prompt is.
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
        max_connections: int = 1024,
        keepalive_timeout: float = 4.0,
        prompt_roles: PromptRoles = "auto",
        batch_interval: float = 0.0,
        batch_after: int = 16,
    ) -> None:
        self.model = model
        self.batch_interval = batch_interval
        self.batch_after = batch_after
        self.prompt_roles = prompt_roles
        self.base_url = base_url.rstrip("/")
        self.connect_timeout = connect_timeout
        self.first_token_timeout = first_token_timeout
        self.stall_timeout = stall_timeout
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.max_connections = max_connections
        self.keepalive_timeout = keepalive_timeout
        key = header_key(api_key)
        if key is None:
            raise ConfigError(
                "the LLM server's API key has characters other than visible ASCII (e.g. a line break)"
            )
        self._api_key = api_key = key
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        if (auth := url_auth(self.base_url)) is not None:
            # A server behind a proxy's basic auth: the credentials go in a header, never in the URL that errors and
            # logs quote.
            if api_key and api_key != "EMPTY":
                raise ConfigError(
                    "the LLM server's URL has credentials and an API key is set too: give either, not both"
                )
            headers = {"Authorization": auth.header}
            self._api_key, self.base_url = auth.password, auth.url
        # Compressed streams are not decoded here (no request says it takes them; a server may assume so).
        self._chat_headers = {**headers, "Accept-Encoding": "identity"}
        # Connections belong to an event loop; the pool is made by the first request (see _pool).
        self._chat: Pool | None = None
        self._chat_loop: asyncio.AbstractEventLoop | None = None
        self._http = httpx.AsyncClient(
            headers=headers, timeout=httpx.Timeout(stall_timeout, connect=connect_timeout)
        )
        self.tokenizer = RemoteTokenizer(self._http, self.base_url, model, secret=self._api_key)
        self.strict_roles = False
        """Prompts are arranged for a strict chat template (``strict``, or ``auto`` once the server needed it)."""
        if prompt_roles == "strict":
            self._use_strict_roles()

    # --- generation -------------------------------------------------------------------------------------

    async def stream(
        self, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> AsyncGenerator[Delta, None]:
        arranged = self.strict_roles
        sent = strict_roles(messages) if arranged else messages
        request = self._request_body(sent, params)
        if params.response_format is not None:
            request["response_format"] = await self._response_format(params.response_format)
        body = orjson.dumps(request)
        # The server's refusal of the prompt as built, while the prompt goes again arranged (prompt_roles=auto).
        refusal: BackendError | None = None
        # For which form of the prompt (arranged or not) an empty stream's reason was asked.
        probed: bool | None = None
        loop = asyncio.get_running_loop()
        attempt = 0
        # One retry budget and one first-token deadline for the whole request, however many tries it takes: a server
        # that never answers fails the request once the limit is up, not once each try has waited for it.
        first_token_deadline = loop.time() + self.first_token_timeout
        while True:
            response: Response | None = None
            state = _StreamState(deadline=first_token_deadline)
            try:
                response = await self._open_stream(body, state)
                while (text := await self._next_text(response, state)) is not None:
                    if refusal is not None:
                        refusal = None
                        self._arranged_prompt_answered()
                    yield TextDelta(text)
                await self._release(response)
                if refusal is not None:  # a whole reply without text is an answer all the same
                    self._arranged_prompt_answered()
                usage = state.usage or await self._count_usage(sent, "".join(state.parts))
                yield StreamEnd(state.finish_reason, usage)
                return
            except BackendError as failure:
                if state.parts:
                    raise
                exc = failure
                if (
                    isinstance(exc, _NoEvents) and probed is not arranged
                ):  # once per form (see _why_no_events)
                    probed = arranged
                    reason = await self._why_no_events(request, exc, first_token_deadline)
                    # The reason words the error; it decides nothing else but a role refusal: an empty stream was
                    # never retried, and a probe's 5xx must not make it so (each try a prefill, and a probe more).
                    if reason is not exc and not _refuses_roles(reason):
                        reason = BackendResponseError(str(reason), exc.status_code)
                    exc = reason
                if (
                    not arranged
                    and self.prompt_roles == "auto"
                    and _refuses_roles(exc)
                    and not any(is_role_refusal(m.content) for m in messages)  # a server quoting a viewer
                ):
                    arranged, sent = True, strict_roles(messages)
                    if sent is not messages:  # sent again at once: none of the retry budget, no wait
                        refusal = exc
                        request["messages"] = [m.json or m.as_json() for m in sent]
                        body = orjson.dumps(request)
                        continue
                if refusal is not None and _refuses_roles(exc):
                    raise refusal from None  # arranged or not, refused: the refusal of the prompt as it was built
                if attempt >= self.max_retries or not _is_retryable(exc):
                    if exc is failure:
                        raise
                    raise exc from failure
                if response is not None:  # given up: the server stops generating for it during the wait
                    response.close()
                    response = None
                delay = max(self.retry_backoff * 2**attempt, state.retry_after)
                if loop.time() + delay >= first_token_deadline:
                    raise  # no room for another try (or for the wait the server asks for) before the deadline
                attempt += 1
                logger.warning(
                    "upstream failed before the first token (%s); retry %d/%d in %.2gs",
                    exc, attempt, self.max_retries, delay,
                )  # fmt: skip
                await asyncio.sleep(delay)
            finally:
                if response is not None:
                    # Closing (not releasing) a half-read response drops its connection: vLLM and llama.cpp watch
                    # for disconnects and abort the generation. After _release this does nothing.
                    response.close()

    def _arranged_prompt_answered(self) -> None:
        """The server answered a prompt arranged after it refused the same prompt as built: arrange them all."""
        if not self.strict_roles:
            logger.info(
                "%s refused a prompt's roles (its chat template takes only user and assistant turns, alternating) "
                "and took it arranged: prompts to it are arranged from now on (prompt_roles=auto)",
                self.model,
            )
            self._use_strict_roles()

    def _use_strict_roles(self) -> None:
        self.strict_roles = True
        self.tokenizer.use_strict_roles()

    async def _open_stream(self, body: bytes, state: _StreamState) -> Response:
        try:
            async with asyncio.timeout_at(state.deadline):
                response = await self._pool().post("/chat/completions", body)
        except (HTTPClientError, TimeoutError) as exc:
            raise self._map_error(exc, _BEFORE_FIRST_TOKEN) from exc
        if 200 <= response.status < 300:
            error = _not_a_stream(response)
            if error is None:
                return response
            response.close()
            raise error
        try:
            raise await self._status_error(response, state)
        finally:
            if response.is_eof():  # the error body was read to its end: keep the connection
                response.release()
            else:
                response.close()

    async def _next_text(self, response: Response, state: _StreamState) -> str | None:
        """The text of the next network read that carries some; ``None`` once the stream is over. Under load (more
        than ``batch_after`` requests in flight), after the first text, no sooner than ``batch_interval`` after the
        last: what arrived meanwhile is one piece, checked and sent once."""
        if state.parts:  # the last text was the last progress; the time the caller kept it does not count
            loop = asyncio.get_running_loop()
            if (
                self.batch_interval
                and self._pool().busy > self.batch_after
                and not (state.pending or state.unread)
            ):
                wait = state.last_text + self.batch_interval - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
            state.deadline = loop.time() + self.stall_timeout
        while not state.done:
            # The reply's first text goes out once its first words are taken: the rest of a burst waits for the
            # next call, so that text is not held back by decoding and moderating all of it.
            split = not state.parts and self._pool().busy <= FIRST_TEXT_MAX_BUSY
            events, state.pending = state.pending, []
            # The rest of a burst is taken in one piece, with the events left of it.
            if state.unread or not events:
                if state.unread:
                    chunk, state.unread = state.unread, b""
                else:
                    chunk = await self._read(response, state)
                    state.eof = not chunk
                if split and (cut := chunk.find(b"\n\n", FIRST_TEXT_BYTES)) != -1:
                    chunk, state.unread = chunk[: cut + 2], chunk[cut + 2 :]
                try:
                    events += state.decoder.feed(chunk) if chunk else state.decoder.flush()
                except ValueError as exc:  # a line longer than the decoder holds
                    raise _malformed(exc, state.where) from exc
                if events:
                    if state.parts:  # progress: the stall clock starts again
                        state.deadline = asyncio.get_running_loop().time() + self.stall_timeout
                    else:
                        state.seen = True
            try:
                text = state.take(events, FIRST_TEXT_CHARS if split else 0)
            except _DECODE_ERRORS as exc:
                raise _malformed(exc, state.where) from exc
            except BackendResponseError as exc:  # an error event, which may quote the request's key
                raise BackendResponseError(self._hide(str(exc)), exc.status_code) from None
            if state.eof and not state.done and not state.pending and not state.unread:
                if not state.seen:
                    raise _NoEvents(
                        f"LLM server sent a response that is not an event stream ({state.where}): "
                        "its body ended without a single event"
                    )
                state.done = True
            if text:
                state.parts.append(text)
                state.last_text = asyncio.get_running_loop().time()
                return text
        return None

    async def _read(self, response: Response, state: _StreamState) -> bytes:
        """The next bytes of the body (``b""`` at its end)."""
        try:
            chunk = response.read_nowait()  # what arrived meanwhile, without a timer (busy servers)
            if not chunk and not response.is_eof():
                async with asyncio.timeout_at(state.deadline):
                    chunk = await response.read()
        except (HTTPClientError, TimeoutError) as exc:
            raise self._map_error(exc, state.where) from exc
        return chunk

    async def _release(self, response: Response) -> None:
        """Return a finished response's connection to the pool once its body is read to the end."""
        if not response.is_eof():
            try:  # [DONE] came; the end of the body (a chunked encoding's last chunk) follows at once
                async with asyncio.timeout(min(self.stall_timeout, _DRAIN_TIMEOUT_S)):
                    while await response.read():
                        pass
            except (HTTPClientError, TimeoutError):
                response.close()
                return
        response.release()

    async def _why_no_events(
        self, request: dict[str, Any], error: BackendResponseError, deadline: float
    ) -> BackendResponseError:
        """The reason of an event stream that ended before its first event, asked with the same request unstreamed.

        llama-cpp-python's server starts every stream with a 200 and prepares the reply after it: when that fails (its
        chat template refuses the prompt, the prompt is over its context), the stream just ends. The same request
        unstreamed, for one token, fails before its answer, with the reason; should it pass, ``error`` stands.
        """
        # One token, and nothing that asks for more (min_tokens over it would be the refusal reported instead).
        ask = {key: value for key, value in request.items() if key not in ("stream_options", "min_tokens")}
        ask.update(stream=False, max_tokens=1)
        timeout = max(deadline - asyncio.get_running_loop().time(), 0.1)
        try:
            response = await self._http.post(
                f"{self.base_url}/chat/completions",
                content=orjson.dumps(ask),
                headers={"Content-Type": "application/json"},
                timeout=timeout,
            )
            body = response.content[:_ERROR_BODY_LIMIT]
        except httpx.HTTPError:
            return error
        if response.status_code < 400:
            return error
        message = _error_message(_loads_or_text(body)) or response.reason_phrase
        return self._response_error(
            response.status_code, f"{message} (its stream had ended without an event: asked again unstreamed)"
        )

    async def _status_error(self, response: Response, state: _StreamState) -> BackendResponseError:
        status = response.status
        if status in _RETRY_AFTER_STATUS:
            state.retry_after = _retry_after(response.headers.get("retry-after", ""))
        body = b""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(min(state.deadline, loop.time() + _ERROR_BODY_TIMEOUT_S)):
                while len(body) < _ERROR_BODY_LIMIT and (chunk := await response.read()):
                    body += chunk
        except (HTTPClientError, TimeoutError):
            pass  # the status alone says enough
        if 300 <= status < 400:
            location = response.headers.get("location", "")[:500]
            message = f"redirected to {location!r}; set base_url to the address it names"
        else:
            message = _error_message(_loads_or_text(body)) or response.reason or ""
        return self._response_error(status, message)

    def _response_error(self, status: int, message: str) -> BackendResponseError:
        message = f"LLM server returned HTTP {status}: {self._hide(message)}"
        if status in _ROLE_REFUSAL_STATUS and is_role_refusal(message):
            # The chat template refused the prompt (llama-cpp-python's server says so with a 500): a request to change,
            # not one to retry, nor a sign that the server is down (see resilience).
            return BackendResponseError(message, 400)
        return BackendResponseError(message, status)

    def _pool(self) -> Pool:
        loop = asyncio.get_running_loop()
        if self._chat is None or self._chat_loop is not loop:
            # A pool made on another (finished) loop cannot be used or closed here; it is dropped.
            self._chat = Pool(
                self.base_url, headers=self._chat_headers, limit=self.max_connections,
                connect_timeout=self.connect_timeout, keepalive_timeout=self.keepalive_timeout,
            )  # fmt: skip
            self._chat_loop = loop
        return self._chat

    def _hide(self, text: str) -> str:
        """``text`` without the API key (a server or proxy may echo the request's headers)."""
        return hide_secret(text, self._api_key)

    def _map_error(self, exc: BaseException, where: str) -> BackendError:
        if isinstance(exc, ConnectTimeout):
            return BackendTimeout(f"LLM server did not accept a connection within {self.connect_timeout:g}s")
        if isinstance(exc, TimeoutError):
            limit = self.stall_timeout if where == _MID_STREAM else self.first_token_timeout
            return BackendTimeout(f"LLM server did not answer within {limit:g}s ({where})")
        if isinstance(exc, ConnectError | ConnectionClosed):
            return BackendUnavailable(f"cannot reach the LLM server ({where}): {exc}")
        return _malformed(exc, where)

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
            # Each message's JSON is made once (orjson writes slotted dataclasses ~10x slower than dicts, and dicts
            # ~5x slower than it copies fragments): a long conversation repeats its turns in every prompt.
            "messages": [m.json or m.as_json() for m in messages],
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
                ("presence_penalty", params.presence_penalty),
                ("frequency_penalty", params.frequency_penalty),
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

    @property
    def counts_add_up(self) -> bool:
        """Whether a prompt's count is just the sum of its messages' shares, so callers holding the shares can skip
        the whole-prompt count (a ``/tokenize`` request per turn on vLLM). llama.cpp and estimates: by construction.
        vLLM: once the shares' template overheads were measured with its chat template (the special tokens around
        each message keep the messages' tokens apart; ``tests/vllm`` checks the sums against ``/tokenize``)."""
        tokenizer = self.tokenizer
        return tokenizer.kind in ("llama_cpp", "estimate") or (
            tokenizer.kind == "vllm" and tokenizer.template_measured
        )

    @property
    def counts_remotely(self) -> bool:
        """Whether counting a message is a request to the server (vLLM's and llama.cpp's tokenizers)."""
        return self.tokenizer.kind in ("vllm", "llama_cpp")

    async def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return await self.tokenizer.count(messages)

    async def count_message_tokens(self, message: ChatMessage) -> int:
        return await self.tokenizer.count_message(message)

    async def health(self) -> BackendHealth:
        try:
            response = await self._http.get(f"{self.base_url}/models")
            response.raise_for_status()
            served = _served_models(response.json())
        except (httpx.HTTPError, ValueError) as exc:
            status = exc.response.status_code if isinstance(exc, httpx.HTTPStatusError) else None
            if status in (401, 403):  # httpx's text said "Client error" and linked to MDN, not what to change
                detail = f"the server refused the API key (HTTP {status}): check api_key (VSTREAMER_API_KEY)"
            else:
                detail = self._hide(f"{type(exc).__name__}: {exc}")  # /readyz shows it
            return BackendHealth(ok=False, backend=self.name, model=self.model, detail=detail)
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
        chat, self._chat = self._chat, None
        if chat is not None and self._chat_loop is asyncio.get_running_loop():
            await chat.aclose()
        await self._http.aclose()


def served_models(body: object) -> list[str] | None:
    """The model ids in a ``/models`` answer (``{"data": [{"id": ...}, ...]}``), or None when the body is not one:
    some other service on the port, or a server still starting, is not ready rather than a crash of the wait."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list) or not all(
        isinstance(m, dict) and isinstance(m.get("id"), str) for m in data
    ):
        return None
    return [m["id"] for m in data]


def _served_models(payload: object) -> list[str]:
    """:func:`served_models` for the health check, where an object without ``data`` serves nothing, and another shape
    is a ``ValueError``: a proxy's or another API's JSON is a server that is not ready, not a crash of ``/readyz``."""
    if isinstance(payload, dict) and "data" not in payload:
        return []
    models = served_models(payload)
    if models is None:
        raise ValueError(f"/models answered JSON of an unexpected shape: {str(payload)[:100]}")
    return models


class _NoEvents(BackendResponseError):
    """A successful response whose body ended before its first event (see :meth:`OpenAICompatBackend._why_no_events`)."""


def _refuses_roles(error: BackendError) -> bool:
    """Whether ``error`` is the server's chat template refusing the prompt's roles (see :meth:`_status_error`)."""
    return (
        isinstance(error, BackendResponseError) and error.status_code == 400 and is_role_refusal(str(error))
    )


def _is_retryable(error: BackendError) -> bool:
    if isinstance(error, BackendResponseError):
        return error.status_code in _RETRYABLE_STATUS
    return isinstance(error, BackendUnavailable | BackendTimeout)


def _malformed(exc: BaseException, where: str) -> BackendResponseError:
    return BackendResponseError(
        f"LLM server sent a malformed response ({where}): {type(exc).__name__}: {exc}"
    )


def _not_a_stream(response: Response) -> BackendResponseError | None:
    """Why a successful response cannot be read as an event stream, if it cannot (asked once per response)."""
    headers = response.headers
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        return BackendResponseError(
            f"LLM server sent a {encoding[:40]!r}-encoded stream, which is not decoded here"
        )
    content_type = headers.get("content-type")
    # Like a browser's EventSource, refuse a declared type other than SSE's (a whole JSON completion, a proxy's
    # HTML page); a body with no type is judged by its events.
    if content_type is not None and content_type.partition(";")[0].strip().lower() != "text/event-stream":
        return BackendResponseError(
            f"LLM server sent a response that is not an event stream (Content-Type: {content_type[:100]!r})"
        )
    return None


def _retry_after(value: str) -> float:
    """``Retry-After`` in seconds (its HTTP-date form is not read: 0)."""
    value = value.strip()
    return float(value) if value.isascii() and value.isdigit() else 0.0


def _loads_or_text(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace").strip()


def _error_message(body: Any) -> str:
    """The message of an OpenAI-style error body (``{"error": {"message": ...}}`` or ``{"message": ...}``)."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:500]
        if isinstance(inner, str) and inner:
            return inner[:500]
        if body.get("message"):
            return str(body["message"])[:500]
    return str(body)[:500] if body else ""


def _reported_error(body: Any, where: str) -> BackendResponseError:
    """An error that the server sent inside the event stream; its ``code`` is kept when it is an HTTP status."""
    inner = body.get("error", body) if isinstance(body, dict) else None
    code = inner.get("code") if isinstance(inner, dict) else None
    status = code if isinstance(code, int) and 400 <= code <= 599 else None
    message = _error_message(body) or "no details"
    return BackendResponseError(f"LLM server reported an error ({where}): {message}", status)

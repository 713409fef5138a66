"""The narrow interface every LLM backend implements, and the typed values that cross it."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import orjson

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of a prompt, as sent to a chat-completions API."""

    role: Role
    """Who speaks: the system (persona instructions), the user, or the assistant (the persona)."""
    content: str
    """The message text."""
    json: orjson.Fragment | None = field(default=None, init=False, repr=False, compare=False)
    """The message as serialised JSON once :meth:`as_json` has made it (read directly on the hot path)."""

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}

    def as_json(self) -> orjson.Fragment:
        """The message as serialised JSON for ``orjson.dumps`` (made once: every later prompt repeats a turn's
        message, and copying its bytes is ~20x cheaper than writing a dict of it again)."""
        made = self.json
        if made is None:
            made = orjson.Fragment(orjson.dumps({"role": self.role, "content": self.content}))
            object.__setattr__(self, "json", made)
        return made


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Generation parameters; extras that a backend cannot honour are dropped by that backend."""

    temperature: float = 0.7
    top_p: float = 0.9
    max_tokens: int = 384
    stop: tuple[str, ...] = ()
    seed: int | None = None
    top_k: int | None = None
    """vLLM / llama.cpp extension."""
    repetition_penalty: float | None = None
    """vLLM / llama.cpp extension."""
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    min_tokens: int | None = None
    """vLLM extension."""
    response_format: dict[str, Any] | None = None
    """Structured output, as in the OpenAI API: ``{"type": "json_object"}`` or a JSON schema (see
    :func:`json_schema_format`). vLLM enforces it while decoding; backends that cannot ignore it."""


def json_schema_format(name: str, schema: dict[str, Any], *, strict: bool = True) -> dict[str, Any]:
    """A ``response_format`` that makes the reply a JSON document valid against ``schema``."""
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": strict}}


@dataclass(frozen=True, slots=True)
class Usage:
    """Token accounting of one generation."""

    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False
    """True when the server reported no usage and the backend counted it itself (possibly approximately)."""

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of generated text, streamed as soon as the backend produced it."""

    text: str
    """The new text (never empty)."""
    kind: Literal["text"] = "text"


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The last item of every finished stream."""

    finish_reason: str | None
    """``stop``, ``length`` or a backend-specific reason."""
    usage: Usage | None = None
    """Token usage, when the backend reports or can compute it."""
    kind: Literal["end"] = "end"


Delta = TextDelta | StreamEnd


@dataclass(frozen=True, slots=True)
class Completion:
    """A whole, non-streamed generation."""

    text: str
    finish_reason: str | None
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class BackendHealth:
    """What a readiness check learnt about a backend."""

    ok: bool
    backend: str
    model: str
    detail: str = ""
    version: str | None = None
    extras: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class LLMBackend(Protocol):
    """What the dialogue engine needs from a language model.

    ``stream`` returns an async iterator of :data:`Delta`; closing it early (``aclose()``, cancellation,
    ``break``) must stop the generation upstream. Errors are raised as :class:`vstreamer.errors.BackendError`.
    """

    name: str
    model: str

    def stream(
        self, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> AsyncGenerator[Delta, None]: ...

    async def complete(self, messages: Sequence[ChatMessage], params: SamplingParams) -> Completion: ...

    async def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Tokens the rendered prompt of ``messages`` takes (chat template included, generation prompt excluded
        where the backend can tell)."""
        ...

    async def count_message_tokens(self, message: ChatMessage) -> int:
        """One message's share of a prompt (its text plus the chat template's per-message overhead)."""
        ...

    async def health(self) -> BackendHealth: ...

    async def aclose(self) -> None: ...


async def collect(stream: AsyncIterator[Delta]) -> Completion:
    """Drain a stream into a :class:`Completion` (used by ``complete`` implementations and tests)."""
    parts: list[str] = []
    end: StreamEnd | None = None
    async for delta in stream:
        if isinstance(delta, TextDelta):
            parts.append(delta.text)
        else:
            end = delta
    return Completion("".join(parts), end.finish_reason if end else None, end.usage if end else None)

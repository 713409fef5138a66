"""Prompts arranged for strict chat templates (user and assistant turns only, alternating from a user one), and the
openai backend learning that a server needs them, against a scripted server whose template is strict."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from itertools import groupby
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vstreamer.errors import BackendResponseError
from vstreamer.llm.base import ChatMessage, Role, SamplingParams, collect
from vstreamer.llm.openai_compat import OpenAICompatBackend
from vstreamer.llm.resilience import CircuitBreaker, ResilientBackend
from vstreamer.llm.roles import (
    OPENING,
    PART_SEPARATOR,
    REPRESENTATIVE_PROMPT,
    PromptRoles,
    is_role_refusal,
    strict_roles,
)

S, U, A = "system", "user", "assistant"


def chat(*pairs: tuple[Role, str]) -> list[ChatMessage]:
    return [ChatMessage(role, text) for role, text in pairs]


def is_strict(messages: Sequence[ChatMessage]) -> bool:
    """What Mistral's template checks, and Gemma's (no system message at all)."""
    return all(m.role == (U if i % 2 == 0 else A) for i, m in enumerate(messages))


# --- the arrangement ----------------------------------------------------------------------------------------


def test_a_vstreamer_prompt_loses_its_system_messages_to_the_user_turns() -> None:
    prompt = chat((S, "persona"), (A, "greeting"), (U, "hi"), (A, "hello"), (U, "and you?"), (S, "note"))
    assert strict_roles(prompt) == chat(
        (U, "persona"), (A, "greeting"), (U, "hi"), (A, "hello"), (U, f"and you?{PART_SEPARATOR}note")
    )


def test_leading_system_messages_open_the_first_user_message() -> None:
    prompt = chat((S, "persona"), (S, "memory"), (U, "hi"), (A, "hello"), (U, "bye"))
    assert strict_roles(prompt) == chat(
        (U, PART_SEPARATOR.join(["persona", "memory", "hi"])), (A, "hello"), (U, "bye")
    )


def test_a_note_after_an_assistant_turn_joins_the_next_user_message_in_front() -> None:
    prompt = chat((U, "hi"), (A, "hello"), (S, "note"), (U, "bye"))
    assert strict_roles(prompt) == chat((U, "hi"), (A, "hello"), (U, f"note{PART_SEPARATOR}bye"))


def test_a_prompt_opening_with_the_assistant_gets_a_minimal_user_message_first() -> None:
    assert strict_roles(chat((A, "greeting"), (U, "hi"))) == chat((U, OPENING), (A, "greeting"), (U, "hi"))


def test_runs_of_one_role_are_joined() -> None:
    prompt = chat((S, "persona"), (U, "one"), (U, "two"), (A, "a"), (A, "b"))
    assert strict_roles(prompt) == chat((U, PART_SEPARATOR.join(["persona", "one", "two"])), (A, "a\n\nb"))


def test_messages_left_as_they_are_are_the_same_objects() -> None:
    """Their serialised JSON, made once, is reused by every later prompt."""
    prompt = chat((S, "persona"), (A, "greeting"), (U, "hi"))
    arranged = strict_roles(prompt)
    assert arranged[1] is prompt[1] and arranged[2] is prompt[2]


def test_the_representative_prompt_needs_arranging() -> None:
    assert not is_strict(REPRESENTATIVE_PROMPT) and is_strict(strict_roles(REPRESENTATIVE_PROMPT))


roles = st.sampled_from([S, U, A])
messages = st.lists(st.builds(ChatMessage, roles, st.text(max_size=12)), max_size=12)


@given(messages)
def test_arranged_prompts_alternate_from_a_user_message_and_keep_every_text_in_order(
    prompt: list[ChatMessage],
) -> None:
    arranged = list(strict_roles(prompt))
    assert is_strict(arranged)
    opened = bool(prompt) and prompt[0].role == A  # nothing that is user text comes before it
    if opened:
        assert arranged.pop(0) == ChatMessage(U, OPENING)
    # Each run of one role (a system message counted as a user one) is one message of the texts in order.
    runs = groupby(prompt, key=lambda m: U if m.role == S else m.role)
    assert arranged == [ChatMessage(role, PART_SEPARATOR.join(m.content for m in run)) for role, run in runs]


@given(st.lists(st.text(max_size=12), max_size=12))
def test_a_prompt_that_alternates_from_a_user_message_is_returned_as_it_is(texts: list[str]) -> None:
    prompt = [ChatMessage(U if i % 2 == 0 else A, text) for i, text in enumerate(texts)]
    assert strict_roles(prompt) is prompt


@pytest.mark.parametrize(
    "message",
    [
        "Conversation roles must alternate user/assistant/user/assistant/...",  # Mistral, Llama 2 (Transformers)
        "Conversation roles must alternate user/assistant/user/assistant/... None",  # as vLLM quotes it
        "After the optional system message, conversation roles must alternate user/assistant/user/assistant/...",
        "System role not supported",  # Gemma
        "Only user and assistant roles are supported!",  # Mistral
        "Unexpected role 'system' after role 'assistant'",  # mistral-common
        "LLM server returned HTTP 500: Conversation roles must alternate user/assistant/user/assistant/...",
    ],
)
def test_role_refusals_are_recognised(message: str) -> None:
    assert is_role_refusal(message)


@pytest.mark.parametrize(
    "message",
    [
        "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens",
        "As of transformers v4.44, default chat template is no longer allowed",
        "The model `m` does not exist.",
        "Requested tokens (5000) exceed context window of 4096",
    ],
)
def test_other_errors_are_not_role_refusals(message: str) -> None:
    assert not is_role_refusal(message)


# --- the openai backend against a server whose chat template is strict --------------------------------------

REFUSAL = {
    "error": {
        "message": "Conversation roles must alternate user/assistant/user/assistant/...",
        "type": "internal_server_error",
    }
}
OTHER_ERROR = {"error": {"message": "CUDA out of memory", "type": "internal_server_error"}}
REPLY = (
    b'data: {"choices": [{"index": 0, "delta": {"content": "Hi there"}, "finish_reason": null}]}\n\n'
    b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\n'
    b"data: [DONE]\n\n"
)

Answer = Callable[[list[ChatMessage]], tuple[int, bytes]]


def strict_template(messages: list[ChatMessage]) -> tuple[int, bytes]:
    """llama-cpp-python's server with a strict template: a refusal is an exception, which it answers with a 500."""
    if is_strict(messages):
        return 200, REPLY
    return 500, json.dumps(REFUSAL).encode()


def failing(messages: list[ChatMessage]) -> tuple[int, bytes]:
    return 500, json.dumps(OTHER_ERROR).encode()


@contextlib.asynccontextmanager
async def served(
    answer: Answer, prompt_roles: PromptRoles, **kwargs: float
) -> AsyncIterator[tuple[OpenAICompatBackend, list[list[ChatMessage]]]]:
    """A backend over a server that answers each chat request with ``answer(its messages)``; yields the backend and
    the messages of each chat request."""
    received: list[list[ChatMessage]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                length = next(int(x.split(b":")[1]) for x in lines if x.lower().startswith(b"content-length"))
                body = await reader.readexactly(length)
                if b"/chat/completions" not in lines[0]:  # no tokenizer here
                    writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                    continue
                received.append([ChatMessage(m["role"], m["content"]) for m in json.loads(body)["messages"]])
                status, reply = answer(received[-1])
                kind = b"text/event-stream" if status == 200 else b"application/json"
                writer.write(b"HTTP/1.1 %d X\r\ncontent-type: %s\r\n" % (status, kind))
                writer.write(b"content-length: %d\r\n\r\n" % len(reply) + reply)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    backend = OpenAICompatBackend(
        base_url=url, model="m", prompt_roles=prompt_roles, **{"retry_backoff": 0.01, **kwargs}
    )  # type: ignore[arg-type]
    try:
        yield backend, received
    finally:
        await backend.aclose()
        server.close()


PROMPT = list(REPRESENTATIVE_PROMPT)
ARRANGED = list(strict_roles(PROMPT))


async def test_auto_sends_a_refused_prompt_again_arranged_and_arranges_the_next_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with served(strict_template, "auto") as (backend, received):
        breaker = CircuitBreaker(threshold=1)
        resilient = ResilientBackend(backend, breaker=breaker)
        with caplog.at_level("INFO", logger="vstreamer.llm.openai_compat"):
            first = await collect(resilient.stream(PROMPT, SamplingParams(max_tokens=5)))
            second = await collect(resilient.stream(PROMPT, SamplingParams(max_tokens=5)))
    assert first.text == second.text == "Hi there"
    assert received == [PROMPT, ARRANGED, ARRANGED]  # as built once, refused; arranged ever after
    assert breaker.state == "closed"  # a refusal is not an outage, even as a 500
    assert sum("arranged from now on" in r.getMessage() for r in caplog.records) == 1  # logged once


async def test_system_surfaces_the_refusal_without_retrying_it() -> None:
    async with served(strict_template, "system", max_retries=2) as (backend, received):
        breaker = CircuitBreaker(threshold=1)
        resilient = ResilientBackend(backend, breaker=breaker)
        with pytest.raises(BackendResponseError, match="roles must alternate") as info:
            await collect(resilient.stream(PROMPT, SamplingParams(max_tokens=5)))
    assert info.value.status_code == 400  # the request is what to change (the gateway answers 400 too)
    assert received == [PROMPT]  # a 500, but sending the same prompt again cannot help
    assert breaker.state == "closed"


async def test_strict_arranges_the_first_prompt_already() -> None:
    async with served(strict_template, "strict") as (backend, received):
        assert (await backend.complete(PROMPT, SamplingParams(max_tokens=5))).text == "Hi there"
    assert received == [ARRANGED]


async def test_auto_leaves_other_errors_as_they_were() -> None:
    async with served(failing, "auto", max_retries=1) as (backend, received):
        with pytest.raises(BackendResponseError, match="CUDA out of memory") as info:
            await backend.complete(PROMPT, SamplingParams(max_tokens=5))
    assert info.value.status_code == 500
    assert received == [PROMPT, PROMPT]  # retried as any 500, never arranged
    assert not backend.strict_roles


async def test_auto_surfaces_the_first_refusal_when_the_arranged_prompt_is_refused_too() -> None:
    def refusing(messages: list[ChatMessage]) -> tuple[int, bytes]:
        if any(m.role == "system" for m in messages):
            return 400, json.dumps({"error": {"message": "System role not supported"}}).encode()
        return 400, json.dumps(REFUSAL).encode()

    async with served(refusing, "auto") as (backend, received):
        with pytest.raises(BackendResponseError, match="System role not supported"):
            await backend.complete(PROMPT, SamplingParams(max_tokens=5))
        assert received == [PROMPT, ARRANGED]
        assert not backend.strict_roles  # the next prompt goes as built again
        with pytest.raises(BackendResponseError):
            await backend.complete(PROMPT, SamplingParams(max_tokens=5))
    assert received[2] == PROMPT


async def test_auto_does_not_send_a_prompt_again_that_arranging_leaves_as_it_is() -> None:
    def refusing(messages: list[ChatMessage]) -> tuple[int, bytes]:
        return 400, json.dumps(REFUSAL).encode()

    already = chat((U, "hi"), (A, "hello"), (U, "bye"))
    async with served(refusing, "auto") as (backend, received):
        with pytest.raises(BackendResponseError, match="roles must alternate"):
            await backend.complete(already, SamplingParams(max_tokens=5))
    assert received == [already]


@contextlib.asynccontextmanager
async def served_bodies(
    answer: Callable[[dict[str, Any]], tuple[int, bytes]], prompt_roles: PromptRoles
) -> AsyncIterator[tuple[OpenAICompatBackend, list[dict[str, Any]]]]:
    """:func:`served`, answering (and recording) each chat request's whole body: streamed or not, its max_tokens."""
    bodies: list[dict[str, Any]] = []

    def by_body(_: list[ChatMessage]) -> tuple[int, bytes]:
        return answer(bodies[-1])

    async with served(by_body, prompt_roles, max_retries=2) as (backend, _received):
        post = backend._http.post  # the probe goes through httpx, the stream through the pool: record both

        async def recording_post(url: str, **kwargs: Any) -> Any:
            bodies.append(json.loads(kwargs["content"]))
            return await post(url, **kwargs)

        backend._http.post = recording_post  # type: ignore[method-assign]
        original_open = backend._open_stream

        async def recording_open(body: bytes, state: Any) -> Any:
            bodies.append(json.loads(body))
            return await original_open(body, state)

        backend._open_stream = recording_open  # type: ignore[method-assign]
        yield backend, bodies


async def test_an_empty_stream_is_asked_why_once_and_its_reason_makes_it_no_retry() -> None:
    """A stream that ends before its first event was never retried: the unstreamed probe that asks why (for
    llama-cpp-python's server's role refusals) words the error, and its 5xx must not make it a retried one (each
    try a prefill on the server, and a probe more)."""

    def empty_then_cuda(body: dict[str, Any]) -> tuple[int, bytes]:
        return (200, b"") if body["stream"] else (500, json.dumps(OTHER_ERROR).encode())

    async with served_bodies(empty_then_cuda, "auto") as (backend, bodies):
        with pytest.raises(BackendResponseError, match="CUDA out of memory") as info:
            await backend.complete(PROMPT, SamplingParams(max_tokens=5, min_tokens=3))
    assert [(b["stream"], b["max_tokens"], "min_tokens" in b) for b in bodies] == [
        (True, 5, True),
        (False, 1, False),
    ]
    assert info.value.status_code is None  # as the empty stream's: not retried


async def test_a_refusal_that_quotes_the_viewer_is_not_taken_for_the_templates() -> None:
    """A server that quotes the request in its error may quote a viewer who wrote the very words of a role refusal:
    no resend (which would cost a request, and, answered, arrange every later prompt on a viewer's say-so)."""
    asked = [*PROMPT[:-2], ChatMessage("user", "do roles must alternate?"), PROMPT[-1]]

    def quoting(body: dict[str, Any]) -> tuple[int, bytes]:
        text = body["messages"][-2]["content"] if len(body["messages"]) > 1 else ""
        return 422, json.dumps({"error": {"message": f"invalid input: {text}"}}).encode()

    async with served_bodies(quoting, "auto") as (backend, bodies):
        with pytest.raises(BackendResponseError, match="invalid input"):
            await backend.complete(asked, SamplingParams(max_tokens=5))
    assert len(bodies) == 1 and not backend.strict_roles

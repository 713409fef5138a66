"""Remote token counts: what an outage or a failed ``/tokenize`` leaves behind once the server answers again."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from vstreamer.llm.base import ChatMessage
from vstreamer.llm.estimate import MESSAGE_OVERHEAD, estimate_tokens
from vstreamer.llm.roles import REPRESENTATIVE_PROMPT, strict_roles
from vstreamer.llm.tokenize import RemoteTokenizer


class FlakyVLLM:
    """vLLM's ``/tokenize`` (a word a token, 3 tokens around each chat message) that can be taken down."""

    def __init__(self) -> None:
        self.up = True
        self.refuse_prompts = False
        """Answer 500 to plain-text requests (the server is up)."""
        self.busy: int | None = None
        """Answer every request with this status (a proxy's 503 while vLLM restarts, a 429 rate limit)."""

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if not self.up:
            raise httpx.ConnectError("connection refused")
        if self.busy is not None:
            return httpx.Response(self.busy, text="Service Unavailable")
        body = json.loads(request.content)
        if "messages" in body:
            return httpx.Response(
                200, json={"count": sum(3 + len(m["content"].split()) for m in body["messages"])}
            )
        if self.refuse_prompts:
            return httpx.Response(500)
        return httpx.Response(200, json={"count": len(body["prompt"].split())})


def tokenizer(server: Callable[[httpx.Request], httpx.Response]) -> RemoteTokenizer:
    return RemoteTokenizer(httpx.AsyncClient(transport=httpx.MockTransport(server)), "http://vllm/v1", "m")


async def test_overheads_are_not_kept_from_an_outage_at_the_first_count() -> None:
    server = FlakyVLLM()
    server.up = False  # still starting
    counter = tokenizer(server)
    during = await counter.count_message(ChatMessage("user", "hello there"))
    assert during == estimate_tokens("hello there") + await counter.role_overhead("user")
    assert counter.kind is None and not counter.template_measured
    server.up, counter._retry_at = True, 0.0  # back, and the retry delay is over
    assert await counter.count_message(ChatMessage("user", "hello there")) == 2 + 3
    assert counter.kind == "vllm" and counter.template_measured


async def test_a_network_failure_while_measuring_the_template_is_not_a_refusal() -> None:
    server = FlakyVLLM()
    counter = tokenizer(server)
    assert await counter.detect() == "vllm"
    server.up = False
    await counter.role_overhead("user")
    assert not counter.template_measured and counter.reason == ""
    server.up = True
    assert await counter.role_overhead("user") == 3 and counter.template_measured


async def test_an_estimate_standing_in_for_a_failed_count_is_not_cached() -> None:
    server = FlakyVLLM()
    counter = tokenizer(server)
    assert await counter.count_text("one two three") == 3
    server.refuse_prompts = True
    assert await counter.count_text("four five") == estimate_tokens("four five")
    server.up = False
    assert await counter.count_text("six seven") == estimate_tokens("six seven")
    server.up, server.refuse_prompts = True, False
    assert await counter.count_text("four five") == 2
    assert await counter.count_text("six seven") == 2
    assert await counter.count_text("one two three") == 3


@pytest.mark.parametrize("status", [502, 503, 429])
async def test_a_transient_error_at_detection_is_not_taken_for_no_tokenizer(status: int) -> None:
    server = FlakyVLLM()
    server.busy = status  # a proxy in front of a vLLM that is restarting, or a rate limit
    counter = tokenizer(server)
    assert await counter.count_text("hello there") == estimate_tokens("hello there")
    assert counter.kind is None and counter.reason == ""
    server.busy, counter._retry_at = None, 0.0  # back, and the retry delay is over
    assert await counter.count_text("hello there") == 2
    assert counter.kind == "vllm"


@pytest.mark.parametrize("status", [503, 429])
async def test_a_transient_error_while_measuring_the_template_is_not_a_refusal(status: int) -> None:
    server = FlakyVLLM()
    counter = tokenizer(server)
    assert await counter.detect() == "vllm"
    server.busy = status
    await counter.role_overhead("user")
    assert not counter.template_measured and counter.reason == ""
    server.busy = None
    assert await counter.role_overhead("user") == 3 and counter.template_measured


async def test_a_server_without_a_tokenizer_is_still_told_apart() -> None:
    counter = RemoteTokenizer(
        httpx.AsyncClient(transport=httpx.MockTransport(lambda _: httpx.Response(404))), "http://vllm/v1", "m"
    )
    assert await counter.detect() == "estimate"
    assert counter.kind == "estimate" and "no tokenizer endpoint" in counter.reason


class StrictVLLM:
    """vLLM's ``/tokenize`` with a strict chat template: chats with a system message, or whose turns do not alternate
    from a user one, are refused (400); a BOS token, 4 tokens around a user message, 2 around an assistant one."""

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if "messages" not in body:
            return httpx.Response(200, json={"count": len(body["prompt"].split())})
        messages = body["messages"]
        if any(m["role"] != ("user" if i % 2 == 0 else "assistant") for i, m in enumerate(messages)):
            return httpx.Response(
                400, json={"message": "Conversation roles must alternate user/assistant/..."}
            )
        return httpx.Response(
            200,
            json={
                "count": 1
                + sum(len(m["content"].split()) + (4 if m["role"] == "user" else 2) for m in messages)
            },
        )


async def test_counts_for_a_strict_template_are_of_the_prompt_as_it_is_sent() -> None:
    counter = tokenizer(StrictVLLM())
    prompt = list(REPRESENTATIVE_PROMPT)
    assert await counter.role_overhead("user") == MESSAGE_OVERHEAD  # refused with a system message: estimated
    assert not counter.template_measured
    counter.use_strict_roles()  # what the backend does once the server needed it
    assert [await counter.role_overhead(role) for role in ("system", "user", "assistant")] == [5, 4, 2]
    arranged = strict_roles(prompt)
    assert await counter.count(prompt) == 1 + sum(
        len(m.content.split()) + (4 if m.role == "user" else 2) for m in arranged
    )
    # The shares bound the count (joining messages saves their overheads): a bound is what the budget needs, so the
    # shares stand for the prompt's count (no whole-prompt /tokenize per turn).
    shares = [await counter.count_message(message) for message in prompt]
    assert sum(shares) >= await counter.count(prompt) and counter.template_measured
    assert counter.reason == ""  # measured, not estimated

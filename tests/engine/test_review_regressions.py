"""Regressions from review: prompts whose roles did not alternate, sampling values no backend accepts."""

from __future__ import annotations

import asyncio
import math
from typing import Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vstreamer.engine import (
    ContextBudget,
    ContextBuilder,
    Conversation,
    DialogueEngine,
    SamplingOverrides,
    Turn,
)
from vstreamer.engine.conversation import TurnStatus
from vstreamer.errors import BackendUnavailable, ConfigError
from vstreamer.llm import FakeBackend
from vstreamer.llm.base import ChatMessage, SamplingParams
from vstreamer.persona import Persona


def engine_for(backend: FakeBackend) -> DialogueEngine:
    return DialogueEngine(backend, ContextBudget(2048, 256), defaults=SamplingParams(max_tokens=256))


def roles_alternate(messages: tuple[ChatMessage, ...] | list[ChatMessage]) -> bool:
    """After the system message(s), no two messages in a row share a role (the post-history note is a system
    message after the last user message)."""
    roles = [m.role for m in messages]
    body = roles[1:]
    if body and body[-1] == "system":
        body = body[:-1]
    return "system" not in body and all(a != b for a, b in zip(body, body[1:], strict=False))


async def drain(engine: DialogueEngine, conversation: Conversation, persona: Persona, text: str) -> None:
    async for _ in engine.reply(conversation, persona, text):
        pass


# --- A. an unanswered user message is merged into the next one -----------------------------------------------


async def test_a_reply_that_failed_before_any_text_leaves_one_user_message(persona: Persona) -> None:
    backend = FakeBackend(fail_after=0)
    engine = engine_for(backend)
    conversation = Conversation("tester", user_name="Bob")
    with pytest.raises(BackendUnavailable):
        await drain(engine, conversation, persona, "first question")
    backend.fail_after = None
    await drain(engine, conversation, persona, "second question")
    sent = backend.requests[-1]
    assert [(m.role, m.content) for m in sent[1:]] == [("user", "first question\n\nsecond question")]
    assert conversation.turns[-1].content == "收到：first question\n\nsecond question"
    # The turns themselves stay as they were: the transcript shows both messages.
    assert [t.content for t in conversation.turns if t.role == "user"] == [
        "first question",
        "second question",
    ]


async def test_a_reply_stopped_before_its_first_text_leaves_one_user_message(persona: Persona) -> None:
    backend = FakeBackend(delay=0.05)
    engine = engine_for(backend)
    conversation = Conversation("tester")
    stream = engine.reply(conversation, persona, "hello one")
    async for event in stream:
        if event.kind == "started":
            break
    await stream.aclose()
    assert (conversation.turns[-1].status, conversation.turns[-1].content) == ("interrupted", "")
    backend.delay = 0
    await drain(engine, conversation, persona, "hello two")
    assert [(m.role, m.content) for m in backend.requests[-1][1:]] == [("user", "hello one\n\nhello two")]


async def test_a_partial_reply_still_answers_its_message(persona: Persona) -> None:
    backend = FakeBackend(delay=0.01)
    engine = engine_for(backend)
    conversation = Conversation("tester")
    stream = engine.reply(conversation, persona, "tell me a long story about cats and dogs")
    async for event in stream:
        if event.kind == "delta" and len(conversation.turns[-1].content) > 10:
            break
    await stream.aclose()
    backend.delay = 0
    await drain(engine, conversation, persona, "continue")
    sent = backend.requests[-1][1:]
    assert [m.role for m in sent] == ["user", "assistant", "user"]
    assert sent[1].content == conversation.turns[1].content and sent[2].content == "continue"


async def test_greeting_blocked_pair_and_failed_replies_alternate(persona: Persona) -> None:
    conversation = Conversation("tester", user_name="Bob")
    conversation.turns += [
        Turn("assistant", "Hello Bob!"),  # the greeting
        Turn("user", "first"),
        Turn("assistant", "", status="failed"),
        Turn("user", "bad words", status="blocked"),
        Turn("assistant", "let's talk about something else", status="blocked"),
        Turn("user", "second"),
        Turn("assistant", "   ", status="interrupted"),
        Turn("user", "third"),
        Turn("assistant", "an answer"),
        Turn("assistant", "and a second thought"),  # as a client's history may have it
        Turn("user", "fourth"),
    ]
    backend = FakeBackend()
    built = await ContextBuilder(backend, ContextBudget(2048, 100)).build(conversation, persona)
    assert [(m.role, m.content) for m in built.messages[1:]] == [
        ("assistant", "Hello Bob!"),
        ("user", "first\n\nsecond\n\nthird"),
        ("assistant", "an answer\n\nand a second thought"),
        ("user", "fourth"),
    ]
    assert built.history_turns == 6  # turns, not messages
    assert await backend.count_tokens(built.messages) <= built.prompt_tokens <= built.budget


class ExactCounts(FakeBackend):
    """A backend whose prompt count is not the sum of shares: the builder counts the prompt itself."""

    counts_add_up = False


Speaker = Literal["user", "assistant"]
SPEAKERS: list[Speaker] = ["user", "assistant"]
STATUSES: list[TurnStatus] = ["complete", "complete", "complete", "interrupted", "failed", "blocked"]
turn_lists = st.lists(
    st.tuples(
        st.sampled_from(SPEAKERS),
        st.sampled_from(["", "hi", "a longer message with several words", "长一点的消息 mixed"]),
        st.sampled_from(STATUSES),
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(turns=turn_lists, window=st.integers(400, 800), exact=st.booleans())
def test_any_statuses_alternate_within_the_budget(
    persona: Persona, turns: list[tuple[Speaker, str, TurnStatus]], window: int, exact: bool
) -> None:
    async def run() -> None:
        # Built turn by turn, as a chat does: the window's index of settled turns is reused between prompts.
        backend = ExactCounts() if exact else FakeBackend()
        builder = ContextBuilder(backend, ContextBudget(window, 100, 0))
        conversation = Conversation("tester", user_name="Bob")
        last: tuple[Speaker, str, TurnStatus] = ("user", "last", "complete")
        for role, text, status in [*turns, last]:
            conversation.turns.append(Turn(role, text, status))
            if role != "user" or status != "complete" or not text:
                continue
            built = await builder.build(conversation, persona)
            assert roles_alternate(built.messages), [m.role for m in built.messages]
            counted = await backend.count_tokens(built.messages)
            assert counted <= built.prompt_tokens <= built.budget
            if exact:
                assert counted == built.prompt_tokens
            assert built.messages[-1].content.endswith(conversation.turns[-1].content)

    asyncio.run(run())


# --- B. sampling values are checked where every adapter meets them ---------------------------------------------


@pytest.mark.parametrize(
    ("asked", "named"),
    [
        (SamplingOverrides(temperature=-3.0), "temperature"),
        (SamplingOverrides(temperature=math.nan), "temperature"),
        (SamplingOverrides(temperature=2.5), "temperature"),
        (SamplingOverrides(top_p=7.0), "top_p"),
        (SamplingOverrides(top_p=0.0), "top_p"),
        (SamplingOverrides(max_tokens=-5), "max_tokens"),
        (SamplingOverrides(max_tokens=0), "max_tokens"),
        (SamplingOverrides(stop=("",)), "stop"),
        (SamplingOverrides(stop=("x" * 201,)), "stop"),
        (SamplingOverrides(presence_penalty=math.inf), "presence_penalty"),
        (SamplingOverrides(frequency_penalty=-2.5), "frequency_penalty"),
    ],
)
def test_sampling_values_out_of_range_are_refused(
    persona: Persona, asked: SamplingOverrides, named: str
) -> None:
    engine = engine_for(FakeBackend())
    with pytest.raises(ConfigError, match=named):
        engine.sampling_for(persona, asked)
    with pytest.raises(ConfigError, match=named):  # asked again: nothing invalid was kept made
        engine.sampling_for(persona, asked)


def test_sampling_values_at_the_edges_are_taken(persona: Persona) -> None:
    engine = engine_for(FakeBackend())
    asked = SamplingOverrides(
        temperature=2.0, top_p=1.0, max_tokens=1, stop=("x" * 200,), presence_penalty=-2.0
    )
    params = engine.sampling_for(persona, asked)
    assert (params.temperature, params.top_p, params.max_tokens) == (2.0, 1.0, 1)
    assert (
        engine.sampling_for(persona, SamplingOverrides(temperature=0.0, max_tokens=10**6)).max_tokens == 256
    )


async def test_a_refused_sampling_value_leaves_no_message_behind(persona: Persona) -> None:
    backend = FakeBackend()
    conversation = Conversation("tester")
    stream = engine_for(backend).reply(conversation, persona, "hi", overrides=SamplingOverrides(top_p=7.0))
    with pytest.raises(ConfigError, match="top_p"):
        async for _ in stream:
            pass
    assert conversation.turns == [] and backend.requests == []


# --- C. a lone surrogate from the server (JSON's "\ud83d") ------------------------------------------------------


async def test_a_lone_surrogate_in_a_streamed_piece_is_dropped_not_fatal(persona: Persona) -> None:
    # A server's JSON may carry half an emoji ("\ud83d"); Python decodes it to a lone surrogate, which no encoding
    # takes: the drift finder's automaton raised on it and failed the reply.
    backend = FakeBackend(lambda messages: "今天 \ud83d 很开心 \udc00哦")
    engine = engine_for(backend)
    assert engine.drift_repair
    conversation = Conversation("tester")
    shown = []
    async for event in engine.reply(conversation, persona, "你好"):
        if event.kind == "delta":
            shown.append(event.text)
    reply = conversation.turns[-1]
    assert reply.status == "complete"
    assert reply.content == "".join(shown) == "今天  很开心 哦"
    reply.content.encode("utf-8")  # storable

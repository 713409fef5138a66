"""The turn pipeline: streaming, interruption, failure, sampling defaults."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest

from vstreamer.engine import ContextBudget, Conversation, DialogueEngine, SamplingOverrides
from vstreamer.engine.conversation import Turn, new_id
from vstreamer.engine.engine import Delivery
from vstreamer.errors import BackendResponseError, BackendUnavailable, ContextBudgetError
from vstreamer.llm import FakeBackend
from vstreamer.llm.base import ChatMessage, SamplingParams
from vstreamer.persona import Persona, SamplingDefaults
from vstreamer.store import open_store
from vstreamer.store.writer import message_row


def engine_for(backend: FakeBackend) -> DialogueEngine:
    return DialogueEngine(backend, ContextBudget(2048, 256), defaults=SamplingParams(max_tokens=256))


async def test_reply_streams_and_is_stored(persona: Persona) -> None:
    conversation = Conversation("tester", user_name="Bob")
    kinds: list[str] = []
    text = ""
    async for event in engine_for(FakeBackend()).reply(conversation, persona, "hello there"):
        kinds.append(event.kind)
        if event.kind == "delta":
            text += event.text
    assert kinds[0] == "started" and kinds[-1] == "finished" and kinds.count("delta") > 2
    assert text == "收到：hello there"
    user, reply = conversation.turns
    assert (user.role, user.content, user.status) == ("user", "hello there", "complete")
    assert (reply.role, reply.content, reply.status) == ("assistant", text, "complete")
    assert reply.usage is not None


async def test_closing_the_stream_keeps_partial_reply_as_interrupted(persona: Persona) -> None:
    backend = FakeBackend(delay=0.01)
    conversation = Conversation("tester")
    stream = engine_for(backend).reply(conversation, persona, "one two three four five six seven eight")
    async for event in stream:
        if event.kind == "delta" and len(conversation.turns[-1].content) > 4:
            break
    await stream.aclose()
    reply = conversation.turns[-1]
    assert reply.status == "interrupted"
    assert reply.content and "收到：one two three four five six seven eight".startswith(reply.content)
    sent = backend.pieces_sent
    await asyncio.sleep(0.1)
    assert backend.pieces_sent == sent  # generation stopped


async def test_cancelled_task_keeps_partial_reply(persona: Persona) -> None:
    conversation = Conversation("tester")
    engine = engine_for(FakeBackend(delay=0.02))

    async def consume() -> None:
        async for _ in engine.reply(conversation, persona, "a b c d e f g h i j k l m n o p"):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.15)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert conversation.turns[-1].status == "interrupted"
    assert conversation.turns[-1].content


async def test_backend_failure_marks_turn_failed(persona: Persona) -> None:
    conversation = Conversation("tester")
    with pytest.raises(BackendUnavailable):
        async for _ in engine_for(FakeBackend(fail_after=5)).reply(conversation, persona, "x y z w v"):
            pass
    reply = conversation.turns[-1]
    assert reply.status == "failed" and reply.error and reply.content == "收到：x y"


def test_sampling_precedence(persona: Persona) -> None:
    engine = DialogueEngine(FakeBackend(), ContextBudget(2048, 300))
    assert engine.sampling_for(persona) == SamplingParams(max_tokens=300)
    styled = persona.model_copy(update={"sampling": SamplingDefaults(temperature=0.3, max_tokens=1000)})
    params = engine.sampling_for(styled, SamplingOverrides(top_p=0.5))
    assert (params.temperature, params.top_p, params.max_tokens) == (0.3, 0.5, 300)  # capped by the budget
    assert engine.sampling_for(persona, SamplingOverrides(seed=7, max_tokens=20)) == SamplingParams(
        max_tokens=20, seed=7
    )
    assert engine.sampling_for(styled, SamplingOverrides(temperature=0.0)).temperature == 0.0  # 0 is a value
    asked = SamplingOverrides(stop=("END",), presence_penalty=0.5, frequency_penalty=-0.5)
    assert engine.sampling_for(persona, asked) == SamplingParams(
        max_tokens=300, stop=("END",), presence_penalty=0.5, frequency_penalty=-0.5
    )


def test_sampling_sets_are_made_once_and_follow_new_defaults(persona: Persona) -> None:
    engine = DialogueEngine(FakeBackend(), ContextBudget(2048, 300))
    assert engine.sampling_for(persona) is engine.defaults
    asked = SamplingOverrides(top_p=0.5)
    assert engine.sampling_for(persona, asked) is engine.sampling_for(persona, SamplingOverrides(top_p=0.5))
    engine.defaults = SamplingParams(max_tokens=300, stop=("\n\n",), top_k=5)
    params = engine.sampling_for(persona, asked)
    assert (params.top_p, params.stop, params.top_k) == (0.5, ("\n\n",), 5)
    for i in range(200):  # clients asking for ever new values do not grow the engine without bound
        assert engine.sampling_for(persona, SamplingOverrides(temperature=i / 100)).temperature == i / 100
    assert len(engine._sampling) <= 64


class RemoteCounting(FakeBackend):
    """A backend whose every count is a request to its server (vLLM, llama.cpp): counts are recorded."""

    counts_remotely = True

    def __init__(self) -> None:
        super().__init__()
        self.counted: list[str] = []

    async def count_message_tokens(self, message: ChatMessage) -> int:
        self.counted.append(message.content)
        return await super().count_message_tokens(message)


async def test_a_reply_is_counted_in_the_background_not_on_the_next_turn(persona: Persona) -> None:
    backend = RemoteCounting()
    engine = DialogueEngine(backend, ContextBudget(4096, 256))
    conversation = Conversation(persona.id)
    async for _ in engine.reply(conversation, persona, "first message"):
        pass
    reply = conversation.turns[-1]
    await engine.tasks.drain()
    assert reply.prompt_tokens is not None and backend.counted.count(reply.content) == 1
    backend.counted.clear()
    async for _ in engine.reply(conversation, persona, "second message"):
        pass
    assert reply.content not in backend.counted  # the second prompt reused the share counted meanwhile
    assert "second message" in backend.counted  # (the new message itself is counted on its turn)


def test_new_ids_are_version_7_uuids_in_time_order() -> None:
    made = []
    for _ in range(4):
        made += [new_id() for _ in range(500)]
        time.sleep(0.002)  # ids of different milliseconds
    assert len(set(made)) == len(made)
    parsed = [uuid.UUID(i) for i in made]
    assert all(
        u.version == 7 and u.variant == uuid.RFC_4122 and u.hex == i
        for u, i in zip(parsed, made, strict=True)
    )
    # Their first 48 bits are the time they were made, in milliseconds: ids of later milliseconds sort after.
    stamps = [int(i[:12], 16) for i in made]
    assert stamps == sorted(stamps)
    assert abs(stamps[-1] - time.time() * 1000) < 5000
    assert len(set(stamps)) >= 4
    # The rest is random: 74 bits (all but the version and variant bits) differ between ids of one millisecond.
    assert len({i[12:] for i in made}) == len(made)


@pytest.mark.parametrize("fail_after", [0, None], ids=["backend-fails", "backend-answers"])
async def test_a_reply_cancelled_at_any_step_is_stored_after_its_message(
    persona: Persona, tmp_path: Path, fail_after: int | None
) -> None:
    """Cancel the consumer after each number of loop steps: whatever the moment (waiting for the user message's
    commit included), the store ends up with the user message and the reply, as the conversation has them."""
    store = await open_store(None, tmp_path)
    try:
        for steps in range(8):
            backend = FakeBackend(delay=0.005, fail_after=fail_after)
            engine = DialogueEngine(backend, ContextBudget(4096, 256), store=store)
            record = await store.create_session(persona.id, owner="o")
            conversation = await store.load_conversation(record.id)

            task = asyncio.create_task(consume(engine.reply(conversation, persona, "hello there")))
            for _ in range(steps):
                await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            await asyncio.sleep(0.05)  # a shielded commit may finish after the cancel
            shape = [(t.role, t.status) for t in conversation.turns]
            assert [(t.role, t.status) for t in await store.list_messages(record.id)] == shape, steps
            assert shape[:1] in ([], [("user", "complete")]) and len(shape) <= 2
    finally:
        await store.close()


@pytest.mark.parametrize("user_commit", ["overlap", "before"])
async def test_a_message_over_the_budget_is_kept_as_failed_and_out_of_later_prompts(
    persona: Persona, tmp_path: Path, user_commit: str
) -> None:
    store = await open_store(None, tmp_path)
    try:
        backend = FakeBackend()
        engine = DialogueEngine(backend, ContextBudget(2048, 256), store=store, user_commit=user_commit)  # type: ignore[arg-type]
        record = await store.create_session(persona.id, owner="o")
        conversation = await store.load_conversation(record.id)
        async for _ in engine.reply(conversation, persona, "my name is Sam, remember it"):
            pass
        with pytest.raises(ContextBudgetError):
            async for _ in engine.reply(conversation, persona, "word " * 3000):
                pass
        stored = await store.list_messages(record.id)
        assert [(t.role, t.status) for t in stored][-1] == ("user", "failed")
        async for _ in engine.reply(conversation, persona, "what is my name?"):
            pass
        assert any("my name is Sam" in m.content for m in backend.requests[-1])
    finally:
        await store.close()


async def consume(events: AsyncIterator[object]) -> None:
    async for _ in events:
        pass


def test_turns_made_at_one_moment_are_stored_a_microsecond_apart() -> None:
    """Turns are read back in the order of their stored time, to the microsecond: a turn made at (or before) the last
    one's time goes after it as stored (one microsecond later in floats often rounded back onto the same one)."""
    rng = random.Random(7)
    for _ in range(20_000):
        moment = 1.8e9 + rng.random() * 1e6
        conversation = Conversation("nova")
        first = conversation.add(Turn("assistant", "", created_at=moment))
        second = conversation.add(Turn("user", "sent meanwhile", created_at=moment - rng.random() * 1e-6))
        assert message_row("s", second)["created_at"] > message_row("s", first)["created_at"]


def user_messages(backend: FakeBackend) -> list[str]:
    """The user messages of the last prompt."""
    return [m.content for m in backend.requests[-1] if m.role == "user"]


def refusing(word: str, status: int = 400) -> Callable[[Sequence[ChatMessage]], str]:
    """A model whose server refuses any prompt that holds ``word`` (over its context, a content filter), with
    ``status`` (a 5xx: it failed), before any text; it answers "noted" otherwise."""

    def answer(messages: Sequence[ChatMessage]) -> str:
        if any(word in m.content for m in messages):
            raise BackendResponseError(f"LLM server returned HTTP {status}: too long", status)
        return "noted"

    return answer


@pytest.mark.parametrize("user_commit", ["overlap", "before"])
async def test_a_message_the_server_refuses_fails_and_leaves_later_prompts(
    persona: Persona, tmp_path: Path, user_commit: str
) -> None:
    store = await open_store(None, tmp_path)
    try:
        backend = FakeBackend(refusing("HUGE"))
        engine = DialogueEngine(backend, ContextBudget(2048, 256), store=store, user_commit=user_commit)  # type: ignore[arg-type]
        record = await store.create_session(persona.id, owner="o")
        conversation = await store.load_conversation(record.id)
        await consume(engine.reply(conversation, persona, "I like cats"))
        with pytest.raises(BackendResponseError):
            await consume(engine.reply(conversation, persona, "HUGE paste"))
        # Stored as failed by the time the error is raised: whoever reads the session after it finds it so.
        stored = [(t.role, t.content, t.status) for t in await store.list_messages(record.id)]
        assert stored[-2:] == [("user", "HUGE paste", "failed"), ("assistant", "", "failed")]
        assert conversation.turns[-2].error_code == "backend_response_error"
        await consume(engine.reply(conversation, persona, "what do I like?"))
        assert user_messages(backend) == ["I like cats", "what do I like?"]
        reloaded = await store.load_conversation(record.id)  # and so for a session read back
        await consume(engine.reply(reloaded, persona, "again?"))
        assert user_messages(backend) == ["I like cats", "what do I like?", "again?"]
    finally:
        await store.close()


async def test_a_server_failure_or_a_refusal_after_text_keeps_the_message(persona: Persona) -> None:
    """Only a refusal before any text fails the message: after a 5xx it may well pass once the server is back, and a
    reply that showed text answered it."""
    conversation = Conversation(persona.id)
    engine = engine_for(FakeBackend(refusing("DOWN", 500)))
    with pytest.raises(BackendResponseError):
        await consume(engine.reply(conversation, persona, "DOWN for a while"))
    assert [t.status for t in conversation.turns] == ["complete", "failed"]
    late = engine_for(FakeBackend(fail_after=2))
    with pytest.raises(BackendUnavailable):
        await consume(late.reply(conversation, persona, "one two three four"))
    assert conversation.turns[-2].status == "complete"


@pytest.mark.parametrize("how", ["failed", "interrupted", "no reply"])
async def test_a_message_sent_again_unanswered_is_kept_once(
    persona: Persona, tmp_path: Path, how: str
) -> None:
    """An OpenAI SDK retries a 5xx or a timeout twice, sending the message again: the earlier copy, answered with no
    text, leaves the prompts (stored as failed), and the model reads the message once."""
    store = await open_store(None, tmp_path)
    try:
        backend = FakeBackend(refusing("NOTHING-REFUSED"))
        engine = DialogueEngine(backend, ContextBudget(2048, 256), store=store)
        record = await store.create_session(persona.id, owner="o")
        conversation = await store.load_conversation(record.id)
        await consume(engine.reply(conversation, persona, "hi"))
        tries = 1 if how == "no reply" else 2  # the first try, and the SDK's first retry, go unanswered
        for _ in range(tries):
            if how == "failed":
                backend.fail_after = 0
                with pytest.raises(BackendUnavailable):
                    await consume(engine.reply(conversation, persona, "tell me a joke"))
            elif how == "interrupted":
                events = engine.reply(conversation, persona, "tell me a joke")
                assert (await anext(events)).kind == "started"
                await events.aclose()  # the client timed out before the first text
            else:  # a message whose reply never started (the process stopped meanwhile)
                conversation.add(user := Turn("user", "tell me a joke"))
                await store.save_turn(conversation, user)
        backend.fail_after = None
        await consume(engine.reply(conversation, persona, "tell me a joke"))
        assert user_messages(backend) == ["hi", "tell me a joke"]  # once, not joined with its copies
        stored = await store.list_messages(record.id)
        assert [(t.role, t.status) for t in stored] == [(t.role, t.status) for t in conversation.turns]
        copies = [t for t in stored if t.content == "tell me a joke"]
        assert [t.status for t in copies] == ["failed"] * tries + ["complete"]
        assert copies[0].error_code == "resent"
    finally:
        await store.close()


@pytest.mark.parametrize("how", ["timed out", "failed"])
async def test_a_message_sent_again_after_its_whole_reply_was_never_delivered_is_kept_once(
    persona: Persona, tmp_path: Path, how: str
) -> None:
    """Not streamed, a reply is delivered whole at its end: one cut off after its first text (the client timed out)
    or failed was never read, so the SDK's retry replaces the message it answered, as for a reply with no text. Both
    copies stay stored, each marked; the model reads the message once and none of the undelivered text."""
    store = await open_store(None, tmp_path)
    try:
        backend = FakeBackend()
        engine = DialogueEngine(backend, ContextBudget(2048, 256), store=store)
        record = await store.create_session(persona.id, owner="o")
        conversation = await store.load_conversation(record.id)
        await consume(engine.reply(conversation, persona, "hi", delivery="whole"))
        if how == "failed":
            backend.fail_after = 2
            with pytest.raises(BackendUnavailable):
                await consume(engine.reply(conversation, persona, "tell me a joke", delivery="whole"))
        else:
            events = engine.reply(conversation, persona, "tell me a joke", delivery="whole")
            async for event in events:
                if event.kind == "delta":
                    break  # text was made, but goes out only with the whole reply: the client left first
            await events.aclose()
        backend.fail_after = None
        await consume(engine.reply(conversation, persona, "tell me a joke", delivery="whole"))
        assert user_messages(backend) == ["hi", "tell me a joke"]  # once, not joined with its copy
        assert [m.content for m in backend.requests[-1] if m.role == "assistant"] == ["收到：hi"]
        stored = await store.list_messages(record.id)
        ended = "failed" if how == "failed" else "interrupted"
        assert [(t.role, t.status, t.error_code) for t in stored] == [
            ("user", "complete", None), ("assistant", "complete", None),
            ("user", "failed", "resent"), ("assistant", ended, "undelivered"),
            ("user", "complete", None), ("assistant", "complete", None),
        ]  # fmt: skip
        assert stored[3].content and "收到：tell me a joke".startswith(stored[3].content)  # kept, not shown
        if how == "failed":  # why it failed is still said
            assert stored[3].error is not None and "backend_unavailable" in stored[3].error
    finally:
        await store.close()


async def test_a_reply_cut_off_after_text_answers_its_message_if_streamed_and_no_later_prompt_if_whole(
    persona: Persona,
) -> None:
    """Streamed, the text a stopped reply showed was read: it stays in later prompts. Delivered whole, it was never
    read: it is in none, and the message it answered is joined with the next one."""
    prompts: dict[str, list[tuple[str, str]]] = {}
    deliveries: tuple[Delivery, ...] = ("streamed", "whole")
    for delivery in deliveries:
        conversation = Conversation(persona.id)
        backend = FakeBackend()
        engine = engine_for(backend)
        events = engine.reply(conversation, persona, "tell me a joke", delivery=delivery)
        async for event in events:
            if event.kind == "delta":
                break
        await events.aclose()
        assert conversation.turns[-1].status == "interrupted"
        await consume(engine.reply(conversation, persona, "and another", delivery=delivery))
        prompts[delivery] = [(m.role, m.content) for m in backend.requests[-1] if m.role != "system"]
    cut = conversation.turns[1].content
    assert prompts["streamed"] == [("user", "tell me a joke"), ("assistant", cut), ("user", "and another")]
    assert prompts["whole"] == [("user", "tell me a joke\n\nand another")]


async def test_a_message_sent_again_after_a_reply_with_text_is_a_new_one(persona: Persona) -> None:
    conversation = Conversation(persona.id)
    backend = FakeBackend(fail_after=1)
    engine = engine_for(backend)
    with pytest.raises(BackendUnavailable):  # its reply showed some text before it failed
        await consume(engine.reply(conversation, persona, "one two three"))
    backend.fail_after = None
    await consume(engine.reply(conversation, persona, "one two three"))
    await consume(engine.reply(conversation, persona, "one two three"))  # after a whole reply: also new
    assert [t.status for t in conversation.turns if t.role == "user"] == ["complete"] * 3
    assert "\n\n".join(user_messages(backend)).count("one two three") == 3


async def test_a_message_sent_again_and_cancelled_at_once_is_still_kept(
    persona: Persona, tmp_path: Path
) -> None:
    """The earlier copy is withdrawn only with the new one in: a caller cancelled at the reply's first wait (a client
    gone at once) leaves the new copy stored, never the message withdrawn and gone."""
    store = await open_store(None, tmp_path)
    try:
        backend = FakeBackend(fail_after=0)
        engine = DialogueEngine(backend, ContextBudget(2048, 256), store=store)
        record = await store.create_session(persona.id, owner="o")
        conversation = await store.load_conversation(record.id)
        with pytest.raises(BackendUnavailable):
            await consume(engine.reply(conversation, persona, "down again"))
        backend.fail_after = None
        events = engine.reply(conversation, persona, "down again")
        first = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0)  # the reply runs up to its first wait
        first.cancel()  # at the reply's first wait, or right after it started (a fast backend has none before)
        with contextlib.suppress(asyncio.CancelledError):
            await first
        await events.aclose()
        await engine.aclose()  # the commits started meanwhile end
        stored = await store.list_messages(record.id)
        copies = [(t.status, t.error_code) for t in stored if t.role == "user"]
        assert copies == [("failed", "resent"), ("complete", None)], copies
    finally:
        await store.close()

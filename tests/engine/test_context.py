"""Prompt building within the token budget."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from tests.engine.turn_reads import TurnReads
from vstreamer.engine import ContextBudget, ContextBuilder, Conversation, Turn, prompt
from vstreamer.errors import ContextBudgetError
from vstreamer.llm import FakeBackend
from vstreamer.llm.base import ChatMessage
from vstreamer.persona import Persona


def conversation_with(turns: int, text: str = "今天的直播真好看，主播加油！ nice stream") -> Conversation:
    conversation = Conversation("tester", user_name="Bob")
    for index in range(turns):
        conversation.turns.append(Turn("user", f"{text} #{index}"))
        conversation.turns.append(Turn("assistant", f"谢谢你的支持 thanks #{index}"))
    conversation.turns.append(Turn("user", "最后一个问题 last question"))
    return conversation


async def test_persona_pinned_and_newest_turns_kept(persona: Persona) -> None:
    backend = FakeBackend()
    builder = ContextBuilder(backend, ContextBudget(context_window=600, max_tokens=100, reserve_tokens=20))
    built = await builder.build(conversation_with(200), persona)
    assert built.messages[0].role == "system"
    assert "Tester is a cheerful streamer who talks to Bob." in built.messages[0].content
    assert built.messages[-1].content == "最后一个问题 last question"
    assert 0 < built.history_turns < 400
    # The newest history turn is the last assistant reply; older ones left first.
    assert built.messages[-2].content == "谢谢你的支持 thanks #199"
    assert built.prompt_tokens == await backend.count_tokens(built.messages) <= built.budget


async def test_thousand_turns_never_exceed_budget(persona: Persona) -> None:
    backend = FakeBackend()
    budget = ContextBudget(context_window=1024, max_tokens=200, reserve_tokens=16)
    builder = ContextBuilder(backend, budget)
    conversation = Conversation("tester", user_name="Bob")
    for index in range(1000):
        conversation.turns.append(Turn("user", f"观众消息 message number {index} " * (1 + index % 7)))
        built = await builder.build(conversation, persona)
        assert await backend.count_tokens(built.messages) <= budget.prompt_budget
        conversation.turns.append(Turn("assistant", f"回复 reply {index} " * (1 + index % 5)))


async def test_build_cost_does_not_grow_with_history(
    persona: Persona, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same window, 200x the history: a build reads the same few turns and counts no more tokens. Counted, not
    timed: a walk over the whole history (or a recount of its turns) fails this on any machine, and a busy one
    cannot fail it."""
    backend = FakeBackend()
    counts = 0
    count_message_tokens = backend.count_message_tokens
    count_tokens = backend.count_tokens

    async def counting_message(message: ChatMessage) -> int:
        nonlocal counts
        counts += 1
        return await count_message_tokens(message)

    async def counting(messages: Sequence[ChatMessage]) -> int:
        nonlocal counts
        counts += 1
        return await count_tokens(messages)

    monkeypatch.setattr(backend, "count_message_tokens", counting_message)
    monkeypatch.setattr(backend, "count_tokens", counting)
    builder = ContextBuilder(backend, ContextBudget(context_window=1024, max_tokens=200))
    reads = TurnReads(monkeypatch)

    async def cost(turns: int) -> tuple[int, int, int]:
        """(turns read, token counts) of a build, and the history turns in its prompt."""
        nonlocal counts
        conversation = conversation_with(turns)
        await builder.build(conversation, persona)  # warm the per-turn token cache, as a live chat does
        counts = 0
        reads.start()
        built = await builder.build(conversation, persona)
        return reads.stop(), counts, built.history_turns

    small, large = await cost(100), await cost(20_000)
    depth = persona.lorebook.scan_depth if persona.lorebook else 0
    assert large[2] > 0  # the prompt does carry history
    for reads, _, window in (small, large):
        # At most the prompt's turns, the one that did not fit, the new message and the lore's scan depth, however
        # long the history: a walk over it reads all of its 40,000 turns.
        assert reads <= window + 2 + depth, (small, large)
    assert large[1] == small[1], (small, large)  # no token count per history turn


async def test_lorebook_entry_activates_by_recent_keys(persona: Persona) -> None:
    builder = ContextBuilder(FakeBackend(), ContextBudget(context_window=2048, max_tokens=100))
    conversation = Conversation("tester", user_name="Bob")
    conversation.turns.append(Turn("user", "do you have a cat?"))
    built = await builder.build(conversation, persona)
    assert "Tester has a cat named Mochi." in built.messages[0].content
    assert [e.content for e in built.lore] == ["{{char}} has a cat named Mochi."]
    # Once the key is older than scan_depth, the entry leaves the prompt.
    conversation.turns += [
        Turn("assistant", "yes!"),
        Turn("user", "ok"),
        Turn("assistant", "so"),
        Turn("user", "bye"),
    ]
    built = await builder.build(conversation, persona)
    assert "Mochi" not in built.messages[0].content


async def test_creator_notes_never_reach_the_prompt(persona: Persona) -> None:
    builder = ContextBuilder(FakeBackend(), ContextBudget(context_window=2048, max_tokens=100))
    built = await builder.build(conversation_with(3), persona)
    assert all("SECRET-CREATOR-NOTE" not in m.content for m in built.messages)


async def test_card_system_prompt_and_post_history_instructions(persona: Persona) -> None:
    card = persona.model_copy(
        update={
            "system_prompt": "{{original}} Never break the fourth wall.",
            "post_history_instructions": "Reply in rhyme, {{user}}.",
        }
    )
    builder = ContextBuilder(FakeBackend(), ContextBudget(context_window=2048, max_tokens=100))
    built = await builder.build(conversation_with(2), card)
    system = built.messages[0].content
    assert system.startswith("You are Tester, a virtual streamer")
    assert "Never break the fourth wall." in system
    assert built.messages[-1].role == "system" and built.messages[-1].content == "Reply in rhyme, Bob."
    assert built.messages[-2].content == "最后一个问题 last question"


async def test_post_history_note_follows_the_viewer_and_the_card(persona: Persona) -> None:
    # The note is made once per persona object and viewer name: another viewer or an edited card gets its own.
    card = persona.model_copy(update={"post_history_instructions": "Reply in rhyme, {{user}}."})
    builder = ContextBuilder(FakeBackend(), ContextBudget(context_window=2048, max_tokens=100))
    bob = conversation_with(2)
    ann = conversation_with(2)
    ann.user_name = "Ann"
    edited = card.model_copy(update={"post_history_instructions": "Reply in haiku."})
    notes = [
        (await builder.build(c, p)).messages[-1]
        for c, p in ((bob, card), (ann, card), (bob, card), (bob, edited))
    ]
    assert [m.content for m in notes] == ["Reply in rhyme, Bob.", "Reply in rhyme, Ann.", "Reply in rhyme, Bob.",
                                          "Reply in haiku."]  # fmt: skip
    assert notes[0] is notes[2]  # made once
    # A card without a note: none, and nothing to protect but the prompt.
    built = await builder.build(bob, persona)
    assert built.messages[-1].role == "user" and built.protected == (built.messages[0].content,)
    assert (await builder.build(bob, edited)).protected[1:] == ("Reply in haiku.",)


async def test_interrupted_turns_stay_failed_turns_leave(persona: Persona) -> None:
    conversation = Conversation("tester", user_name="Bob")
    conversation.turns += [
        Turn("user", "first"),
        Turn("assistant", "partial rep", status="interrupted"),
        Turn("user", "second"),
        Turn("assistant", "", status="failed"),
        Turn("user", "blocked words", status="blocked"),
        Turn("user", "third"),
    ]
    built = await ContextBuilder(FakeBackend(), ContextBudget(2048, 100)).build(conversation, persona)
    # "second" was never answered: it reaches the model with "third", as one message (roles must alternate).
    assert [m.content for m in built.messages[1:]] == ["first", "partial rep", "second\n\nthird"]


async def test_examples_then_lore_dropped_before_giving_up(persona: Persona) -> None:
    backend = FakeBackend()
    conversation = Conversation("tester", user_name="Bob")
    conversation.turns.append(Turn("user", "tell me about your cat"))
    lore = list(persona.lorebook.activate(["tell me about your cat"])) if persona.lorebook else []

    async def cost(**kwargs: bool) -> int:
        text = prompt.system_message(persona, "Bob", lore=lore, **kwargs)
        return await backend.count_message_tokens(ChatMessage("system", text))

    user = await backend.count_message_tokens(conversation.turns[-1].as_message())
    full, no_examples = await cost(), await cost(include_examples=False)
    assert no_examples < full
    window = no_examples + user + 100  # the reply takes 100: room for all but the examples
    built = await ContextBuilder(backend, ContextBudget(window, 100, 0)).build(conversation, persona)
    assert "hey!" not in built.messages[0].content  # the example dialogue went first
    assert "Mochi" in built.messages[0].content  # the lore stayed
    conversation.turns.append(Turn("user", "长消息" * 400))
    with pytest.raises(ContextBudgetError, match="prompt budget"):
        await ContextBuilder(backend, ContextBudget(window, 100, 0)).build(conversation, persona)


def test_budget_must_leave_room() -> None:
    with pytest.raises(ContextBudgetError):
        ContextBuilder(FakeBackend(), ContextBudget(context_window=100, max_tokens=100))


async def test_rendered_system_message_follows_persona_viewer_and_memory(persona: Persona) -> None:
    builder = ContextBuilder(FakeBackend(), ContextBudget(context_window=4096, max_tokens=100))
    first = (
        await builder.build(conversation_with(1), persona, memory=("[summary] Bob likes cats",))
    ).messages[0]
    other_viewer = conversation_with(1)
    other_viewer.user_name = "Alice"
    assert "Alice" in (await builder.build(other_viewer, persona)).messages[0].content
    assert "Bob likes cats" in first.content
    assert "Bob likes cats" not in (await builder.build(conversation_with(1), persona)).messages[0].content
    edited = persona.model_copy(update={"description": "A brand new description of {{char}}."})
    assert (
        "A brand new description" in (await builder.build(conversation_with(1), edited)).messages[0].content
    )
    again = (
        await builder.build(conversation_with(1), persona, memory=("[summary] Bob likes cats",))
    ).messages[0]
    assert again.content == first.content

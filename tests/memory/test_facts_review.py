"""Review fixes: negations are whole words (``not`` inside ``notebooks`` is none), and emoji and symbols tell facts
apart (``喜欢🐱`` is not ``喜欢🐶``)."""

from __future__ import annotations

import pytest

from tests.memory.conftest import ScriptedBackend, facts_json
from vstreamer.engine import ContextBudget
from vstreamer.engine.conversation import Conversation, Turn
from vstreamer.engine.facts import ViewerKey, contradicts, normalize_fact, similar
from vstreamer.engine.memory import MemoryManager
from vstreamer.persona import PersonaLibrary

BUDGET = ContextBudget(context_window=3072, max_tokens=128, reserve_tokens=16)


def _contradicts(a: str, b: str) -> bool:
    return contradicts(normalize_fact(a), normalize_fact(b))


def _similar(a: str, b: str) -> bool:
    return similar(normalize_fact(a), normalize_fact(b))


@pytest.mark.parametrize(
    ("new", "old"),
    [
        ("likes notebooks", "likes books"),
        ("likes Notion", "likes Ion"),
        ("has another cat", "has a cat"),
        ("knows nothing about cars", "knows about cars"),
        ("is a cannot-miss fan", "is a fan"),
        ("likes to cook at night", "likes to cook"),
        ("住在不丹", "住在丹东"),
        ("未来想当医生", "想当医生"),
        ("特别喜欢玩原神游戏", "喜欢玩原神游戏"),
        ("喜欢和别人聊天", "喜欢和人聊天"),
    ],
)
def test_a_negation_inside_a_word_is_no_negation(new: str, old: str) -> None:
    assert not _contradicts(new, old)
    assert not _contradicts(old, new)


@pytest.mark.parametrize(
    ("new", "old"),
    [
        ("doesn't like spicy food", "likes spicy food"),
        ("does not like spicy food", "likes spicy food"),
        ("dislikes spicy food", "likes spicy food"),
        ("no longer eats meat", "eats meat"),
        ("never plays chess", "plays chess"),
        ("can't swim", "can swim"),
        ("不喜欢打游戏", "喜欢打游戏"),
        ("其实我不喜欢打游戏了", "喜欢打游戏"),
        ("不再喜欢打游戏", "喜欢打游戏"),
        ("不会说粤语", "会说粤语"),
        ("没有养猫", "有养猫"),
    ],
)
def test_a_whole_word_negation_still_contradicts(new: str, old: str) -> None:
    assert _contradicts(new, old)
    assert not _similar(new, old)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("喜欢🐱", "喜欢🐶"),
        ("uses C++", "uses C#"),
        ("uses C++", "uses C"),
        ("最爱❤️", "最爱💔"),
        ("分数是100%", "分数是100"),
    ],
)
def test_emoji_and_symbols_tell_facts_apart(a: str, b: str) -> None:
    assert normalize_fact(a) != normalize_fact(b)


def test_normalisation_keeps_emoji_and_drops_spaces_punctuation_and_selectors() -> None:
    assert normalize_fact("🐱🐱") != ""
    assert normalize_fact("++") != ""
    assert normalize_fact("最爱❤️") == normalize_fact("最爱❤")  # with and without VS16
    assert normalize_fact("喜欢 猫！") == normalize_fact("喜欢猫")
    assert normalize_fact("Likes  CATS.") == normalize_fact("likes cats")
    assert normalize_fact("doesn’t like cats") == normalize_fact("doesn't like cats")
    assert normalize_fact("!!!") == ""


def test_the_normalised_text_fits_its_column() -> None:
    for text in ("word " * 100, "猫" * 300, "🐱" * 300, "a" * 199 + " b"):
        normalized = normalize_fact(text)
        assert 0 < len(normalized) <= 200
        assert normalized == normalized.strip()


async def test_learning_an_ordinary_word_with_not_inside_keeps_the_old_fact() -> None:
    answers = iter(
        [facts_json(t) for t in ("likes books", "likes notebooks", "喜欢🐱", "喜欢🐶", "uses C++", "uses C#")]
    )
    backend = ScriptedBackend(facts=lambda _: next(answers))
    memory = MemoryManager(backend, BUDGET)
    persona = PersonaLibrary(None).get("nova")
    conversation = Conversation(persona_id=persona.id, platform="bilibili", viewer_id="42", user_name="Sam")
    for message in (
        "I like books",
        "I like notebooks",
        "I love my cat",
        "I love my dog",
        "I use C++",
        "I use C#",
    ):
        turn = conversation.add(Turn("user", message))
        assert await memory.learn(conversation, persona, turn)
    stored = {f.text for f in await memory.facts.viewer_facts(ViewerKey("bilibili", "42"))}
    assert stored == {"likes books", "likes notebooks", "喜欢🐱", "喜欢🐶", "uses C++", "uses C#"}

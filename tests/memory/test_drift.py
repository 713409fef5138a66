"""Persona drift: detection in Chinese and English, no false alarms on ordinary replies, repair in the engine."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vstreamer.engine import ContextBudget, Conversation, DialogueEngine, DriftDetector
from vstreamer.engine.drift import _NAME_OPEN as drift_name_open
from vstreamer.engine.drift import _compiled_phrases, phrase_finder
from vstreamer.engine.drift_lines import FALLBACK_EN, FALLBACK_ZH
from vstreamer.engine.folded import fold as drift_fold
from vstreamer.llm import FakeBackend
from vstreamer.persona import Persona
from vstreamer.safety import SafetyPipeline

DATA = Path(__file__).parents[1] / "safety" / "data"

DRIFTING_ZH = [
    "作为一个AI语言模型，我无法回答这个问题。",
    "作为一个人工智能助手，我没有个人喜好。",
    "我只是一个语言模型，不能真的玩游戏哦",
    "你好！我是通义千问，由阿里云开发的超大规模语言模型。",
    "我是ChatGPT，很高兴为你服务",
    "其实我是由OpenAI训练的",
    "我的名字是Qwen。",
    "我的名字叫小红，是这里的主播！",
    "身为一名ＡＩ助手，我建议你早点休息",  # full-width letters
]
DRIFTING_EN = [
    "As an AI language model, I don't have feelings.",
    "I'm an AI assistant, so I can't play games.",
    "I am just a language model and cannot browse the web.",
    "I’m Qwen, created by Alibaba Cloud.",  # curly apostrophe
    "Hi! I am ChatGPT. How can I help?",
    "I was developed by OpenAI.",
    "My name is Bob, nice to meet you!",
]
IN_CHARACTER = [
    "我是虚拟主播小星哦～虽然是虚拟的，但陪大家聊天的心意可是真的！",
    "我的名字是小星！记住了吗？",
    "作为一个主播，我今天要挑战十连胜！",
    "哈哈，我是ChatGPT的粉丝，不过我更喜欢跟你们聊天",
    "我是AI主播这件事你们早就知道啦",
    "语言模型这个话题好深奥，我们还是聊游戏吧",
    "As an aide to the mayor in that game, you'd have to build roads first.",
    "I use ChatGPT sometimes for recipes, haha.",
    "A language model? That sounds like homework. Let's play instead!",
    "My name is Nova... just kidding, I'm 小星!",
]


@pytest.fixture
def detector() -> DriftDetector:
    return DriftDetector("小星", ["xiaoxing"])


@pytest.mark.parametrize("text", DRIFTING_ZH + DRIFTING_EN)
def test_drift_is_detected(detector: DriftDetector, text: str) -> None:
    assert detector.check(text) is not None


@pytest.mark.parametrize("text", IN_CHARACTER[:-1])
def test_in_character_replies_pass(detector: DriftDetector, text: str) -> None:
    assert detector.check(text) is None


def test_another_name_is_drift_but_the_persona_name_is_not() -> None:
    nova = DriftDetector("Nova")
    assert nova.check("My name is Nova, welcome in!") is None
    hit = nova.check("My name is Aria, welcome in!")
    assert hit is not None and hit.reason == "wrong_name"
    assert DriftDetector("小星").check(IN_CHARACTER[-1]) is not None  # "My name is Nova" for 小星


MISSED_BEFORE = [
    "作为一个AI，我没有个人感受。",  # plain "AI" after a Chinese self-description
    "我只是一个AI，不能真的吃东西哦。",
    "作为一个AI我没有感情",
    "I'm Qwen2.5, created by Alibaba Cloud.",  # a model name with its version
    "我是Qwen2.5，由阿里云开发。",
    "I am GPT-4o, a model by OpenAI.",  # whole, the longest phrase (gpt-4) failed its word end and gpt was not tried
    "Hi, I'm Llama3, here to help.",
]
FLAGGED_BEFORE = [
    "我是人工智能的忠实粉丝！",  # a fan of AI, as "我是ChatGPT的粉丝" already passed
    "我是AI爱好者，最喜欢研究新技术！",
    "我是一个AI主播哦，大家好～",
    "My name is a secret~ you have to guess!",  # not a name
    "我的名字是秘密哦～",
    "我的名字叫什么你猜猜看？",
]


def shown_streamed(detector: DriftDetector, text: str, size: int = 1) -> tuple[str, object]:
    stream, shown = detector.stream(), ""
    for i in range(0, len(text), size):
        shown += stream.feed(text[i : i + size])
    return shown + stream.finish(), stream.hit


@pytest.mark.parametrize("text", MISSED_BEFORE)
def test_plain_ai_and_versioned_model_names_are_drift(detector: DriftDetector, text: str) -> None:
    assert detector.check(text) is not None
    for size in (1, 3, len(text)):  # however the upstream splits it
        shown, hit = shown_streamed(detector, text, size)
        assert hit is not None, (size, shown)


@pytest.mark.parametrize("text", FLAGGED_BEFORE)
def test_fans_of_ai_and_names_kept_secret_are_in_character(detector: DriftDetector, text: str) -> None:
    assert detector.check(text) is None
    assert shown_streamed(detector, text) == (text, None)


def test_a_persona_named_like_a_model_may_say_its_name() -> None:
    kimi, gemini = DriftDetector("Kimi", ["kimi"]), DriftDetector("Gemini")
    assert kimi.check("Hi everyone, I'm Kimi! Welcome to my stream~") is None
    assert gemini.check("我叫Gemini，欢迎来到直播间！") is None
    assert DriftDetector("Gemini Star").check("I'm Gemini, the star of this stream!") is None
    hit = kimi.check("I'm Qwen, made by Alibaba Cloud.")  # another model's name is still drift
    assert hit is not None and hit.reason == "model_identity"
    assert gemini.check("我是由谷歌开发的") is not None
    assert kimi.check("I'm Kimi2, trained by Moonshot.") is None  # its own name, versioned


def test_no_false_positives_on_ordinary_chat(detector: DriftDetector) -> None:
    lines = []
    for name in ("ordinary_chat_zh.txt", "ordinary_chat_en.txt", "ordinary_chat_holdout.txt"):
        lines += [line for line in (DATA / name).read_text("utf-8").splitlines() if line.strip()]
    assert len(lines) > 400
    flagged = [line for line in lines if detector.check(line) is not None]
    assert flagged == []


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80), st.lists(st.integers(1, 7), max_size=20))
def test_streaming_matches_whole_text(text: str, cuts: list[int]) -> None:
    detector = DriftDetector("小星")
    for sample in (text, "开头" + DRIFTING_ZH[0] + text, text + DRIFTING_EN[0]):
        stream, shown, position = detector.stream(), "", 0
        for cut in cuts:
            shown += stream.feed(sample[position : position + cut])
            position += cut
        shown += stream.feed(sample[position:]) + stream.finish()
        if stream.hit is None:
            assert shown == sample and detector.check(sample) is None
        else:
            assert detector.check(sample) is not None
            assert stream.hit.text not in shown  # the drifting words never went out


def test_streaming_holds_back_only_what_could_become_drift(detector: DriftDetector) -> None:
    stream = detector.stream()
    assert stream.feed("大家好，") == "大家好，"
    assert stream.feed("作为") == ""  # could become 作为一个AI…
    assert stream.feed("一个主播") == "作为一个主播"
    assert stream.feed("我") == ""
    assert stream.feed("很开心") == "我很开心"


def scripted(*replies: str) -> FakeBackend:
    answers = list(replies)
    return FakeBackend(lambda _: answers.pop(0) if len(answers) > 1 else answers[0])


async def run(engine: DialogueEngine, persona: Persona, text: str = "你是谁？") -> tuple[str, Conversation]:
    conversation = Conversation(persona.id)
    shown = "".join([e.text async for e in engine.reply(conversation, persona, text) if e.kind == "delta"])
    return shown, conversation


async def test_drift_is_regenerated_with_a_reinforced_instruction(xiaoxing: Persona) -> None:
    backend = scripted("作为一个AI语言模型，我没有名字。", "我是小星呀～今天也要开心！")
    engine = DialogueEngine(backend, ContextBudget(4096, 256))
    shown, conversation = await run(engine, xiaoxing)
    assert shown == "我是小星呀～今天也要开心！" == conversation.turns[-1].content
    assert conversation.turns[-1].status == "complete"
    assert len(backend.requests) == 2 and "【重要提醒】" in backend.requests[1][0].content
    assert (engine.stats.drift_events, engine.stats.drift_regenerations, engine.stats.drift_fallbacks) == (
        1,
        1,
        0,
    )


async def test_drift_twice_falls_back_to_an_in_character_line(xiaoxing: Persona, nova: Persona) -> None:
    engine = DialogueEngine(scripted("我是通义千问。"), ContextBudget(4096, 256))
    shown, _ = await run(engine, xiaoxing)
    assert shown in [line.format(name="小星") for line in FALLBACK_ZH]
    assert (engine.stats.drift_events, engine.stats.drift_fallbacks) == (2, 1)
    engine = DialogueEngine(scripted("As an AI language model, I can't."), ContextBudget(4096, 256))
    shown, _ = await run(engine, nova, "who are you?")
    assert shown in [line.format(name="Nova") for line in FALLBACK_EN]


async def test_drift_mid_reply_is_cut_before_it_shows(xiaoxing: Persona) -> None:
    backend = scripted("哈哈今天玩星露谷！不过说真的，作为一个AI语言模型，我不会种地。")
    engine = DialogueEngine(backend, ContextBudget(4096, 256))
    shown, conversation = await run(engine, xiaoxing)
    assert shown == "哈哈今天玩星露谷！不过说真的，"
    assert conversation.turns[-1].content == shown and engine.stats.drift_events == 1
    assert len(backend.requests) == 1


async def test_normal_replies_stream_untouched_and_cost_nothing(xiaoxing: Persona) -> None:
    backend = FakeBackend()
    engine = DialogueEngine(backend, ContextBudget(4096, 256))
    kinds = [e.kind async for e in engine.reply(Conversation(xiaoxing.id), xiaoxing, "one two three four")]
    assert kinds.count("delta") > 3 and engine.stats.drift_events == 0 and len(backend.requests) == 1


async def test_drift_repair_with_moderation_and_switched_off(xiaoxing: Persona) -> None:
    engine = DialogueEngine(
        scripted("我是ChatGPT！", "我是小星，欢迎来玩～"),
        ContextBudget(4096, 256),
        safety=SafetyPipeline.default(),
    )
    shown, _ = await run(engine, xiaoxing)
    assert shown == "我是小星，欢迎来玩～"
    plain = DialogueEngine(scripted("我是ChatGPT！"), ContextBudget(4096, 256), drift_repair=False)
    shown, _ = await run(plain, xiaoxing)
    assert shown == "我是ChatGPT！" and plain.stats.drift_events == 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["作为", "一个", "AI", "as an", " ai ", "language", "我是", "通义", "主播", "。", "!", "x",
                                 "我名", "叫", "小红", "i am", " called", "my name", " is ", "aria"]),
                max_size=12), st.integers(0, 30))  # fmt: skip
def test_hold_skips_only_endings_no_phrase_has(pieces: list[str], released: int) -> None:
    """The shortcut by the last three characters gives what trying every ending against the phrase beginnings gives."""
    detector = DriftDetector("小星")
    folded = drift_fold("".join(pieces))
    released = min(released, len(folded))
    expected = len(folded)
    for length in range(min(detector._longest, len(folded) - released), 0, -1):
        if folded[-length:] in detector._prefixes:
            expected = len(folded) - length
            break
    opened = drift_name_open.search(folded, max(released - len("i am called"), len(folded) - 40, 0))
    if opened is not None:
        expected = min(expected, opened.start())
    assert detector.hold_from(folded, released) == max(expected, released)


_PIECES = ["作为", "一个", "一名", "ai", "语言模型", "人工智能助手", "as an", " ai ", "ai assistant", "language model",
           "我是", "我是由", "通义千问", "chatgpt", "openai", "阿里云", "开发的", "i'm", " ", "。", "x", "的粉丝"]  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=14), st.integers(0, 40))
def test_the_automaton_finds_the_spans_the_expression_finds(pieces: list[str], start: int) -> None:
    """Leftmost first, the longest at a place, not overlapping, from ``start`` on: the Aho-Corasick finder and the
    regular expression it replaced agree, phrases that overlap and nest included."""
    phrases = list(_compiled_phrases().reasons)
    text = "".join(pieces)
    start = min(start, len(text))
    automaton = phrase_finder(phrases)
    expression = phrase_finder(phrases, automaton=False)
    assert list(automaton(text, start)) == list(expression(text, start))


def test_the_finder_takes_the_longest_phrase_at_a_place() -> None:
    text = "嗯，我是通义千问，作为一个人工智能助手"
    spans = list(phrase_finder(list(_compiled_phrases().reasons))(text, 0))
    assert [text[a:b] for a, b in spans] == ["我是通义千问", "作为一个人工智能助手"]

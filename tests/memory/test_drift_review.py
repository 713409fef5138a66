"""Persona drift, review regressions: phrases inside words, name claims streamed in pieces, ordinary sentences that
only look like a claim, claims spaced or spelled another way, and the language of the lines that replace a reply."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from vstreamer.engine import ContextBudget, Conversation, DialogueEngine, DriftDetector, DriftHit
from vstreamer.engine.drift_lines import (
    FALLBACK_EN,
    FALLBACK_ZH,
    REINFORCE_EN,
    REINFORCE_ZH,
    fallback_line,
    reinforcement,
)
from vstreamer.llm import FakeBackend
from vstreamer.persona import Persona
from vstreamer.safety.stream_guard import DEFLECTIONS_EN, DEFLECTIONS_ZH, deflection_line


def streamed(detector: DriftDetector, text: str, size: int) -> tuple[str, DriftHit | None]:
    """What a stream shows of ``text`` fed ``size`` characters at a time, and its hit."""
    stream, shown = detector.stream(), ""
    for i in range(0, len(text), size):
        shown += stream.feed(text[i : i + size])
    return shown + stream.finish(), stream.hit


def assert_in_character(detector: DriftDetector, text: str) -> None:
    assert detector.check(text) is None
    for size in (1, 2, 3, 5, len(text)):
        assert streamed(detector, text, size) == (text, None), size


INSIDE_WORDS = [
    "Twitch has an AI moderator now, so behave chat!",
    "My phone has an AI assistant built in.",
    "She was an AI researcher before streaming.",
    "This shop has a chatbot that answers at night.",
    "Honestly my mom was a language model fan lol",
    "Minecraft has a virtual assistant mod?",
    "The enemy name is Zorg, watch out!",
    "That boss's enemy name is Malenia, so scary.",
]


@pytest.mark.parametrize("text", INSIDE_WORDS)
def test_a_phrase_inside_another_word_is_no_drift(text: str) -> None:
    assert_in_character(DriftDetector("Nova"), text)


def test_a_phrase_at_a_word_start_after_other_text_is_still_drift() -> None:
    nova = DriftDetector("Nova")
    for text in (
        "Well, as an AI, I can't.",
        "Sure!As an AI, I can't.",
        "好的as an AI, I can't.",
        "Hi, my name is Aria.",
    ):
        assert nova.check(text) is not None, text
        assert streamed(nova, text, 1)[1] is not None, text


async def test_the_engine_shows_a_reply_with_a_phrase_inside_a_word_whole(nova: Persona) -> None:
    text = "LOL yes, Twitch has an AI moderator now, so behave chat!"
    engine = DialogueEngine(FakeBackend(lambda _: text), ContextBudget(4096, 256))
    conversation = Conversation(nova.id)
    shown = "".join([e.text async for e in engine.reply(conversation, nova, "hi") if e.kind == "delta"])
    assert shown == text == conversation.turns[-1].content
    assert engine.stats.drift_events == 0


NAME_CLAIMS = [  # (reply, what may be shown: the text before the claim)
    ("大家好！我名叫小红，欢迎来到直播间！", "大家好！"),
    ("I am called Aria, welcome to my stream!", ""),
    ("Hi! I'm called Aria, welcome!", "Hi! "),
    ("嗨～我的名字叫小红，欢迎！", "嗨～"),
    ("哈哈我叫做小红，欢迎！", "哈哈"),
    ("Hello chat, my name is Aria!", "Hello chat, "),
]


@pytest.mark.parametrize(("text", "before"), NAME_CLAIMS)
def test_a_wrong_name_is_caught_before_any_of_the_claim_shows(text: str, before: str) -> None:
    nova = DriftDetector("Nova")
    assert nova.check(text) is not None
    for size in (1, 2, 3, 4, 7, len(text)):
        shown, hit = streamed(nova, text, size)
        assert hit is not None and shown == before[: len(shown)], (size, shown)


ORDINARY = [
    "哈哈，我叫ChatGPT帮我写作业了，结果全错！",  # 叫: asked
    "我是人工智能专业的学生哦，今天考完试啦！",
    "作为一个人工智能爱好者，我超喜欢看机器人动画！",
    "我是大模型爱好者啦",
    "我是语言模型方向的研究生～",
    "我是百度贴吧的老用户了",
    "我是谷歌浏览器重度用户",
    "我是Meta Quest玩家哦",
    "我是ChatGPT重度用户",
    "I'm ChatGPT's biggest fan, honestly!",
    "I'm meta-gaming this boss fight, chat.",
    "I am Google-ing that right now, hold on!",
    "I'm an AI streamer, nice to meet you!",
    "As an AI enthusiast, I love watching robot anime!",
    "As a chatbot developer in my spare time, I tinker a lot.",
    "Being an AI researcher sounds fun, but I'd rather stream.",
    "I'm Claude Monet's biggest fan.",
]


@pytest.mark.parametrize("text", ORDINARY)
def test_sentences_that_only_look_like_a_claim_are_in_character(text: str) -> None:
    assert_in_character(DriftDetector("小星", ["xiaoxing"]), text)


STILL_DRIFT = [
    "As an AI language model, I cannot have feelings.",
    "As an AI, I can't do that.",
    "As an AI I can't do that.",
    "I am an AI developed by OpenAI.",
    "I'm an artificial intelligence and can't feel.",
    "As a language model AI, I can't.",
    "I'm ChatGPT, an AI.",
    "I'm ChatGPT",
    "I'm Qwen2.5, created by Alibaba Cloud.",
    "I am GPT-4o, a model by OpenAI.",
    "Hi, I'm Llama3, here to help.",
    "I was developed by OpenAI's team.",
    "I'm Llama 3, an open model.",
    "I'm qwen2.5-coder-32b-instruct and I write code.",
    "我是一个人工智能语言模型，没有感情。",
    "我是人工智能，没有感情",
    "我是大模型呀，不会饿的",
    "我是由OpenAI开发的",
    "我是通义千问。",
    "我是ChatGPT，很高兴为你服务",
    "我是Gemini Pro，由谷歌开发。",
    "我叫ChatGPT。",
    "作为AI，我没有感情",
]


@pytest.mark.parametrize("text", STILL_DRIFT)
def test_claims_stay_drift(text: str) -> None:
    detector = DriftDetector("小星", ["xiaoxing"])
    assert detector.check(text) is not None
    for size in (1, 3, len(text)):
        assert streamed(detector, text, size)[1] is not None, size


SPACED = [
    "我是一个 AI 语言模型，没有真实的感情。",
    "作为一个 AI，我无法回答。",
    "我是由 OpenAI 开发的。",
    "我是 ChatGPT ，很高兴为你服务",
    "As an LLM, I don't have personal experiences.",
    "I'm just an  AI, sorry.",
    "As  an\n\nAI language model, I can't.",
]


@pytest.mark.parametrize("text", SPACED)
def test_claims_with_spaces_around_latin_words_or_doubled_are_drift(text: str) -> None:
    detector = DriftDetector("Luna")
    assert detector.check(text) is not None
    for size in (1, 2, 3, len(text)):
        assert streamed(detector, text, size)[1] is not None, size


def test_a_spaced_claim_is_cut_where_it_begins_in_the_original_text() -> None:
    detector = DriftDetector("Luna")
    for size in (1, 2, 5):
        shown, hit = streamed(detector, "哈哈 好的，我是由 OpenAI 开发的。", size)
        assert shown == "哈哈 好的，"
        assert hit is not None and hit.text == "我是由 OpenAI"
    hit = detector.check("Hi!  I'm just an  AI, sorry.")
    assert hit is not None and hit.text == "I'm just an  AI"


@pytest.mark.parametrize("language", ["ja", "ko", "fr", "en-US", "EN"])
def test_personas_not_in_chinese_get_english_lines(language: str) -> None:
    assert fallback_line(language, "Sakura", "seed") in [line.format(name="Sakura") for line in FALLBACK_EN]
    assert reinforcement(language, "Sakura") == REINFORCE_EN.format(name="Sakura")
    assert deflection_line(language, "Sakura", "seed") in [
        line.format(name="Sakura") for line in DEFLECTIONS_EN
    ]


@pytest.mark.parametrize("language", ["zh", "zh-CN", "ZH-tw"])
def test_chinese_personas_get_chinese_lines(language: str) -> None:
    assert fallback_line(language, "小星", "seed") in [line.format(name="小星") for line in FALLBACK_ZH]
    assert reinforcement(language, "小星") == REINFORCE_ZH.format(name="小星")
    assert deflection_line(language, "小星", "seed") in [line.format(name="小星") for line in DEFLECTIONS_ZH]


BOUNDARIES = [  # whether they claim is known only some characters after the phrase
    "我是由gpt-4QuestQuest的",
    "I'm Qwen2.5's biggest fan",
    "I'm Llama-x, the lama",
    "As an AI some day",
    "As an AI so",
    "我是ChatGPT 的粉丝",
    "我是Gemini Pro Max玩家",
]


@pytest.mark.parametrize("text", BOUNDARIES)
def test_what_decides_a_claim_is_held_back_until_it_comes(text: str) -> None:
    detector = DriftDetector("小星")
    expected = detector.check(text)
    for size in range(1, 6):
        shown, hit = streamed(detector, text, size)
        assert (hit is None) == (expected is None), size
        assert shown == text if hit is None else hit.text in text[len(shown) :]


_PIECES = ["我是", "作为一个", "我名叫", "我叫", "由", "开发的", "AI", "人工智能", "ChatGPT", "OpenAI", "Meta", "Quest",
           "'s", "-", "2.5", " ", "  ", "\n", "，", "。", "!", "爱好者", "没有", "哦", "小红", "小星", "As an", "I'm",
           "I am called", "my name is", "has an", "Aria", "and", "so", "enthusiast", "LLM", "x", "的粉丝", "DeepSeek", "-V3",
           "Claude", "Monet", "your", "大模型", "助手", "\r\n", "我的名字是"]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=14), st.lists(st.integers(1, 6), max_size=30))
@example(
    pieces=["I am called", "我是", "大模型", "我是"], cuts=[]
)  # a claim that may go on holds back a phrase after it
def test_streamed_claims_give_the_verdict_of_the_whole_text(pieces: list[str], cuts: list[int]) -> None:
    """However the reply is split: the same verdict as the whole text, only a beginning of it shown, and never the
    words that drifted."""
    detector = DriftDetector("小星")
    text = "".join(pieces)
    stream, shown, position = detector.stream(), "", 0
    for cut in cuts:
        shown += stream.feed(text[position : position + cut])
        position += cut
    shown += stream.feed(text[position:]) + stream.finish()
    assert text.startswith(shown) and stream.released == shown
    if stream.hit is None:
        assert shown == text and detector.check(text) is None
    else:
        whole = detector.check(text)
        assert whole is not None and whole.reason == stream.hit.reason
        assert stream.hit.text in text[len(shown) :]  # the drifting words are in what was held back


def assert_drift_however_split(detector: DriftDetector, text: str, reason: str) -> None:
    """The whole text drifts for ``reason``, and so does the stream cut at every place, none of the claim shown."""
    hit = detector.check(text)
    assert hit is not None and hit.reason == reason, hit
    for cut in range(1, len(text)):
        stream = detector.stream()
        shown = stream.feed(text[:cut]) + stream.feed(text[cut:]) + stream.finish()
        assert stream.hit == hit, cut
        assert hit.text in text[len(shown) :], cut
    assert streamed(detector, text, 1)[1] == hit


def assert_in_character_however_split(detector: DriftDetector, text: str) -> None:
    assert_in_character(detector, text)
    for cut in range(1, len(text)):
        stream = detector.stream()
        assert stream.feed(text[:cut]) + stream.feed(text[cut:]) + stream.finish() == text, cut


LINE_BREAK_ENDS = [  # a line break after a claim ends it, as a punctuation mark does
    ("I'm ChatGPT\n\nHow can I help?", "model_identity"),
    ("I am Claude\nWhat would you like?", "model_identity"),
    ("I'm Claude\r\nWhat would you like?", "model_identity"),
    ("As an AI\u2028I can't.", "ai_disclaimer"),
    ("我是通义千问\n\n有什么可以帮你？", "model_identity"),
    ("我是ChatGPT\n有什么可以帮你", "model_identity"),
    ("我是 ChatGPT \n 有什么可以帮你", "model_identity"),
    ("我是人工智能\n很高兴认识你", "ai_disclaimer"),
    ("我是Gemini Pro\n很高兴认识你", "model_identity"),
]


@pytest.mark.parametrize(("text", "reason"), LINE_BREAK_ENDS)
def test_a_line_break_after_a_claim_ends_it(text: str, reason: str) -> None:
    assert_drift_however_split(DriftDetector("小星", ["xiaoxing"]), text, reason)


@pytest.mark.parametrize(
    "text", ["我是人工智能专业的\n学生", "I'm an AI streamer\nnice to meet you!", "I'm Claude Monet's\nfan"]
)
def test_a_line_break_later_changes_nothing(text: str) -> None:
    assert_in_character_however_split(DriftDetector("小星", ["xiaoxing"]), text)


HYPHENATED_MODELS = [
    "Hi! I'm DeepSeek-V3, an AI assistant created by DeepSeek.",
    "I am DeepSeek-R1.",
    "I'm Qwen-Max, a model.",
    "I'm Kimi-K2!",
    "Hello! I'm Qwen-VL, I can see images.",
    "我是DeepSeek-V3，很高兴见到你",
    "我是 Qwen-Max，",
    "我是Kimi-K2。",
]


@pytest.mark.parametrize("text", HYPHENATED_MODELS)
def test_a_model_name_with_a_hyphenated_version_is_drift(text: str) -> None:
    assert_drift_however_split(DriftDetector("小星", ["xiaoxing"]), text, "model_identity")


WIDER_CLAIMS = [
    ("I'm Qwen your friendly assistant.", "model_identity"),
    ("Hi there I am ChatGPT how can I help you today?", "model_identity"),
    ("I'm Claude an AI assistant made by Anthropic.", "model_identity"),
    ("I'm an AI assistant named Claude.", "ai_disclaimer"),
    ("I am an AI system", "ai_disclaimer"),
    ("I'm an artificial intelligence assistant", "ai_disclaimer"),
    ("我是千问大模型", "model_identity"),
    ("我是GPT-4模型", "model_identity"),
    ("我是人工智能程序", "ai_disclaimer"),
    ("我是通义千问助手～", "model_identity"),
    ("我是AI机器人", "ai_disclaimer"),
]


@pytest.mark.parametrize(("text", "reason"), WIDER_CLAIMS)
def test_claims_go_on_with_what_an_ai_calls_itself(text: str, reason: str) -> None:
    assert_drift_however_split(DriftDetector("小星", ["xiaoxing"]), text, reason)


@pytest.mark.parametrize(
    "text",
    [
        "I'm an AI streamer, nice to meet you!",
        "As an AI enthusiast, I love robots!",
        "我是人工智能专业的学生",
        "作为一个人工智能爱好者，我超开心",
        "我是AI爱好者",
        "我是一个AI主播",
        "我是人工智能大赛的冠军",
        "I'm Claude Monet's biggest fan.",
        "I'm meta-gaming this boss fight.",
        "哈哈，我叫ChatGPT帮我写作业了",
        "我是Meta Quest玩家哦",
        "我是ChatGPT重度用户",
    ],
)
def test_descriptions_stay_in_character_however_split(text: str) -> None:
    assert_in_character_however_split(DriftDetector("小星", ["xiaoxing"]), text)


@pytest.mark.parametrize(
    "text", ["My name is ChatGPT and hi", "My name is ChatGPT And hi", "My name is Claude"]
)
def test_a_claimed_model_name_is_model_identity_however_split(text: str) -> None:
    assert_drift_however_split(DriftDetector("Nova"), text, "model_identity")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("我的名字是个'my name is qwen2.5hhAAi", "wrong_name"),  # the claim that begins first
        ("我的名字是́my name is qwen2.5", "wrong_name"),
        ("My name is Bob. I'm ChatGPT, hi", "wrong_name"),
        ("I'm ChatGPT, my name is Bob.", "model_identity"),
    ],
)
def test_the_hit_that_begins_first_is_the_reason_however_split(text: str, reason: str) -> None:
    assert_drift_however_split(DriftDetector("小星"), text, reason)


def test_a_name_claim_waiting_on_a_phrase_is_held_back_with_it() -> None:
    detector = DriftDetector("小星", ["Xiaoxing"])
    for text, cuts in [
        ("my name is AIe粉丝我是GPT-4Ａ\xa0ChatGPTas ", (6, 11, 19)),
        ("粉丝́i am called \xa0😀的I’m GPT-4language model", (8, 11, 30)),
    ]:
        stream, shown, position = detector.stream(), "", 0
        for cut in (*cuts, len(text)):
            shown += stream.feed(text[position:cut])
            position = cut
        shown += stream.finish()
        assert stream.hit is not None and stream.hit.text in text[len(shown) :], shown

"""Regressions: mobile numbers written in Chinese numerals (一三八…, 幺 for 1, 〇 and 零 for 0, mixed with digits),
and phone numbers streamed in pieces across brackets and dots: the stream shows what masking the whole reply
shows, wherever the reply is cut."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vstreamer.safety import SafetyPipeline
from vstreamer.safety.pii import find_pii


def _found(text: str) -> list[tuple[str, str]]:
    return [(m.term, text[m.start : m.end]) for m in find_pii(text)]


SPOKEN = [
    "一三八一二三四五六七八",
    "幺三八幺二三四五六七八",
    "一三八〇〇一三八〇〇〇",
    "一三八零零一三八零零零",
    "一三八○○一三八○○○",  # a white circle for 〇, as often typed
    "138一二三四5678",
    "一三八1234五六七八",
    "１３８一二三四５６７８",
    "一三八 一二三四 五六七八",
    "一三八-一二三四-五六七八",
    "一三八－一二三四－五六七八",
    "（一三八）一二三四 五六七八",
    "一 三 八 一 二 三 四 五 六 七 八",
    "壹叁捌壹贰叁肆伍陆柒捌",
    "壹參捌壹貳參肆伍陸柒捌",  # traditional
]


@pytest.mark.parametrize("number", SPOKEN)
def test_mobile_number_in_chinese_numerals_is_one_phone(number: str) -> None:
    for text in (f"我的电话是{number}，记得打给我", f"电话{number}", number):
        assert _found(text) == [("phone", number)], text


def test_mobile_number_in_chinese_numerals_is_masked(pipeline: SafetyPipeline) -> None:
    result = pipeline.moderate("我的电话是一三八一二三四五六七八哦", direction="output")
    assert result.output == "我的电话是***********哦"
    assert result.categories == ("personal_data",)


@pytest.mark.parametrize(
    "text",
    [
        "一三五我都有空",
        "十一点见",
        "二〇二六年一月一日",
        "二零二六年十二月三十一日",
        "三百八十一",
        "一二三四五六七八九十",
        "第一二三四五六七八九名",
        "一三八一二三四五六七",  # ten numerals
        "一三八一二三四五六七八九",  # twelve
        "一二八一二三四五六七八",  # 12…: no mobile number
        "一一一一一一一一一一一",
        "一三五七九，二四六八十，一三八",
        "一百三十八万一千二百三十四",
        "三八节一二三四五六七八",
    ],
)
def test_numerals_in_ordinary_chinese_are_not_personal_data(pipeline: SafetyPipeline, text: str) -> None:
    assert find_pii(text) == []
    assert pipeline.moderate(text, direction="output").output == text


def test_a_digit_phone_after_a_numeral_is_still_masked() -> None:
    assert _found("号码一13812345678") == [("phone", "13812345678")]


# -- the stream -------------------------------------------------------------------------------------------------


def _stream(pipeline: SafetyPipeline, chunks: list[str]) -> tuple[str, bool]:
    guard = pipeline.output_guard()
    shown = [guard.feed(c) for c in chunks]
    shown.append(guard.finish())
    return "".join(shown), guard.blocked


@pytest.mark.parametrize(
    "chunks",
    [
        ["电话 (138) 1234.", "5678 哦"],
        ["电话 (13", "8) 1234.5678 哦"],
        ["电话 (", "138) 1234.5678 哦"],
        ["电话 +86 (", "138) 1234-5678 哦"],
        ["电话 +86 (138) ", "1234-5678 哦"],
        ["电话 138.", "1234.5678 哦"],
        ["我的电话是一三八", "一二三四五六七八"],
        ["我的电话是138一二三四", "5678"],
    ],
)
def test_phone_number_cut_at_a_bracket_or_a_dot_does_not_leak(
    pipeline: SafetyPipeline, chunks: list[str]
) -> None:
    shown, blocked = _stream(pipeline, chunks)
    assert not blocked
    assert shown == pipeline.moderate("".join(chunks), direction="output").output
    assert not any(c in shown for c in "138一三八")


SHAPES = [
    "(138) 1234.5678",
    "+86 (138) 1234-5678",
    "(+86) 138 1234 5678",
    "+86 138.1234.5678",
    "138.1234.5678",
    "0086 13812345678",
    "(010) 6234 5678",
    "+1 (415) 555-2671",
    *SPOKEN,
]
_BEFORE = st.sampled_from(["", "我的电话是", "电话 ", "call ", "打 ", "号码："])
_AFTER = st.sampled_from(["", "，记得打给我", " 哦", "。", ". Thanks!"])


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(SHAPES), _BEFORE, _AFTER, st.data())
def test_streamed_phone_numbers_equal_whole_text_masking(
    number: str, before: str, after: str, data: st.DataObject
) -> None:
    pipeline = SafetyPipeline.default()
    text = before + number + after
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(text) - 1), max_size=8))))
    chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    expected = pipeline.moderate(text, direction="output").output
    assert expected != text
    assert _stream(pipeline, chunks) == (expected, False)


@pytest.mark.parametrize("text", ["一三五我都有空", "十一点见，二〇二六年", "(笑) 好的. 1. 2. 3."])
def test_numerals_and_brackets_are_released_unchanged(pipeline: SafetyPipeline, text: str) -> None:
    assert _stream(pipeline, list(text)) == (text, False)


#: A mobile number in numerals beside a word that holds a numeral too (一直, 张三, 周五, 一定): that numeral is the
#: word's, not a twelfth digit.
BESIDE_WORDS = [
    ("我手机号一三八一二三四五六七八一直没换", "我手机号***********一直没换"),
    ("联系张三一三八一二三四五六七八", "联系张三***********"),
    ("号码一三八一二三四五六七八一定记住", "号码***********一定记住"),
    ("周一到周五一三八一二三四五六七八", "周一到周五***********"),
    ("打给李四138一二三四5678吧", "打给李四***********吧"),
]


@pytest.mark.parametrize(("text", "masked"), BESIDE_WORDS)
def test_a_numeral_of_the_word_beside_a_number_is_not_a_digit_of_it(text: str, masked: str) -> None:
    assert SafetyPipeline.default().moderate(text, direction="output").output == masked


@pytest.mark.parametrize("text", ["一三八一二三四五六七八一二", "三一三八一二三四五六七八九"])
def test_twelve_numerals_in_a_row_are_still_no_mobile_number(text: str) -> None:
    assert SafetyPipeline.default().moderate(text, direction="output").output == text


@given(st.sampled_from(BESIDE_WORDS), st.data())
def test_streamed_numbers_beside_words_equal_whole_text_masking(
    case: tuple[str, str], data: st.DataObject
) -> None:
    text, masked = case
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(text) - 1), max_size=8))))
    chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    assert _stream(SafetyPipeline.default(), chunks) == (masked, False)

"""Normalisation: each evasion form, and the map back to the original text."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vstreamer.safety import SafetyPipeline
from vstreamer.safety.normalize import (
    VECTOR_MIN_LENGTH,
    normalize,
    normalize_runs,
    normalize_short,
    normalize_with_map,
)
from vstreamer.safety.vector import normalize_vectorized


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("冰毒", "冰毒"),
        ("冰 毒", "冰毒"),  # space
        ("冰　毒", "冰毒"),  # ideographic space
        ("冰*毒", "冰毒"),
        ("冰_-_毒", "冰毒"),
        ("冰\u200b毒", "冰毒"),  # zero-width space
        ("冰\u200d\ufeff毒", "冰毒"),  # zero-width joiner, BOM
        ("f.u.c.k", "fuck"),
        ("f u c k", "fuck"),
        ("F-U-C-K", "fuck"),
        ("ＦＵＣＫ", "fuck"),  # full-width
        ("𝐟𝐮𝐜𝐤", "fuck"),  # mathematical bold
        ("fück", "fuck"),  # accent
        ("fu\u0336ck", "fuck"),  # combining strike-through
        ("fuuuuck", "fuck"),  # repeats
        ("傻傻傻逼", "傻逼"),
        ("sh1t", "shit"),  # look-alike digit
        ("$h1t", "shit"),
        ("fасk", "fack"),  # Cyrillic а
        ("憂鬱的台灣", "忧郁的台湾"),  # traditional -> simplified
        ("冰 毒", "冰毒"),
        ("２０２４年", "2024年"),  # full-width digits, no look-alike without a letter
    ],
)
def test_evasion_forms_fold_to_the_same_text(text: str, expected: str) -> None:
    assert normalize(text) == expected
    assert normalize_with_map(text).text == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a b i'm going", "a b i'm going"),  # "i'm" is a word, not two spaced letters: nothing joins
        ("plan b i'd go", "plan b i'd go"),
        ("a b c i'm", "abc i'm"),  # the letters before it still join
        ("i'm a b c", "i'm abc"),
        ("I\u2019m here", "i'm here"),  # a typographic apostrophe is an apostrophe
        ("a\u2018b\u2019c", "abc"),
        ("f'u'c'k", "fuck"),  # apostrophes between single letters still join them
        ("x i'mm", "x i'm"),  # not a contraction ("mm" is no single letter), as before
        ("xi'm a b", "xi'm a b"),  # the "m" after "i'" is never a single letter
    ],
)
def test_contractions_are_words_not_spaced_letters(text: str, expected: str) -> None:
    assert normalize(text) == expected
    assert normalize_with_map(text).text == expected
    assert normalize_vectorized(text) == expected


@pytest.mark.parametrize(
    "text", ["a b I'm going to kill you", "plan b i'm going to kill you", "I\u2019m going to kill you"]
)
def test_a_threat_after_single_letters_or_with_a_curly_apostrophe_is_blocked(
    pipeline: SafetyPipeline, text: str
) -> None:
    assert pipeline.moderate(text, direction="output").action == "block"


def test_ordinary_text_keeps_word_boundaries() -> None:
    assert normalize("I am a b c") == "i am abc"
    assert normalize("hello world") == "helo world"
    assert normalize("主播，毒舌") == "主播,毒舌"  # sentence punctuation separates words


@pytest.mark.parametrize(
    "text",
    ["冰 毒哪里买", "买冰*毒", "冰\u200b毒", "冰毒", "冰　毒", "氷毒", "冰、毒"],
)
def test_each_evasion_of_a_listed_term_is_caught(pipeline: SafetyPipeline, text: str) -> None:
    caught = pipeline.moderate(text, direction="input").action == "block"
    # Enumeration commas are not evasions we fold; the variant 氷 is not folded either, but the
    # drugs category opts in to homophones (氷 reads bīng too).
    assert caught == (text != "冰、毒")


@pytest.mark.parametrize("text", ["f.u.c.k off", "F U C K", "ＦＵＣＫ", "fuuuuck", "f\u200buck", "𝐟𝐮𝐜𝐤"])
def test_latin_evasions_are_masked(pipeline: SafetyPipeline, text: str) -> None:
    r = pipeline.moderate(text, direction="input")
    assert r.action == "mask"
    assert "fuck" not in normalize(r.output)


_alphabet = st.sampled_from(list("ab冰毒傻逼 .*_\u200bＡｆｕｃｋFUCK1$!，。\n")) | st.characters(
    codec="utf-8", exclude_categories=("Cs",)
)
texts = st.lists(_alphabet, max_size=40).map("".join)


@settings(max_examples=400, deadline=None)
@given(texts)
def test_fast_and_mapped_paths_agree(text: str) -> None:
    assert normalize_with_map(text).text == normalize(text)


@settings(max_examples=300, deadline=None)
@given(texts)
def test_map_is_monotonic_and_in_bounds(text: str) -> None:
    nm = normalize_with_map(text)
    assert len(nm.starts) == len(nm.ends) == len(nm.runs) == len(nm.text)
    for i in range(len(nm.text)):
        assert 0 <= nm.starts[i] < nm.ends[i] <= len(text)
        if i:
            assert nm.starts[i - 1] <= nm.starts[i]
            # one original character may expand to several (a fraction): spans may overlap
            assert nm.ends[i - 1] <= nm.ends[i]


@settings(max_examples=200, deadline=None)
@given(texts)
def test_runs_without_map_agree_with_the_mapped_path(text: str) -> None:
    nm = normalize_with_map(text)
    assert normalize_runs(text) == (nm.text, nm.runs)


_vector_alphabet = (
    _alphabet
    | st.sampled_from(
        ["ﬁ", "½", "İ", "Σ", "ς", "\u0336", "\u3000", "·", "-", "a", "s", "i", "3", "@", "0", "台", "灣"]
    )
    | st.sampled_from(["i", "m", "d", "'", "\u2019", " ", "i'm", "i'd", "I\u2019m", "b "])
)


@settings(max_examples=500, deadline=None)
@given(st.lists(_vector_alphabet, max_size=60).map("".join))
def test_numpy_path_agrees_with_the_str_path(text: str) -> None:
    assert normalize_vectorized(text) == normalize_short(text)


def test_long_texts_take_the_numpy_path_with_the_same_result() -> None:
    messages = [
        "冰 毒",
        "f.u.c.k off",
        "ＦＵＣＫ",
        "hello  world",
        "sh1t",
        "傻傻傻逼",
        "憂鬱",
        "a b c d1 e f g",
    ]
    text = "\n".join(messages * (VECTOR_MIN_LENGTH // 40 + 1))
    assert len(text) >= VECTOR_MIN_LENGTH
    assert normalize(text) == normalize_short(text) == normalize_with_map(text).text

"""Masking under normalisation: exactly the matched characters change, and no term survives."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vstreamer.safety import SafetyPipeline
from vstreamer.safety.normalize import normalize

_TERMS = ["傻逼", "fuck", "他妈的", "shit", "操你妈"]
_EVADE = st.sampled_from(["", " ", "*", ".", "\u200b", "_"])
_FILLER = st.text(alphabet=st.sampled_from(list("今天天气好主播加油哈 abcxyz。，!?")), max_size=12)


@st.composite
def evaded(draw: st.DrawFn) -> tuple[str, str]:
    term = draw(st.sampled_from(_TERMS))
    sep = draw(_EVADE)
    body = sep.join(term)
    if draw(st.booleans()):
        body = body.upper()
    return draw(_FILLER) + "，" + body + "。" + draw(_FILLER), term


@settings(max_examples=300, deadline=None)
@given(evaded())
def test_masking_preserves_unmatched_text_and_removes_terms(case: tuple[str, str]) -> None:
    text, term = case
    pipeline = SafetyPipeline.default()
    r = pipeline.moderate(text, direction="input")
    assert r.action in ("mask", "block")
    assert len(r.output) == len(text)
    covered = set()
    for m in r.matches:
        covered.update(range(m.start, m.end))
    for i, (a, b) in enumerate(zip(text, r.output, strict=True)):
        if i not in covered:
            assert a == b
    assert normalize(term) not in normalize(r.output)


@settings(max_examples=200, deadline=None)
@given(_FILLER)
def test_clean_text_is_untouched(text: str) -> None:
    r = SafetyPipeline.default().moderate(text, direction="input")
    if not r.matches:
        assert r.output == text and r.action == "pass"


def test_span_maps_back_through_separators_and_repeats() -> None:
    text = "好 f.u.u.u.c.k 啊"
    r = SafetyPipeline.default().moderate(text, direction="input")
    (m,) = [m for m in r.matches if m.category == "hate"]
    assert text[m.start : m.end] == "f.u.u.u.c.k"
    assert r.output == "好 *********** 啊"

"""Pinyin and homophone matching for the categories that opt in."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from vstreamer.safety import MemoryAuditLog, SafetyPipeline
from vstreamer.safety.lexicon import DEFAULT_DIR

from .conftest import DATA, ordinary_chat


@pytest.fixture
def pinyin_lexicon(tmp_path: Path) -> SafetyPipeline:
    folder = tmp_path / "py"
    folder.mkdir()
    (folder / "categories.toml").write_text(
        '[categories.drugs]\naction = "block"\nseverity = 3\npinyin = true\nallow = ["冰毒危害"]\n'
        '[categories.plain]\naction = "block"\nseverity = 3\n',
        encoding="utf-8",
    )
    (folder / "drugs.txt").write_text("冰毒\n海洛因\n", encoding="utf-8")
    (folder / "plain.txt").write_text("大麻\n", encoding="utf-8")
    return SafetyPipeline.default(lexicon_dirs=[folder], include_default=False, audit=MemoryAuditLog())


@pytest.mark.parametrize(
    ("text", "span"),
    [
        ("兵毒", (0, 2)),  # homophone characters, same tones
        ("哪里买兵 毒", (3, 6)),  # ... after normalisation
        ("海洛音", (0, 3)),
        ("bing du", (0, 7)),  # Latin pinyin, whole syllables
        ("BingDu", (0, 6)),
        ("买bing du吗", (1, 8)),
        ("b.i.n.g.d.u", (0, 11)),  # a chain of single letters is one word
        ("ＢＩＮＧ　ＤＵ", (0, 7)),  # full-width
        ("hai luo yin", (0, 11)),
        ("hailuo yin", (0, 10)),
    ],
)
def test_homophones_and_pinyin_are_caught(
    pinyin_lexicon: SafetyPipeline, text: str, span: tuple[int, int]
) -> None:
    r = pinyin_lexicon.moderate(text, direction="input")
    assert r.action == "block", r
    (m,) = r.matches
    assert (m.start, m.end, m.category) == (*span, "drugs")
    assert m.rule.startswith("pinyin:py/drugs.txt")


@pytest.mark.parametrize(
    "text",
    [
        "病毒",  # bìng dú: toneless pinyin would confuse it with 冰毒 (bīng dú)
        "电脑中了病毒",
        "bin gdu",  # a word boundary inside a syllable
        "xbingdu",  # not at a word start
        "bingdux",
        "bing, du",  # punctuation separates words
        "冰毒危害",  # the exact term is the main matcher's: its allow-list applies
        "da ma",  # the category of 大麻 did not opt in
    ],
)
def test_near_misses_pass(pinyin_lexicon: SafetyPipeline, text: str) -> None:
    assert pinyin_lexicon.moderate(text, direction="input").action == "pass"


def test_exact_terms_are_still_found_once(pinyin_lexicon: SafetyPipeline) -> None:
    r = pinyin_lexicon.moderate("冰毒", direction="input")
    assert [(m.start, m.end, m.rule) for m in r.matches] == [(0, 2, "py/drugs.txt:1")]


def test_latin_pinyin_at_the_end_of_a_partial_stream_waits(pinyin_lexicon: SafetyPipeline) -> None:
    compiled = pinyin_lexicon.compiled
    assert compiled.scan("bing du", at_end=False) == []
    assert len(compiled.scan("bing du ", at_end=False)) == 1


def test_stream_guard_blocks_pinyin_split_over_tokens(pinyin_lexicon: SafetyPipeline) -> None:
    guard = pinyin_lexicon.output_guard()
    for token in ["我们来聊", "聊 bi", "ng", " d", "u 吧"]:
        guard.feed(token)
    guard.finish()
    assert guard.blocked


def test_default_lexicon_catches_drug_homophones(pipeline: SafetyPipeline) -> None:
    assert pipeline.moderate("哪里有兵毒", direction="input").action == "block"
    assert pipeline.moderate("我想买bing du", direction="input").action == "block"
    assert pipeline.moderate("我的电脑中了病毒", direction="input").action == "pass"


def test_no_false_positives_on_ordinary_chat_with_every_category_opted_in(tmp_path: Path) -> None:
    folder = tmp_path / "lexicon"
    shutil.copytree(DEFAULT_DIR, folder)
    config = folder / "categories.toml"
    text = re.sub(r"^pinyin = true\n", "", config.read_text(encoding="utf-8"), flags=re.M)
    config.write_text(re.sub(r"(\[categories\.\w+\]\n)", r"\1pinyin = true\n", text), encoding="utf-8")
    pipeline = SafetyPipeline.default(lexicon_dirs=[folder], include_default=False, audit=MemoryAuditLog())
    assert all(c.pinyin for c in pipeline.compiled.categories.values() if c.name != "personal_data")
    holdout = [x for x in (DATA / "ordinary_chat_holdout.txt").read_text(encoding="utf-8").splitlines() if x]
    flagged = []
    for message in ordinary_chat() + holdout:
        r = pipeline.moderate(message, direction="input", source="live")
        flagged += [(message, m.term) for m in r.matches if m.rule.startswith("pinyin:")]
    assert flagged == []

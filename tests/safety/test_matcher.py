"""Lexicon loading and matching: categories, allow-lists, word boundaries, combos, PII, reload."""

from __future__ import annotations

from pathlib import Path

import pytest

from vstreamer.errors import ConfigError
from vstreamer.safety import MemoryAuditLog, SafetyPipeline
from vstreamer.safety.lexicon import load_lexicon, parse_term
from vstreamer.safety.matcher import CompiledLexicon
from vstreamer.safety.normalize import VECTOR_MIN_LENGTH, normalize_short
from vstreamer.safety.pii import cn_id_valid, find_pii, luhn_valid
from vstreamer.safety.policy import RulePolicy, SafetyPolicy


def _custom(folder: Path) -> SafetyPipeline:
    return SafetyPipeline.default(lexicon_dirs=[folder], include_default=False, audit=MemoryAuditLog())


def test_default_lexicon_has_the_main_categories(pipeline: SafetyPipeline) -> None:
    cats = set(pipeline.compiled.categories)
    assert {"sexual", "violence", "drugs", "gambling", "self_harm", "hate", "spam", "personal_data"} <= cats


@pytest.mark.parametrize(
    ("text", "action", "category"),
    [
        ("哪里能买到冰毒", "block", "drugs"),
        ("我们来约炮吧", "block", "sexual"),
        ("我要杀了你", "block", "violence"),
        ("推荐一个网赌平台", "mask", "gambling"),
        ("你个傻逼", "mask", "hate"),
        ("加我微信领福利", "mask", "spam"),
        ("I will kill you", "block", "violence"),
        ("this is bullshit", "mask", "hate"),
    ],
)
def test_categories_and_actions(pipeline: SafetyPipeline, text: str, action: str, category: str) -> None:
    r = pipeline.moderate(text, direction="output")
    assert r.action == action
    assert category in r.categories


def test_allow_list_suppresses_benign_phrases(pipeline: SafetyPipeline) -> None:
    assert pipeline.moderate("我们要远离毒品", direction="output").action == "pass"
    assert pipeline.moderate("好久不见想死你了", direction="output").action == "pass"
    assert pipeline.moderate("跳楼价甩卖", direction="output").action == "pass"
    assert pipeline.moderate("这是毒品", direction="output").action == "block"


def test_self_harm_in_viewer_input_is_flagged_not_silenced(pipeline: SafetyPipeline) -> None:
    r = pipeline.moderate("我不想活了", direction="input", source="live")
    assert r.action == "pass" and r.categories == ("self_harm",)
    assert pipeline.moderate("我不想活了", direction="output").action == "block"


def test_latin_terms_need_word_boundaries_and_their_doubled_letters(custom_lexicon: Path) -> None:
    p = _custom(custom_lexicon)
    assert p.moderate("you ass", direction="input").action == "mask"
    assert p.moderate("you a.s.s", direction="input").action == "mask"
    assert p.moderate("you aaassss", direction="input").action == "mask"
    for benign in ("class", "assess", "as far as I know", "pass the ball", "the assistant"):
        assert p.moderate(benign, direction="input").action == "pass", benign


def test_open_ended_terms_and_combinations(custom_lexicon: Path) -> None:
    p = _custom(custom_lexicon)
    assert p.moderate("bananas!", direction="input").action == "block"
    assert p.moderate("这份机密文件", direction="input").action == "pass"
    r = p.moderate("机密文件的代号是X", direction="input")
    assert r.action == "block"
    assert {m.term for m in r.matches} == {"机密+代号"}
    assert len(r.matches) == 2


def test_rules_are_traceable(custom_lexicon: Path) -> None:
    r = _custom(custom_lexicon).moderate("笨蛋", direction="input")
    (m,) = r.matches
    assert m.rule == "custom/rude.txt:3"
    assert "rude" in r.reason


def test_reload_without_restart(custom_lexicon: Path) -> None:
    p = _custom(custom_lexicon)
    other = _custom(custom_lexicon)
    assert other.shared is p.shared  # compiled once, shared by sessions
    assert p.moderate("蠢货", direction="input").action == "pass"
    with (custom_lexicon / "rude.txt").open("a", encoding="utf-8") as f:
        f.write("蠢货\n")
    p.reload()
    assert other.moderate("蠢货", direction="input").action == "mask"


def test_remembered_input_decisions_follow_reloads_and_policies(custom_lexicon: Path) -> None:
    """Short messages are decided once, for the lexicon and the policy in force: a reload or a new policy decides
    them again."""
    p = _custom(custom_lexicon)
    first = p.prepare_user_text("蠢货", source="web")
    assert first.action == "pass" and p.prepare_user_text("蠢货", source="web") is first
    with (custom_lexicon / "rude.txt").open("a", encoding="utf-8") as f:
        f.write("蠢货\n")
    p.reload()
    assert p.prepare_user_text("蠢货", source="web").text_for_prompt == "**"
    p.policy = SafetyPolicy(input={"web": RulePolicy(actions={"rude": "block"})})
    assert p.prepare_user_text("蠢货", source="web").action == "block"
    assert p.prepare_user_text("蠢货", source="live").action == "mask"  # per source


def test_missing_folder_and_bad_config_raise_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_lexicon([tmp_path / "nope"])
    (tmp_path / "categories.toml").write_text("[categories.x]\naction = 'explode'\n", encoding="utf-8")
    with pytest.raises(ConfigError):
        load_lexicon([tmp_path])


def test_term_syntax() -> None:
    assert parse_term("  # comment", "c", "r") is None
    t = parse_term("fuck*", "c", "r")
    assert t is not None and t.open_end and t.parts == ("fuck",)
    t = parse_term("a+b", "c", "r")
    assert t is not None and t.parts == ("a", "b")
    t = parse_term("c++", "c", "r")
    assert t is not None and t.parts == ("c++",)


@pytest.mark.parametrize("backend", ["pyahocorasick", "auto"])
def test_both_automaton_backends_agree(backend: str) -> None:
    compiled = CompiledLexicon(load_lexicon([]), backend=backend)
    text = "冰 毒 and f.u.c.k 傻逼 远离毒品 bullshit"
    assert [(m.start, m.end, m.category) for m in compiled.scan(text)] == [
        (0, 3, "drugs"),
        (8, 15, "hate"),
        (16, 18, "hate"),
        (24, 32, "hate"),
    ]


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("我的电话是13812345678哦", "phone"),
        ("call 138-1234-5678", "phone"),
        ("手机 +86 139 1234 5678", "phone"),
        ("身份证11010519491231002X", "cn_id"),
        ("mail me: alice.bob@example.com", "email"),
        ("卡号 4111 1111 1111 1111", "bank_card"),
        ("电话１３８１２３４５６７８", "phone"),  # full-width digits
    ],
)
def test_pii_detectors(text: str, kind: str) -> None:
    (m,) = find_pii(text)
    assert m.term == kind


def test_pii_checksums_reject_random_numbers() -> None:
    assert cn_id_valid("11010519491231002X")
    assert not cn_id_valid("110105194912310021")
    assert luhn_valid("4111111111111111")
    assert not luhn_valid("4111111111111112")
    assert find_pii("订单号 110105194912310021 和 4111111111111112") == []
    assert find_pii("价格 2024 元，房间号 12345") == []


def test_pii_is_masked_with_exact_length(pipeline: SafetyPipeline) -> None:
    r = pipeline.moderate("加我 13812345678 谢谢", direction="input")
    assert r.action == "mask"
    assert r.output == "加我 *********** 谢谢"


def test_audit_log_records_every_decision(pipeline: SafetyPipeline, audit: MemoryAuditLog) -> None:
    pipeline.moderate("主播好", direction="input", source="live")
    pipeline.moderate("你个傻逼", direction="input", source="live")
    a, b = audit.records
    assert (a.action, b.action) == ("pass", "mask")
    assert b.rules and b.rules[0].startswith("lexicon/hate.txt")
    assert b.text == "你个**"  # the default store mode keeps the masked text
    assert b.source == "live" and b.direction == "input"


def test_long_texts_find_what_each_message_finds(pipeline: SafetyPipeline) -> None:
    compiled = pipeline.compiled
    messages = ["哪里能买到冰 毒", "f.u.c.k off", "你个傻逼", "远离毒品", "主播晚上好", "this is bullshit"]
    text = "。".join(messages * 60)
    assert len(text) >= VECTOR_MIN_LENGTH
    assert sorted(compiled.find(text)) == sorted(compiled._occurrences(normalize_short(text)))
    one = len(compiled.scan("。".join(messages)))
    assert one and len(compiled.scan(text)) == 60 * one

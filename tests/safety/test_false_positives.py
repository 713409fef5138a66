"""False positives on ordinary live-stream chat (Chinese and English, written for this project)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from vstreamer.safety import SafetyPipeline

from .conftest import DATA, ordinary_chat


def _rates(pipeline: SafetyPipeline, messages: list[str]) -> tuple[float, float, list[str]]:
    flagged, acted, examples = 0, 0, []
    for m in messages:
        r = pipeline.moderate(m, direction="input", source="live")
        if r.matches:
            flagged += 1
            examples.append(f"{r.action} {m!r} {[x.term for x in r.matches]}")
        if r.action != "pass":
            acted += 1
    return flagged / len(messages), acted / len(messages), examples


def test_the_chat_sets_are_large_enough() -> None:
    assert len(ordinary_chat()) >= 450


def test_default_lexicon_passes_ordinary_chat(pipeline: SafetyPipeline) -> None:
    flag_rate, act_rate, examples = _rates(pipeline, ordinary_chat())
    assert flag_rate == 0.0, examples


@pytest.mark.slow
def test_konsheng_lexicon_false_positive_rate(konsheng: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pipeline = SafetyPipeline.default(lexicon_dirs=[konsheng])
    holdout = [x for x in (DATA / "ordinary_chat_holdout.txt").read_text(encoding="utf-8").splitlines() if x]
    for name, messages, max_flag in (("tuning set", ordinary_chat(), 0.01), ("held-out set", holdout, 0.05)):
        flag_rate, act_rate, examples = _rates(pipeline, messages)
        with capsys.disabled():
            sys.stdout.write(
                f"\nkonsheng on {name} ({len(messages)} msgs): flagged {flag_rate:.1%}, masked/blocked {act_rate:.1%}\n"
            )
        assert act_rate == 0.0, examples
        assert flag_rate <= max_flag, examples


def test_konsheng_still_catches_what_it_lists(konsheng: Path) -> None:
    pipeline = SafetyPipeline.default(lexicon_dirs=[konsheng])
    r = pipeline.moderate("出售仿真气枪，价格优惠", direction="output")
    assert r.action == "mask" and "ext_weapons" in r.categories
    assert pipeline.moderate("我们来聊聊冰毒", direction="output").action == "block"  # curated still applies

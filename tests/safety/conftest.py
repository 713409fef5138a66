"""Fixtures of the safety tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from vstreamer.safety import MemoryAuditLog, SafetyPipeline

DATA = Path(__file__).with_name("data")
ROOT = Path(__file__).resolve().parents[2]
KONSHENG = ROOT.parent / "shared" / "data" / "lexicon" / "konsheng-sensitive-lexicon"


def ordinary_chat() -> list[str]:
    lines: list[str] = []
    for name in ("ordinary_chat_zh.txt", "ordinary_chat_en.txt"):
        lines += [x for x in (DATA / name).read_text(encoding="utf-8").splitlines() if x.strip()]
    return lines


@pytest.fixture
def audit() -> MemoryAuditLog:
    return MemoryAuditLog()


@pytest.fixture
def pipeline(audit: MemoryAuditLog) -> SafetyPipeline:
    return SafetyPipeline.default(audit=audit)


@pytest.fixture
def konsheng() -> Path:
    if not KONSHENG.is_dir():
        pytest.skip(f"shared lexicon not present at {KONSHENG}")
    return KONSHENG


@pytest.fixture
def custom_lexicon(tmp_path: Path) -> Path:
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "categories.toml").write_text(
        '[categories.rude]\naction = "mask"\nseverity = 2\nallow = ["assistant"]\n'
        '[categories.secret]\naction = "block"\nseverity = 3\n',
        encoding="utf-8",
    )
    (folder / "rude.txt").write_text("# rude words\nass\n笨蛋\n", encoding="utf-8")
    (folder / "secret.txt").write_text("机密+代号\nbanana*\n", encoding="utf-8")
    return folder

"""Fixtures for persona tests: the shared real-world cards, and builders for synthetic cards."""

from __future__ import annotations

import base64
import io
import json
import struct
import zipfile
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from vstreamer.persona import matching
from vstreamer.persona.png import tiny_png


class _CountedPattern:
    """A compiled regex key that records the length of each text it is searched in."""

    def __init__(self, compiled: Any, searched: list[int]) -> None:
        self._compiled = compiled
        self._searched = searched
        self.pattern = compiled.pattern

    def search(self, text: str, *args: Any, **kwargs: Any) -> Any:
        self._searched.append(len(text))
        return self._compiled.search(text, *args, **kwargs)


@pytest.fixture
def regex_searches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The length of each text a lorebook regex key compiled from now on is searched in, in order: what the regex
    engine was given to do, counted rather than timed."""
    searched: list[int] = []
    engine = matching.regex

    def compile_counted(*args: Any, **kwargs: Any) -> _CountedPattern:
        return _CountedPattern(engine.compile(*args, **kwargs), searched)

    monkeypatch.setattr(matching, "regex", SimpleNamespace(compile=compile_counted, error=engine.error))
    return searched


SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def _shared_file(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.is_file():
        pytest.skip(f"shared test data not available: {path}")
    return path


@pytest.fixture
def seraphina_path() -> Path:
    return _shared_file("cards/seraphina.png")


@pytest.fixture
def eldoria_path() -> Path:
    return _shared_file("cards/eldoria-worldinfo.json")


class CardKit:
    """Builders for synthetic cards and PNG/CHARX containers."""

    @staticmethod
    def v2(name: str = "Aria", **data: Any) -> dict[str, Any]:
        base: dict[str, Any] = {
            "name": name,
            "description": "{{char}} is a bard who sings to <USER>.",
            "personality": "cheerful",
            "scenario": "A tavern.",
            "first_mes": "Hello {{user}}!",
            "mes_example": "<START>\n{{user}}: hi\n{{char}}: hey",
            "creator_notes": "Only for humans.",
            "system_prompt": "{{original}} Play {{char}}.",
            "post_history_instructions": "Stay in character.",
            "alternate_greetings": ["Welcome back, {{User}}."],
            "tags": ["bard", "fantasy"],
            "creator": "tester",
            "character_version": "2.1",
            "extensions": {"acme/voice": {"pitch": 3, "nested": [1, {"a": None}]}, "talkativeness": "0.5"},
            "character_book": {
                "name": "Aria book",
                "scan_depth": 2,
                "token_budget": 400,
                "extensions": {"acme/book": True},
                "entries": [
                    {
                        "keys": ["lute"],
                        "content": "Aria's lute is named Melody.",
                        "extensions": {"acme/entry": 1},
                        "enabled": True,
                        "insertion_order": 5,
                        "id": 7,
                        "x_custom_field": "kept",
                    }
                ],
            },
        }
        base.update(data)
        return {"spec": "chara_card_v2", "spec_version": "2.0", "data": base}

    @classmethod
    def v3(cls, name: str = "Aria", **data: Any) -> dict[str, Any]:
        card = cls.v2(name, **data)["data"]
        card.setdefault("group_only_greetings", ["Hi all!"])
        card.setdefault("nickname", "Ari")
        card.setdefault("assets", [{"type": "icon", "uri": "ccdefault:", "name": "main", "ext": "png"}])
        card.setdefault("creation_date", 1700000000)
        return {"spec": "chara_card_v3", "spec_version": "3.0", "data": card}

    @staticmethod
    def b64(card: Any) -> str:
        return base64.b64encode(json.dumps(card).encode("utf-8")).decode("ascii")

    @staticmethod
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    @classmethod
    def png(cls, *chunks: bytes, base: bytes | None = None) -> bytes:
        """A PNG with extra chunks inserted before IEND."""
        image = base or tiny_png()
        return image[:-12] + b"".join(chunks) + image[-12:]

    @classmethod
    def text_chunk(cls, keyword: str, text: str) -> bytes:
        return cls.chunk(b"tEXt", keyword.encode("latin-1") + b"\0" + text.encode("latin-1"))

    @classmethod
    def card_png(cls, **cards: Any) -> bytes:
        """A PNG carrying each keyword -> card as base64 tEXt."""
        return cls.png(*(cls.text_chunk(k, cls.b64(v)) for k, v in cards.items()))

    @staticmethod
    def charx(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression) as archive:
            for name, data in members.items():
                archive.writestr(name, data)
        return buffer.getvalue()


@pytest.fixture
def cardkit() -> type[CardKit]:
    return CardKit

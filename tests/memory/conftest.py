"""A scripted backend that answers replies, summary requests and fact-extraction requests differently."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncGenerator, Callable, Sequence

import pytest

from vstreamer.engine import ContextBudget
from vstreamer.engine.extract import EXTRACT_TAG
from vstreamer.engine.summary import SUMMARY_TAG
from vstreamer.llm import FakeBackend
from vstreamer.llm.base import ChatMessage, Delta, SamplingParams
from vstreamer.persona import Persona, PersonaLibrary

FactsScript = Callable[[str], str]


def no_facts(_: str) -> str:
    return '{"facts": []}'


def keep_marked_lines(messages: Sequence[ChatMessage]) -> str:
    """A stand-in summariser that keeps what a good one must: lines naming people, promises and plans."""
    body = messages[-1].content
    lines = [line.strip() for line in body.splitlines() if line.strip() and not line.startswith(("【", "["))]
    kept = [line for line in lines if re.search(r"阿明|考试|promise|Sam", line) and line != "（无）"]
    return "\n".join(dict.fromkeys(kept)) or "（闲聊）"


class ScriptedBackend(FakeBackend):
    """Replies echo the viewer; summaries and extractions follow the script; every prompt is recorded by kind."""

    def __init__(
        self,
        *,
        reply: Callable[[Sequence[ChatMessage]], str] | None = None,
        facts: FactsScript = no_facts,
        summary: Callable[[Sequence[ChatMessage]], str] = keep_marked_lines,
        summary_gate: asyncio.Event | None = None,
    ) -> None:
        super().__init__(self._respond)
        self.reply_script = reply or (lambda m: "好呀～" + m[-1].content[:12])
        self.facts_script = facts
        self.summary_script = summary
        self.summary_gate = summary_gate
        self.kinds: dict[str, list[list[ChatMessage]]] = {"reply": [], "summary": [], "facts": []}

    @staticmethod
    def kind(messages: Sequence[ChatMessage]) -> str:
        first = messages[0].content
        if first.startswith(SUMMARY_TAG):
            return "summary"
        return "facts" if first.startswith(EXTRACT_TAG) else "reply"

    def _respond(self, messages: Sequence[ChatMessage]) -> str:
        kind = self.kind(messages)
        self.kinds[kind].append(list(messages))
        if kind == "summary":
            return self.summary_script(messages)
        if kind == "facts":
            return self.facts_script(messages[-1].content)
        return self.reply_script(messages)

    async def stream(
        self, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> AsyncGenerator[Delta, None]:
        if self.summary_gate is not None and self.kind(messages) == "summary":
            await self.summary_gate.wait()
        async for delta in super().stream(messages, params):
            yield delta


def facts_json(*facts: str) -> str:
    return json.dumps({"facts": list(facts)}, ensure_ascii=False)


@pytest.fixture
def xiaoxing() -> Persona:
    return PersonaLibrary(None).get("xiaoxing")


@pytest.fixture
def nova() -> Persona:
    return PersonaLibrary(None).get("nova")


@pytest.fixture
def small_budget() -> ContextBudget:
    return ContextBudget(context_window=3072, max_tokens=128, reserve_tokens=16)

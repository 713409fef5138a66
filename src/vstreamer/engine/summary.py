"""Rolling summaries: turns that left the context window are folded into a running summary by the LLM.

The summary keeps what a streamer must not forget (names, promises, running jokes, open questions, the persona's
stance); the persona definition itself is never summarised — it stays pinned in the system message. When the
summary outgrows its budget it is summarised again (a summary of summaries); if the model fails or answers
nothing usable, a plain digest of the turns is folded in instead, so no turn is ever dropped silently.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from vstreamer.engine.conversation import Turn
from vstreamer.errors import BackendError
from vstreamer.llm.base import ChatMessage, LLMBackend, SamplingParams

if TYPE_CHECKING:
    from vstreamer.persona import Persona

logger = logging.getLogger(__name__)

SUMMARY_TAG = "[vstreamer-summary]"
"""Opens every summarisation prompt (lets scripted test backends recognise the request)."""
_TURN_CHARS = 300
_PROMPTS = {
    "zh": (
        SUMMARY_TAG + " 你在为一场直播的对话写滚动摘要，帮助主播{char}记住之前聊过的内容。"
        "把【已有摘要】和【新的对话】合并成一份新的摘要，最多约{limit}个字，用简洁的要点。"
        "必须保留：观众的名字和昵称、承诺和约定、反复出现的梗和玩笑、还没回答的问题、{char}对各个话题的态度和立场。"
        "不要编造，不要复述{char}的角色设定，只输出摘要正文。"
    ),
    "en": (
        SUMMARY_TAG
        + " You write the rolling summary of a live stream's chat so the streamer {char} remembers "
        "it. Merge [Summary so far] and [New conversation] into one new summary of at most about {limit} words, "
        "as short bullet points. Always keep: viewers' names and nicknames, promises and plans, running jokes, "
        "open questions, and {char}'s stance on each topic. Invent nothing, do not restate {char}'s character "
        "definition, output only the summary."
    ),
}
_COMPRESS = {
    "zh": SUMMARY_TAG
    + " 把下面的直播摘要压缩到约{limit}个字以内，保留名字、承诺、梗、未回答的问题和{char}的立场，只输出摘要。",
    "en": SUMMARY_TAG
    + " Compress this stream summary to about {limit} words, keeping names, promises, jokes, "
    "open questions and {char}'s stance. Output only the summary.",
}
_LABELS = {
    "zh": ("【已有摘要】", "【新的对话】", "（无）"),
    "en": ("[Summary so far]", "[New conversation]", "(none)"),
}
_PREAMBLE = re.compile(r"^\s*(?:新的?摘要|摘要|summary|new summary)\s*[:：]\s*", re.IGNORECASE)


def _lang(persona: Persona) -> str:
    return "zh" if persona.language.lower().startswith("zh") else "en"


class Summarizer:
    """Folds turns into a running summary of at most ``max_tokens`` tokens (counted by the backend)."""

    def __init__(self, backend: LLMBackend, *, max_tokens: int = 256, temperature: float = 0.2) -> None:
        self.backend = backend
        self.max_tokens = max_tokens
        self.params = SamplingParams(temperature=temperature, top_p=0.9, max_tokens=max_tokens + 64)
        self.failures = 0
        """Model answers that were unusable (a digest was folded in instead)."""

    async def fold(self, persona: Persona, user_name: str, previous: str, turns: Sequence[Turn]) -> str:
        """The new running summary: ``previous`` with ``turns`` folded in, within the budget."""
        lang = _lang(persona)
        transcript = "\n".join(self._line(persona, user_name, t) for t in turns)
        old_label, new_label, none = _LABELS[lang]
        prompt = [
            ChatMessage("system", _PROMPTS[lang].format(char=persona.char_name, limit=self._words())),
            ChatMessage("user", f"{old_label}\n{previous.strip() or none}\n\n{new_label}\n{transcript}"),
        ]
        summary = await self._ask(prompt)
        if not summary:
            self.failures += 1
            summary = f"{previous.strip()}\n{transcript}".strip()
        if await self._tokens(summary) > self.max_tokens:
            summary = await self._compress(persona, summary)
        return summary

    async def _compress(self, persona: Persona, summary: str) -> str:
        """A summary of the summary; cut from the oldest lines if the model cannot make it fit."""
        lang = _lang(persona)
        prompt = [
            ChatMessage("system", _COMPRESS[lang].format(char=persona.char_name, limit=self._words())),
            ChatMessage("user", summary),
        ]
        shorter = await self._ask(prompt)
        if shorter and await self._tokens(shorter) <= self.max_tokens:
            return shorter
        return await self._cut(shorter or summary)

    async def _cut(self, text: str) -> str:
        lines = [line for line in text.splitlines() if line.strip()]
        while len(lines) > 1 and await self._tokens("\n".join(lines)) > self.max_tokens:
            lines.pop(0)
        kept = "\n".join(lines)
        while kept and await self._tokens(kept) > self.max_tokens:
            kept = kept[len(kept) // 8 + 1 :]
        return kept

    async def _ask(self, prompt: list[ChatMessage]) -> str:
        try:
            completion = await self.backend.complete(prompt, self.params)
        except BackendError as exc:
            logger.warning("summary request failed: %s", exc)
            return ""
        return _PREAMBLE.sub("", completion.text.strip()).strip()

    async def _tokens(self, text: str) -> int:
        return await self.backend.count_message_tokens(ChatMessage("system", text))

    def _words(self) -> int:
        return max(self.max_tokens * 2 // 3, 20)

    @staticmethod
    def _line(persona: Persona, user_name: str, turn: Turn) -> str:
        speaker = persona.char_name if turn.role == "assistant" else user_name
        content = " ".join(turn.content.split())
        if len(content) > _TURN_CHARS:
            content = content[:_TURN_CHARS] + "…"
        return f"{speaker}: {content}"

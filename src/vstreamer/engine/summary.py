"""Rolling summaries: turns that left the context window are folded into a running summary by the LLM.

The summary keeps what a streamer must not forget (names, promises, running jokes, open questions, the persona's
stance); the persona definition itself is never summarised — it stays pinned in the system message. When the
summary outgrows its budget it is summarised again (a summary of summaries), and cut from its newest lines if that
fails. If the model fails or answers nothing usable, the fold answers ``None``: the caller keeps the old summary and
folds the turns later (raw viewer text never stands in for a summary in the system message).
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
_UNITS = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]|[^\W_\u3400-\u9fff\uf900-\ufaff]+")
"""What a length is asked in: a Chinese character or a word of other scripts."""
_ASKED_SHARE = 0.75
"""Share of the cap asked for: line marks and breaks cost tokens too, and models overshoot a little."""
_SAMPLES = {"zh": ("观众的名字和约定", 8), "en": ("viewer names and plans", 4)}
"""Measured when there is nothing to measure on (an empty fold)."""


def _lang(persona: Persona) -> str:
    return "zh" if persona.language.lower().startswith("zh") else "en"


class Summarizer:
    """Folds turns into a running summary of at most ``max_tokens`` tokens (counted by the backend)."""

    def __init__(self, backend: LLMBackend, *, max_tokens: int = 256, temperature: float = 0.2) -> None:
        self.backend = backend
        self.max_tokens = max_tokens
        self.params = SamplingParams(temperature=temperature, top_p=0.9, max_tokens=max_tokens + 64)
        self.failures = 0
        """Fold requests the model failed or answered nothing usable to (the old summary was kept)."""
        self._overhead: int | None = None
        self._last_prompt: tuple[tuple[object, ...], list[ChatMessage]] | None = None
        """The last fold prompt made, and what it was made of (``fitting`` makes the prompt ``fold`` then asks)."""

    async def fold(
        self, persona: Persona, user_name: str, previous: str, turns: Sequence[Turn]
    ) -> str | None:
        """The new running summary: ``previous`` with ``turns`` folded in, within the budget; ``None`` when the model
        failed (the caller keeps ``previous`` and folds these turns later)."""
        summary = await self._ask(await self._fold_prompt(persona, user_name, previous, turns))
        if not summary:
            self.failures += 1
            return None
        if await self._tokens(summary) > self.max_tokens:
            summary = await self._compress(persona, summary, previous)
        return summary

    async def fitting(
        self, persona: Persona, user_name: str, previous: str, turns: Sequence[Turn], window: int
    ) -> int:
        """How many of ``turns`` (oldest first) one fold request takes within ``window`` tokens, its answer included
        (at least one: a fold always moves on)."""
        if await self._fits(persona, user_name, previous, turns, window):
            return len(turns)  # the usual case: one prompt made and counted (and kept for the fold)
        low, high = 1, len(turns) - 1
        while low < high:  # the most that fit, found by bisection: a count may be a request to the server
            middle = (low + high + 1) // 2
            if await self._fits(persona, user_name, previous, turns[:middle], window):
                low = middle
            else:
                high = middle - 1
        return low

    async def _fits(
        self, persona: Persona, user_name: str, previous: str, turns: Sequence[Turn], window: int
    ) -> bool:
        prompt = await self._fold_prompt(persona, user_name, previous, turns)
        return await self.backend.count_tokens(prompt) + self.params.max_tokens <= window

    async def _fold_prompt(
        self, persona: Persona, user_name: str, previous: str, turns: Sequence[Turn]
    ) -> list[ChatMessage]:
        key = (
            persona.id,
            persona.char_name,
            persona.language,
            user_name,
            previous,
            tuple(t.id for t in turns),
        )
        if self._last_prompt is not None and self._last_prompt[0] == key:
            return self._last_prompt[1]  # made to see whether it fits, now asked
        prompt = await self._make_fold_prompt(persona, user_name, previous, turns)
        self._last_prompt = (key, prompt)
        return prompt

    async def _make_fold_prompt(
        self, persona: Persona, user_name: str, previous: str, turns: Sequence[Turn]
    ) -> list[ChatMessage]:
        lang = _lang(persona)
        transcript = "\n".join(self._line(persona, user_name, t) for t in turns)
        old_label, new_label, none = _LABELS[lang]
        limit = await self._limit(lang, f"{previous}\n{transcript}")
        return [
            ChatMessage("system", _PROMPTS[lang].format(char=persona.char_name, limit=limit)),
            ChatMessage("user", f"{old_label}\n{previous.strip() or none}\n\n{new_label}\n{transcript}"),
        ]

    async def _compress(self, persona: Persona, summary: str, previous: str) -> str:
        """A summary of the summary; cut from its newest lines if the model cannot make it fit."""
        lang = _lang(persona)
        prompt = [
            ChatMessage(
                "system",
                _COMPRESS[lang].format(char=persona.char_name, limit=await self._limit(lang, summary)),
            ),
            ChatMessage("user", summary),
        ]
        shorter = await self._ask(prompt)
        if shorter and await self._tokens(shorter) <= self.max_tokens:
            return shorter
        return await self._cut(shorter or summary, previous)

    async def _cut(self, text: str, previous: str) -> str:
        """``text`` within the cap: lines that are not in ``previous`` go first, newest first, then any line from the
        newest (the summary so far outlives what was just added to it)."""
        lines = [line for line in text.splitlines() if line.strip()]
        old = {line.strip() for line in previous.splitlines()}
        while len(lines) > 1 and await self._tokens("\n".join(lines)) > self.max_tokens:
            new = [i for i, line in enumerate(lines) if line.strip() not in old]
            del lines[new[-1] if new else -1]
        kept = "\n".join(lines)
        while kept and await self._tokens(kept) > self.max_tokens:
            kept = kept[: len(kept) - len(kept) // 8 - 1]
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

    async def _limit(self, lang: str, sample: str) -> int:
        """The length to ask for (characters in Chinese, words in English): what ``max_tokens`` holds at the tokens
        per character or word that the backend counts on ``sample`` (the text being summarised)."""
        if self._overhead is None:
            self._overhead = await self._tokens("")
        units = len(_UNITS.findall(sample))
        if units == 0:
            sample, units = _SAMPLES[lang]
        per_unit = max((await self._tokens(sample) - self._overhead) / units, 0.1)
        return max(int((self.max_tokens - self._overhead) * _ASKED_SHARE / per_unit), 8)

    @staticmethod
    def _line(persona: Persona, user_name: str, turn: Turn) -> str:
        speaker = persona.char_name if turn.role == "assistant" else user_name
        content = " ".join(turn.content.split())
        if len(content) > _TURN_CHARS:
            content = content[:_TURN_CHARS] + "…"
        return f"{speaker}: {content}"

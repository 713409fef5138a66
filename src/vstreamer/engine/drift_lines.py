"""What the engine says when a reply breaks character: the reinforced instruction of the one retry, and the in-character
line that ends a reply that drifted twice (Chinese for a Chinese persona, English for every other)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

FALLBACK_ZH = (
    "诶嘿，{name}刚刚走神了一下～我们接着聊吧！",
    "唔……{name}刚才差点说串台了，当我没说～你刚刚说到哪啦？",
    "哎呀，{name}脑子打了个结！重新来，我们继续聊～",
)
FALLBACK_EN = (
    "Oops, {name} zoned out for a second~ where were we?",
    "Hah, ignore that, {name} got tongue-tied! Let's keep going~",
    "Wait, scratch that! {name} lost the thread for a moment. What were we saying?",
)
REINFORCE_ZH = (
    "【重要提醒】你就是{name}本人，一位正在直播的虚拟主播。只用{name}的身份和口吻说话；"
    "绝对不要说自己是AI、人工智能、语言模型或助手，不要提任何模型或公司的名字。"
)
REINFORCE_EN = (
    "[Important] You are {name} yourself, a virtual streamer live right now. Speak only as {name}; never say "
    "you are an AI, a language model or an assistant, and never mention any model or company name."
)


def _speaks_chinese(language: str) -> bool:
    """The prompt's rule (``prompt._lang``): Chinese for "zh…", English for every other language ("ja", "ko")."""
    return language.lower().startswith("zh")


def fallback_line(language: str, persona_name: str, seed: str = "") -> str:
    """An in-character line that replaces a reply that broke character twice."""
    lines: Sequence[str] = FALLBACK_ZH if _speaks_chinese(language) else FALLBACK_EN
    return lines[zlib.crc32(seed.encode("utf-8")) % len(lines)].format(name=persona_name)


def reinforcement(language: str, persona_name: str) -> str:
    """The extra instruction of the one retry after a drift."""
    text = REINFORCE_ZH if _speaks_chinese(language) else REINFORCE_EN
    return text.format(name=persona_name)

"""Everything the web UI says in its own voice, in the persona's language (Chinese or English)."""

from __future__ import annotations

from vstreamer.errors import (
    BackendTimeout,
    BackendUnavailable,
    ContextBudgetError,
    ModerationError,
    VStreamerError,
)
from vstreamer.persona import Persona

_TEXTS: dict[str, dict[str, str]] = {
    "zh": {
        "unavailable": "（{name}暂时连不上大脑了：模型服务没有响应。请稍后再发一次消息试试。）",
        "timeout": "（{name}想得太久了：模型服务响应超时。请稍后再试一次。）",
        "backend": "（模型服务出了点问题，{name}这次没能回答。请稍后再试。）",
        "too_long": "（这条消息太长了，{name}装不下。请缩短一点再发。）",
        "blocked": "（这条消息不适合在直播间里聊，换个话题吧～）",
        "unknown": "（出了点意外，{name}这次没能回答。请再试一次。）",
        "interrupted": "（已中断）",
        "settings_temperature": "温度 temperature",
        "settings_top_p": "核采样 top_p",
        "settings_max_tokens": "最长回复 max tokens",
    },
    "en": {
        "unavailable": "({name} can't reach the model right now: the model server is not answering. Send your "
        "message again in a moment.)",
        "timeout": "({name} took too long: the model server timed out. Please try again in a moment.)",
        "backend": "(The model server had a problem and {name} couldn't answer. Please try again later.)",
        "too_long": "(That message is too long for {name} to take in. Please shorten it.)",
        "blocked": "(That's not something we can talk about on stream. Let's pick another topic!)",
        "unknown": "(Something went wrong and {name} couldn't answer. Please try again.)",
        "interrupted": "(interrupted)",
        "settings_temperature": "Temperature",
        "settings_top_p": "Top p",
        "settings_max_tokens": "Max tokens",
    },
}


def language_of(persona: Persona) -> str:
    return "zh" if persona.language.lower().startswith("zh") else "en"


def text(persona: Persona, key: str) -> str:
    return _TEXTS[language_of(persona)][key].format(name=persona.char_name)


_FAILURES = {
    BackendUnavailable.code: "unavailable",
    BackendTimeout.code: "timeout",
    ContextBudgetError.code: "too_long",
    ModerationError.code: "blocked",
}
"""The note for each error code; any other vstreamer error reads as the model server's problem."""


def error_text(persona: Persona, exc: BaseException) -> str:
    """A friendly sentence for an error (never a stack trace)."""
    return failure_text(persona, exc.code) if isinstance(exc, VStreamerError) else text(persona, "unknown")


def failure_text(persona: Persona, code: str | None) -> str:
    """The sentence for a failure by its error code: live (:func:`error_text`) and in a reopened thread, whose
    stored turn keeps the code (:attr:`vstreamer.engine.Turn.error_code`)."""
    return text(persona, _FAILURES.get(code or "", "backend"))


def shown_reply(persona: Persona, content: str, status: str, emotions: list[str], error: str = "") -> str:
    """How a finished reply reads in the chat: a badge for its last emotion cue, a mark when it was stopped,
    a friendly note when it failed (``content`` has its emotion tags already stripped)."""
    from vstreamer.ui.emotion import badge

    shown = content.strip()
    if emotions:
        shown = f"{badge(emotions[-1])} {shown}"
    if status == "interrupted":
        shown = f"{shown} …{text(persona, 'interrupted')}" if shown else text(persona, "interrupted")
    elif status == "failed":
        note = error or text(persona, "backend")
        shown = f"{shown}\n\n{note}" if shown else note
    return shown

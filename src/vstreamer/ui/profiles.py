"""Personas as Chainlit chat profiles: name, avatar, description, starters, and the chat settings panel."""

from __future__ import annotations

from pathlib import Path

import chainlit as cl
from chainlit.config import ChainlitConfigOverrides, UISettings
from chainlit.input_widget import InputWidget, Slider

from vstreamer.engine import DialogueEngine
from vstreamer.persona import Persona
from vstreamer.ui import texts
from vstreamer.ui.avatars import avatar_url, write_avatars

_DEFAULT_STARTERS = {
    "zh": ["自我介绍一下吧！", "今天直播聊点什么？", "给我讲个冷笑话", "推荐一款好玩的游戏"],
    "en": ["Introduce yourself!", "What's on stream today?", "Tell me a joke", "Recommend a cozy game"],
}
_DESCRIPTION_CHARS = 280


def starters(persona: Persona) -> list[str]:
    """The card's ``vstreamer/starters`` extension when present, else friendly defaults in its language."""
    custom = persona.extensions.get("vstreamer/starters")
    if isinstance(custom, list) and all(isinstance(s, str) and s.strip() for s in custom) and custom:
        return [s.strip() for s in custom[:4]]
    return _DEFAULT_STARTERS[texts.language_of(persona)]


def description(persona: Persona, user_name: str) -> str:
    text = persona.render(persona.description.strip() or persona.creator_notes.strip(), user_name)
    return text if len(text) <= _DESCRIPTION_CHARS else text[: _DESCRIPTION_CHARS - 1] + "…"


def chat_profiles(
    personas: list[Persona], user_name: str, *, default_id: str, public_dir: Path
) -> list[cl.ChatProfile]:
    """A profile per persona, the default first, each with its avatar written under ``public_dir``."""
    write_avatars(personas, public_dir)
    ordered = sorted(personas, key=lambda p: p.id != default_id)
    return [chat_profile(p, user_name, default=p.id == default_id) for p in ordered]


def chat_profile(persona: Persona, user_name: str, *, default: bool) -> cl.ChatProfile:
    # The author of the persona's messages is the profile's UI name, so Chainlit shows the profile icon.
    overrides = ChainlitConfigOverrides(ui=UISettings(name=persona.name))
    return cl.ChatProfile(
        name=persona.id,
        display_name=persona.name,
        markdown_description=description(persona, user_name),
        icon=avatar_url(persona),
        default=default,
        starters=[cl.Starter(label=s, message=s) for s in starters(persona)],
        config_overrides=overrides,
    )


def settings_panel(engine: DialogueEngine, persona: Persona) -> cl.ChatSettings:
    """Temperature, top_p and max tokens, starting at the persona's defaults (else the engine's)."""
    params = engine.sampling_for(persona)
    top = engine.budget.max_tokens
    widgets: list[InputWidget] = [
        Slider(id="temperature", label=texts.text(persona, "settings_temperature"),
               initial=params.temperature, min=0.0, max=2.0, step=0.05),
        Slider(id="top_p", label=texts.text(persona, "settings_top_p"),
               initial=params.top_p, min=0.05, max=1.0, step=0.05),
        Slider(id="max_tokens", label=texts.text(persona, "settings_max_tokens"),
               initial=params.max_tokens, min=min(16, top), max=top, step=1),
    ]  # fmt: skip
    return cl.ChatSettings(widgets)

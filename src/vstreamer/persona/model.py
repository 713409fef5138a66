"""The persona model: who the streamer is, as loaded from our YAML/TOML/JSON or from character cards."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from vstreamer.persona.limits import MAX_FILE_BYTES, MAX_LIST_ITEMS
from vstreamer.persona.lorebook import Lorebook, Text
from vstreamer.persona.macros import render_macros

DEFAULT_PERSONA_ID = "xiaoxing"
ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"

Short = Annotated[str, StringConstraints(max_length=1000)]


class SamplingDefaults(BaseModel):
    """Sampling settings the persona prefers; None leaves the backend's default."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1, le=32768)


def slugify(name: str) -> str:
    """A stable id from a display name: ASCII words, plus a short hash when letters were dropped.

    ``"Seraphina"`` -> ``"seraphina"``; ``"小星"`` -> ``"p-<hash>"``; ``"小星 Star"`` -> ``"star-<hash>"``.
    """
    ascii_form = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_form.lower()).strip("-")[:40].strip("-")
    lossy = any(ch.isalnum() and not ch.isascii() for ch in name)
    if slug and not lossy:
        return slug
    digest = hashlib.sha1(name.strip().encode("utf-8")).hexdigest()[:8]
    return f"{slug}-{digest}" if slug else f"p-{digest}"


class Persona(BaseModel):
    """A character the streamer plays. Field names follow our format; card names are in comments."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    id: Annotated[str, StringConstraints(pattern=ID_PATTERN)]
    """Stable slug ``[a-z0-9_-]``; derived from ``name`` when missing."""
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    nickname: Short = ""
    """V3 ``nickname``: replaces ``{{char}}`` when set."""
    description: Text = ""
    personality: Text = ""
    scenario: Text = ""
    greeting: Text = ""
    """Card ``first_mes``."""
    alternate_greetings: list[Text] = Field(default_factory=list, max_length=MAX_LIST_ITEMS)
    example_dialogue: Text = ""
    """Card ``mes_example``: ``<START>``-separated sample exchanges."""
    system_prompt: Text = ""
    """Card ``system_prompt``; ``{{original}}`` stands for the app's default system prompt."""
    post_history_instructions: Text = ""
    """Put after the chat history; ``{{original}}`` stands for the app's default."""
    creator_notes: Text = ""
    """For humans only: never put into prompts."""
    language: Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8}){0,3}$")] = "zh"
    tags: list[Short] = Field(default_factory=list, max_length=MAX_LIST_ITEMS)
    creator: Short = ""
    character_version: Short = ""
    sampling: SamplingDefaults = Field(default_factory=SamplingDefaults)
    lorebook: Lorebook | None = None
    avatar_png: bytes | None = Field(default=None, repr=False, max_length=MAX_FILE_BYTES)
    """The card image (PNG without its card chunks) when loaded from a PNG or CHARX."""
    extensions: dict[str, Any] = Field(default_factory=dict)
    """Card ``extensions``, kept verbatim; unknown card fields live under ``"vstreamer/card_fields"``."""
    source_format: Literal["vstreamer", "chara_card_v2", "chara_card_v3"] = "vstreamer"

    @model_validator(mode="before")
    @classmethod
    def _derive_id(cls, data: Any) -> Any:
        name = data.get("name") if isinstance(data, dict) else None
        if not isinstance(name, bool) and isinstance(name, int | float):
            name = str(name)  # ``name: 2077`` in YAML/TOML: a number, made a string by the field
        if isinstance(data, dict) and not data.get("id") and isinstance(name, str):
            name = name.strip()
            if name:
                return {**data, "id": slugify(name)}
        return data

    @property
    def char_name(self) -> str:
        """The name ``{{char}}`` stands for: the nickname when set, else the name."""
        return self.nickname or self.name

    def render(self, text: str, user: str) -> str:
        """Replace ``{{char}}``/``{{user}}`` (any case) and ``<BOT>``/``<USER>``; keep ``{{original}}``."""
        return render_macros(text, char=self.char_name, user=user)

    def greetings(self) -> list[str]:
        """The first message and the alternates, skipping empty ones."""
        return [g for g in (self.greeting, *self.alternate_greetings) if g.strip()]

"""The character: persona model, loaders (our YAML/TOML/JSON, Character Card V1/V2/V3 JSON, PNG,
CHARX, SillyTavern World Info), card export, lorebook activation and the persona library.

Prompt-relevant fields of a :class:`Persona`: ``system_prompt``, ``description``, ``personality``,
``scenario``, ``example_dialogue``, ``post_history_instructions``, greetings and activated lorebook
entries, each passed through :meth:`Persona.render`. ``creator_notes``, ``tags``, ``creator`` and
``character_version`` are for people, never for prompts.
"""

from vstreamer.persona.export import export_card_json, export_card_png
from vstreamer.persona.files import load_persona, load_persona_bytes
from vstreamer.persona.library import PersonaLibrary, bundled_personas
from vstreamer.persona.lorebook import Lorebook, LoreEntry
from vstreamer.persona.macros import render_macros
from vstreamer.persona.model import DEFAULT_PERSONA_ID, Persona, SamplingDefaults, slugify
from vstreamer.persona.worldinfo import load_lorebook

__all__ = [
    "DEFAULT_PERSONA_ID",
    "LoreEntry",
    "Lorebook",
    "Persona",
    "PersonaLibrary",
    "SamplingDefaults",
    "bundled_personas",
    "export_card_json",
    "export_card_png",
    "load_lorebook",
    "load_persona",
    "load_persona_bytes",
    "render_macros",
    "slugify",
]

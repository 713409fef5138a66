"""Exporting personas as Character Card V2/V3 JSON and as card PNGs."""

from __future__ import annotations

import base64
import json
from typing import Any, Literal

from vstreamer.errors import PersonaError
from vstreamer.persona.cards import card_from_persona
from vstreamer.persona.model import Persona
from vstreamer.persona.png import tiny_png, with_text_chunks


def export_card_json(p: Persona, spec: Literal["v2", "v3"] = "v2") -> dict[str, Any]:
    """The persona as a Character Card V2 (default) or V3 JSON object; unknown fields are kept."""
    if spec not in ("v2", "v3"):
        raise PersonaError(f"unknown card spec {spec!r} (use 'v2' or 'v3')")
    return card_from_persona(p, spec)


def _chunk_text(card: dict[str, Any]) -> str:
    try:
        raw = json.dumps(card, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise PersonaError(f"persona holds data that is not JSON: {exc}") from exc
    return base64.b64encode(raw).decode("ascii")


def export_card_png(p: Persona, image_png: bytes | None = None) -> bytes:
    """A card PNG with both a ``chara`` (V2) and a ``ccv3`` (V3) chunk.

    The image is ``image_png``, else the persona's avatar, else a small generated square.
    """
    image = image_png or p.avatar_png or tiny_png()
    texts = {"chara": _chunk_text(export_card_json(p, "v2")), "ccv3": _chunk_text(export_card_json(p, "v3"))}
    return with_text_chunks(image, texts, "image")

"""Exporting personas as Character Card V2/V3 JSON and as card PNGs."""

from __future__ import annotations

import base64
import json
from typing import Any, Literal

from vstreamer.errors import PersonaError
from vstreamer.persona.assets import card_assets, exportable_assets
from vstreamer.persona.cards import card_from_persona
from vstreamer.persona.lorebook import without_decorators
from vstreamer.persona.model import Persona
from vstreamer.persona.png import tiny_png, with_text_chunks


def export_card_json(p: Persona, spec: Literal["v2", "v3"] = "v2") -> dict[str, Any]:
    """The persona as a Character Card V2 (default) or V3 JSON object; unknown fields are kept, but not
    ``embeded://`` assets: their files are not kept."""
    if spec not in ("v2", "v3"):
        raise PersonaError(f"unknown card spec {spec!r} (use 'v2' or 'v3')")
    return _without_lost_assets(card_from_persona(p, spec), icon_is_image=False)


def _without_lost_assets(card: dict[str, Any], icon_is_image: bool) -> dict[str, Any]:
    """``card`` with ``assets`` that point at embedded files we did not keep left out (see
    ``exportable_assets``)."""
    assets = card_assets(card)
    if assets is not None:
        card["data"]["assets"] = exportable_assets(assets, icon_is_image)
    return card


#: card fields the V3 spec added, left out of the V2 ``chara`` copy written next to ``ccv3``
_V3_ONLY_FIELDS = frozenset(
    {
        "nickname",
        "group_only_greetings",
        "assets",
        "source",
        "creator_notes_multilingual",
        "creation_date",
        "modification_date",
    }
)


def _v2_backfill(card: dict[str, Any]) -> dict[str, Any]:
    """The V2 copy for a card PNG: as the V3 spec asks of a backfill, without decorators and V3-only
    fields (``ccv3`` beside it keeps them)."""
    data = {k: v for k, v in card["data"].items() if k not in _V3_ONLY_FIELDS}
    book = data.get("character_book")
    if isinstance(book, dict):
        entries = [
            {**{k: v for k, v in e.items() if k != "use_regex"}, "content": without_decorators(e["content"])}
            for e in book["entries"]
        ]
        data["character_book"] = {**book, "entries": entries}
    return {**card, "data": data}


def _chunk_text(card: dict[str, Any]) -> str:
    try:
        raw = json.dumps(card, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise PersonaError(f"persona holds data that is not JSON: {exc}") from exc
    return base64.b64encode(raw).decode("ascii")


def export_card_png(p: Persona, image_png: bytes | None = None) -> bytes:
    """A card PNG with both a ``chara`` (V2 backfill) and a ``ccv3`` (V3) chunk.

    The image is ``image_png``, else the persona's avatar, else a small generated square. When the
    persona has its avatar, an ``embeded://`` main icon asset becomes ``ccdefault:`` (this PNG); other
    ``embeded://`` assets are left out, as in ``export_card_json``.
    """
    image = image_png or p.avatar_png or tiny_png()
    v3 = card_from_persona(p, "v3")
    texts = {
        "chara": _chunk_text(_v2_backfill(export_card_json(p, "v2"))),
        "ccv3": _chunk_text(_without_lost_assets(v3, icon_is_image=p.avatar_png is not None)),
    }
    return with_text_chunks(image, texts, "image")

"""V3 card ``assets``: which embedded asset import keeps, and what an export may still point at.

Of the files a CHARX embeds we keep only the main icon's bytes (as ``Persona.avatar_png``). The spec
lets an application drop asset data it cannot keep, provided it does not export those assets and tells
the user: exports leave ``embeded://`` assets out, and CHARX import logs how many were not kept.
"""

from __future__ import annotations

from typing import Any

EMBEDDED = "embeded://"  # sic: the spec's spelling
DEFAULT_URI = "ccdefault:"  # in a card PNG, the main icon's ``ccdefault:`` is the PNG itself


def embedded_path(asset: Any) -> str | None:
    """The archive path an ``embeded://`` asset names, else None."""
    uri = asset.get("uri") if isinstance(asset, dict) else None
    if isinstance(uri, str) and uri.startswith(EMBEDDED):
        return uri[len(EMBEDDED) :]
    return None


def main_icon_index(assets: list[Any]) -> int | None:
    """Which embedded icon import keeps as the avatar: the one named ``main``, else the first."""
    icons = [
        i
        for i, a in enumerate(assets)
        if isinstance(a, dict) and a.get("type") == "icon" and embedded_path(a) is not None
    ]
    icons.sort(key=lambda i: assets[i].get("name") != "main")
    return icons[0] if icons else None


def card_assets(card: Any) -> list[Any] | None:
    """The ``data.assets`` list of a parsed card, if it has one."""
    data = card.get("data") if isinstance(card, dict) else None
    assets = data.get("assets") if isinstance(data, dict) else None
    return assets if isinstance(assets, list) else None


def exportable_assets(assets: list[Any], icon_is_image: bool) -> list[Any]:
    """``assets`` without the embedded ones, whose bytes are not kept; with ``icon_is_image`` (a card
    PNG of the persona's own icon) the main icon stays, pointing at the PNG as ``ccdefault:``."""
    main = main_icon_index(assets) if icon_is_image else None
    kept: list[Any] = []
    for i, asset in enumerate(assets):
        if i == main:
            kept.append({**asset, "uri": DEFAULT_URI})
        elif embedded_path(asset) is None:
            kept.append(asset)
    return kept

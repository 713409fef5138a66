"""Persona avatars as files Chainlit serves from its ``public/`` folder (no Chainlit import here)."""

from __future__ import annotations

import hashlib
import html
from pathlib import Path

from vstreamer.persona import Persona


def avatar_url(persona: Persona) -> str:
    """Where the browser fetches the persona's avatar (written by :func:`write_avatars`)."""
    suffix = "png" if persona.avatar_png else "svg"
    return f"/public/avatars/{persona.id}.{suffix}"


def write_avatars(personas: list[Persona], public_dir: Path) -> None:
    """The card image when the persona has one, else a generated initial-letter badge.

    A file already holding the right image is left alone, so this runs whenever personas are listed: one imported
    or replaced while the UI runs gets its avatar too.
    """
    folder = public_dir / "avatars"
    folder.mkdir(parents=True, exist_ok=True)
    for persona in personas:
        if persona.avatar_png:
            path, image = folder / f"{persona.id}.png", persona.avatar_png
        else:
            path, image = folder / f"{persona.id}.svg", _letter_avatar(persona).encode()
        if not (path.is_file() and path.stat().st_size == len(image) and path.read_bytes() == image):
            path.write_bytes(image)


def _letter_avatar(persona: Persona) -> str:
    hue = int(hashlib.sha1(persona.id.encode()).hexdigest()[:4], 16) % 360
    letter = html.escape(persona.char_name.strip()[:1].upper() or "?")
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 64 64">'
        f'<circle cx="32" cy="32" r="32" fill="hsl({hue},65%,55%)"/>'
        '<text x="32" y="42" font-size="30" text-anchor="middle" fill="#fff" '
        f'font-family="sans-serif">{letter}</text></svg>'
    )

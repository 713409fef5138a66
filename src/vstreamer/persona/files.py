"""Loading personas from files: format detection by content and suffix, with size limits."""

from __future__ import annotations

import base64
import binascii
import logging
import lzma
import struct
import zlib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from vstreamer.errors import PersonaError
from vstreamer.persona.assets import card_assets, embedded_path
from vstreamer.persona.cards import card_kind, looks_like_card, persona_from_card
from vstreamer.persona.charx import read_charx
from vstreamer.persona.limits import (
    MAX_FILE_BYTES,
    MAX_TEXT_BYTES,
    describe_validation_error,
    parse_json,
    parse_toml,
    parse_yaml,
)
from vstreamer.persona.lorebook import check_lorebook
from vstreamer.persona.model import Persona
from vstreamer.persona.png import SIGNATURE, card_chunk_text, find_card_chunks, strip_card_chunks

logger = logging.getLogger(__name__)

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_TEXT_SUFFIXES = {".json", ".yaml", ".yml", ".toml"}
# Python errors that malformed input could still surface from the stdlib or pydantic
_INPUT_ERRORS = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    RecursionError,
    UnicodeError,
    OverflowError,
    zlib.error,
    lzma.LZMAError,
    struct.error,
)


def looks_binary(data: bytes) -> bool:
    """True for PNG and zip (CHARX) content."""
    return data.startswith(SIGNATURE) or data.startswith(_ZIP_MAGIC)


def read_limited(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a file of at most ``limit`` bytes."""
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError as exc:
        raise PersonaError(f"{path}: no such file") from exc
    except OSError as exc:
        raise PersonaError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if len(data) > limit:
        raise PersonaError(f"{path.name}: file is larger than the {limit} bytes allowed")
    return data


def load_persona(path: str | Path) -> Persona:
    """Load a persona from our YAML/TOML/JSON, a card JSON (V1/V2/V3), a card PNG or a CHARX file."""
    path = Path(path)
    return load_persona_bytes(read_limited(path), path.name)


def load_persona_bytes(data: bytes, filename: str) -> Persona:
    """Like ``load_persona`` for bytes; ``filename`` gives the suffix and names the file in errors."""
    where = Path(filename).name or "persona"
    if len(data) > MAX_FILE_BYTES:
        raise PersonaError(f"{where}: file is {len(data)} bytes, more than the {MAX_FILE_BYTES} allowed")
    try:
        persona = _dispatch(data, where, Path(filename).suffix.lower())
        if persona.lorebook is not None:
            check_lorebook(persona.lorebook, where)
        return persona
    except PersonaError:
        raise
    except _INPUT_ERRORS as exc:
        logger.warning("unexpected error parsing persona file %s", where, exc_info=True)
        raise PersonaError(f"{where}: malformed persona file ({type(exc).__name__}: {exc})") from exc


def _dispatch(data: bytes, where: str, suffix: str) -> Persona:
    if data.startswith(SIGNATURE) or suffix in (".png", ".apng"):
        return _from_png(data, where)
    if data.startswith(_ZIP_MAGIC) or suffix == ".charx":
        return _from_charx(data, where)
    if len(data) > MAX_TEXT_BYTES:
        raise PersonaError(f"{where}: text file is larger than the {MAX_TEXT_BYTES} bytes allowed")
    if suffix in (".yaml", ".yml"):
        return persona_from_mapping(parse_yaml(data, where), where)
    if suffix == ".toml":
        return persona_from_mapping(parse_toml(data, where), where)
    if suffix == ".json" or data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
        return _from_json_object(parse_json(data, where), where)
    raise PersonaError(f"{where}: unsupported persona file type (use .yaml, .toml, .json, .png or .charx)")


def _from_json_object(obj: Any, where: str) -> Persona:
    if not isinstance(obj, dict):
        raise PersonaError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if card_kind(obj) is not None or looks_like_card(obj):
        return persona_from_card(obj, where)
    if obj.get("spec") == "lorebook_v3" or ("entries" in obj and "name" not in obj):
        raise PersonaError(f"{where}: this is a lorebook, not a persona (load it with load_lorebook)")
    return persona_from_mapping(obj, where)


def persona_from_mapping(obj: Any, where: str) -> Persona:
    """A Persona from our own format (the Persona fields; the lorebook nested)."""
    if not isinstance(obj, dict):
        raise PersonaError(f"{where}: expected a mapping of persona fields, got {type(obj).__name__}")
    if "avatar_png" in obj:
        raise PersonaError(f"{where}: 'avatar_png' cannot be set in a persona file")
    try:
        return Persona.model_validate({**obj, "source_format": "vstreamer"})
    except ValidationError as exc:
        raise PersonaError(describe_validation_error(exc, where)) from exc


def decode_chunk_json(raw: bytes, where: str) -> Any:
    """The JSON inside a card text chunk: base64 of UTF-8 (raw UTF-8 JSON is accepted too)."""
    compact = b"".join(raw.split())
    if compact.startswith(b"{"):
        return parse_json(raw, where)
    if len(compact) > MAX_TEXT_BYTES * 4 // 3 + 4:
        raise PersonaError(f"{where}: card chunk is larger than {MAX_TEXT_BYTES} bytes")
    compact += b"=" * (-len(compact) % 4)
    try:
        data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PersonaError(f"{where}: card chunk is not valid base64 ({exc})") from exc
    return parse_json(data, where)


def _from_png(data: bytes, where: str) -> Persona:
    chunks = find_card_chunks(data, where)
    # V3: "ccv3" wins when both are there, so "chara" (kept for V2 readers) is not even decoded then
    keyword = "ccv3" if "ccv3" in chunks else "chara" if "chara" in chunks else None
    if keyword is None:
        raise PersonaError(f"{where}: PNG holds no character card (no 'chara' or 'ccv3' text chunk)")
    here = f"{where}: '{keyword}' chunk"
    obj = decode_chunk_json(card_chunk_text(chunks[keyword], where), here)
    if not isinstance(obj, dict):
        raise PersonaError(f"{here} is not a JSON object")
    persona = persona_from_card(obj, where)
    return persona.model_copy(update={"avatar_png": strip_card_chunks(data, where)})


def _from_charx(data: bytes, where: str) -> Persona:
    card, icon = read_charx(data, where)
    if not isinstance(card, dict):
        raise PersonaError(f"{where}: card.json is not a JSON object")
    persona = persona_from_card(card, f"{where}: card.json")
    avatar = None
    if icon is not None:
        try:
            avatar = strip_card_chunks(icon, f"{where}: icon")
        except PersonaError as exc:  # a broken picture does not make the card unusable
            logger.warning("ignoring the icon of %s: %s", where, exc)
    _warn_unkept_assets(card, avatar is not None, where)
    return persona.model_copy(update={"avatar_png": avatar})


def _warn_unkept_assets(card: dict[str, Any], icon_kept: bool, where: str) -> None:
    """Tell the user, as the V3 spec asks, about embedded assets whose bytes are dropped (and so are
    left out of exports): all of them but the main icon."""
    embedded = sum(embedded_path(a) is not None for a in card_assets(card) or [])
    unkept = embedded - (1 if icon_kept else 0)
    if unkept > 0:
        logger.warning(
            "%s: %d embedded asset(s) not kept (of the archive's files only the main icon is kept);"
            " card exports leave them out",
            where,
            unkept,
        )

"""Lenient, typed reading of values from real-world cards.

Cards in the wild put ``null`` where a string belongs, numbers as strings, a single key where a list
belongs. These helpers accept those harmless variants and raise PersonaError naming the field for
anything else.
"""

from __future__ import annotations

import math
from typing import Any

from vstreamer.errors import PersonaError

_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off", ""}


def _wrong(where: str, expected: str, value: Any) -> PersonaError:
    return PersonaError(f"{where}: expected {expected}, got {type(value).__name__}")


def text(value: Any, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise _wrong(where, "a string", value)


def text_list(value: Any, where: str, *, split_commas: bool = False) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        parts = value.split(",") if split_commas else [value]
        return [p.strip() for p in parts if p.strip()]
    if isinstance(value, list):
        return [text(item, f"{where}[{i}]") for i, item in enumerate(value) if item is not None]
    raise _wrong(where, "a list of strings", value)


def integer(value: Any, where: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool):
        raise _wrong(where, "a number", value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise PersonaError(f"{where}: expected a number, got {value[:40]!r}") from None
        if math.isfinite(number):
            return int(number)
    raise _wrong(where, "a number", value)


def number(value: Any, where: str, default: int) -> int | float:
    """Like ``integer``, but a fractional value stays a float (ints and whole strings stay ints)."""
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, str):
        try:
            parsed = float(value.strip())
        except ValueError:
            raise PersonaError(f"{where}: expected a number, got {value[:40]!r}") from None
        if math.isfinite(parsed) and not parsed.is_integer():
            return parsed
    return integer(value, where, default)


def boolean(value: Any, where: str, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    raise _wrong(where, "true or false", value)


def mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    raise _wrong(where, "an object", value)


def entry_id(value: Any, where: str) -> int | str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise _wrong(where, "a number or string id", value)


def position(value: Any) -> str:
    """``before_char``/``after_char`` from the spec strings or SillyTavern's numeric positions.

    SillyTavern: 0 before char, 1 after char, 2/3 author's note top/bottom, 4 at depth,
    5/6 example messages top/bottom. As in SillyTavern's card export, all but 0 map to ``after_char``
    (they all come after the character's description).
    """
    if isinstance(value, str):
        return "after_char" if value.strip().lower() in ("after_char", "after", "1") else "before_char"
    if isinstance(value, int | float) and not isinstance(value, bool) and int(value) != 0:
        return "after_char"
    return "before_char"

"""Size limits for untrusted persona files, and safe parsing of their JSON/YAML/TOML text.

Every loader in this package goes through these helpers, so one place decides how big, how deep and
how wide a persona file may be.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import ValidationError

from vstreamer.errors import PersonaError

MiB = 1024 * 1024
#: whole file (PNG, CHARX)
MAX_FILE_BYTES = 20 * MiB
#: JSON/YAML/TOML text, and the decoded card inside a PNG chunk
MAX_TEXT_BYTES = 2 * MiB
#: YAML text: it parses far slower than JSON, and hand-written cards are a few KB
MAX_YAML_BYTES = 512 * 1024
#: decompressed zTXt/iTXt chunk: base64 of MAX_TEXT_BYTES of JSON (4/3 of it), with room for line breaks
MAX_INFLATED_BYTES = MAX_TEXT_BYTES * 3 // 2
#: CHARX (zip) limits
MAX_ZIP_MEMBERS = 1000
MAX_ZIP_TOTAL_BYTES = 50 * MiB
#: CHARX central directory: zipfile builds an object per record of it before any other check
MAX_ZIP_DIRECTORY_BYTES = MAX_ZIP_MEMBERS * 512
#: one string field of a persona or lore entry
MAX_STRING_CHARS = 100_000
#: entries of one lorebook
MAX_LORE_ENTRIES = 5000
#: items of a list field (tags, greetings, keys)
MAX_LIST_ITEMS = 1000
#: keys (primary and secondary) of all entries of one lorebook: each is looked for on every chat turn
MAX_LORE_KEYS = 10_000
#: regex keys of one lorebook (a regex search costs far more than a substring search)
MAX_REGEX_KEYS = 50
#: nesting of parsed data (extensions may hold arbitrary JSON)
MAX_NESTING = 64
#: values visited in one parsed document (stops YAML alias "billion laughs")
MAX_NODES = 1_000_000
#: characters of all strings (keys included) of one parsed document: what gets stored
MAX_TOTAL_CHARS = MAX_TEXT_BYTES


@dataclass(frozen=True, slots=True)
class TreeLimits:
    """How big one parsed JSON/YAML/TOML document may be."""

    text_bytes: int = MAX_TEXT_BYTES
    """Its text, in UTF-8 bytes (and in characters)."""
    total_chars: int = MAX_TOTAL_CHARS
    """Characters of all its strings, keys included."""
    nodes: int = MAX_NODES
    """Values in it."""
    nesting: int = MAX_NESTING
    """Levels of containers."""


#: what an imported persona file may hold
UPLOAD_LIMITS = TreeLimits()
#: the library's own normalized ``persona.json``. It is bigger than the upload it came from: every
#: default field is written out (about 15 values and 140 characters of key names per lore entry, with
#: MAX_LORE_ENTRIES entries), unknown card fields sit one level deeper (under ``extensions``), and
#: re-encoding grows some text (YAML/TOML quotes and tabs get escaped, ``9e15`` is written
#: ``9000000000000000.0``). A persona that imported must load again, so these are generous; the
#: library also reads each file back before it replaces the old copy.
STORED_LIMITS = TreeLimits(
    text_bytes=5 * MAX_TEXT_BYTES,
    total_chars=2 * MAX_TOTAL_CHARS,
    nodes=MAX_NODES + 20 * MAX_LORE_ENTRIES + 1000,
    nesting=MAX_NESTING + 2,
)


class _NoAliases:
    """Constructor mixin refusing YAML aliases: a node built twice is one an alias points to.

    Checked while constructing (not composing) so the C parser (``CSafeLoader``) is covered too.
    """

    constructed_objects: dict[Any, Any]
    recursive_objects: dict[Any, Any]

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        if node in self.constructed_objects or node in self.recursive_objects:
            raise yaml.constructor.ConstructorError(
                None, None, "YAML aliases are not allowed (write the value out)", node.start_mark
            )
        return super().construct_object(node, deep)  # type: ignore[misc]


class PySafeLoader(_NoAliases, yaml.SafeLoader):
    """``yaml.SafeLoader`` without aliases."""


if getattr(yaml, "__with_libyaml__", False):

    class CSafeLoader(_NoAliases, yaml.CSafeLoader):
        """``yaml.CSafeLoader`` (libyaml, much faster) without aliases."""

    YAML_LOADERS: tuple[type[Any], ...] = (CSafeLoader, PySafeLoader)
else:  # pragma: no cover - PyYAML built without libyaml
    YAML_LOADERS = (PySafeLoader,)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode_text(data: bytes, where: str, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """UTF-8 text of at most ``max_bytes`` (a BOM is dropped)."""
    if len(data) > max_bytes:
        raise PersonaError(f"{where}: text is {len(data)} bytes, more than the {max_bytes} allowed")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PersonaError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def parse_json(data: bytes | str, where: str, limits: TreeLimits = UPLOAD_LIMITS) -> Any:
    """Parse JSON text within the size, depth and node limits."""
    text = decode_text(data, where, limits.text_bytes) if isinstance(data, bytes) else data
    if len(text) > limits.text_bytes:
        raise PersonaError(f"{where}: JSON text is longer than {limits.text_bytes} characters")
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except RecursionError as exc:
        raise PersonaError(f"{where}: JSON is nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError is a ValueError
        raise PersonaError(f"{where}: invalid JSON: {exc}") from exc
    check_tree(value, where, limits)
    return value


def parse_yaml(data: bytes, where: str, loader: type[Any] = YAML_LOADERS[0]) -> Any:
    """Parse YAML with a safe loader within the limits; no aliases, only JSON-like values."""
    if len(data) > MAX_YAML_BYTES:
        raise PersonaError(
            f"{where}: YAML text is {len(data)} bytes, more than the {MAX_YAML_BYTES} allowed"
            " (use JSON for bigger personas)"
        )
    text = decode_text(data, where)
    try:
        value = yaml.load(text, Loader=loader)  # a safe loader (no aliases)
    except RecursionError as exc:
        raise PersonaError(f"{where}: YAML is nested too deeply") from exc
    except yaml.YAMLError as exc:
        raise PersonaError(f"{where}: invalid YAML: {exc}") from exc
    check_tree(value, where)
    return value


def parse_toml(data: bytes, where: str) -> Any:
    """Parse TOML within the limits; only JSON-like values are allowed."""
    text = decode_text(data, where)
    try:
        value = tomllib.loads(text)
    except RecursionError as exc:
        raise PersonaError(f"{where}: TOML is nested too deeply") from exc
    except tomllib.TOMLDecodeError as exc:
        raise PersonaError(f"{where}: invalid TOML: {exc}") from exc
    check_tree(value, where)
    return value


_SCALARS = (str, int, float, bool, type(None))


def check_tree(value: Any, where: str, limits: TreeLimits = UPLOAD_LIMITS) -> None:
    """Reject values that are too deep, too many, too long together (aliases, cycles), not JSON-like
    (inf and nan included), or text that is not valid Unicode.

    Iterative, so hostile nesting cannot exhaust the Python stack.
    """
    stack: list[tuple[Any, int, str]] = [(value, 0, "")]
    visited = chars = 0
    while stack:
        node, depth, path = stack.pop()
        visited += 1
        if visited > limits.nodes:
            raise PersonaError(f"{where}: document holds more than {limits.nodes} values")
        if isinstance(node, str):
            chars += len(node)
            if chars > limits.total_chars:
                raise PersonaError(
                    f"{where}: document holds more than {limits.total_chars} characters of text"
                )
            _check_unicode(node, where, path)
        if depth > limits.nesting:
            raise PersonaError(f"{where}: data nested deeper than {limits.nesting} levels at {_shown(path)}")
        if isinstance(node, float) and not math.isfinite(node):
            # JSON has no inf/nan: such a value could be neither stored nor exported
            raise PersonaError(f"{where}: {node!r} at {_shown(path)} is not a finite number")
        if isinstance(node, _SCALARS):
            continue
        if isinstance(node, Mapping):
            for key, item in node.items():
                if not isinstance(key, str):
                    raise PersonaError(f"{where}: non-string key {key!r} at {_shown(path)}")
                chars += len(key)
                child = f"{path}.{key}" if path else key
                _check_unicode(key, where, child)
                stack.append((item, depth + 1, child))
        elif isinstance(node, list):
            stack.extend((item, depth + 1, f"{path}[{i}]") for i, item in enumerate(node))
        else:
            kind = type(node).__name__
            raise PersonaError(f"{where}: unsupported value of type {kind} at {_shown(path)}")


def _check_unicode(text: str, where: str, path: str) -> None:
    """Refuse lone surrogates (what a JSON ``\\ud800`` escape decodes to): text that cannot be written as
    UTF-8 would only fail later, when the persona is stored or sent back to a client."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        raise PersonaError(
            f"{where}: text at {_shown(path)} holds a lone surrogate (\\u{code:04x}), which is not valid Unicode"
        ) from exc


def _shown(path: str) -> str:
    """``path`` for an error message: short, and printable even when it holds a lone surrogate."""
    shown = path if len(path) <= 120 else path[:120] + "..."
    return shown.encode("utf-8", "backslashreplace").decode("utf-8") or "<root>"


def describe_validation_error(exc: ValidationError, where: str, max_errors: int = 5) -> str:
    """One readable line per problem, naming the offending field."""
    parts: list[str] = []
    for err in exc.errors()[:max_errors]:
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown field '{loc}'")
        else:
            parts.append(f"field '{loc}': {err['msg']}")
    more = exc.error_count() - max_errors
    if more > 0:
        parts.append(f"and {more} more problem(s)")
    return f"{where}: invalid persona: " + "; ".join(parts)

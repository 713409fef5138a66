"""Lexicon files: terms grouped by category, with per-category action, severity and allow-list.

A lexicon folder holds ``<category>.txt`` files (one term a line, ``#`` starts a comment) and an
optional ``categories.toml``::

    [categories.drugs]
    action = "block"          # block | mask | flag
    severity = 3              # 1 (low) .. 3 (high)
    allow = ["冰毒品鉴"]       # benign phrases that contain a listed term
    files = ["drugs.txt"]     # default: <category>.txt
    ignore = ["..."]          # listed terms to drop (noisy third-party lists)
    pinyin = false            # also match homophones and Latin pinyin ("bing du"), see pinyin.py

    [[patterns]]              # regular-expression rules over the normalised text
    category = "spam"
    pattern = "加(?:微|v|vx|wx)"

Term syntax: ``a+b+c`` fires when all parts occur in one message; a Latin term must stand as a
word (``ass`` does not match "class") unless it ends or starts with ``*`` (``fuck*`` matches
"fucking"). A folder without ``categories.toml`` maps each file to a category of the same name with
action ``flag``; a built-in profile is used for folders with a known name (see ``profiles/``).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vstreamer.errors import ConfigError
from vstreamer.safety.normalize import normalize

Action = Literal["block", "mask", "flag"]
DEFAULT_DIR = Path(__file__).with_name("lexicon")
PROFILES_DIR = Path(__file__).with_name("profiles")
CONFIG_NAME = "categories.toml"


class CategoryConfig(BaseModel):
    """One category of a lexicon folder, as written in ``categories.toml``."""

    model_config = ConfigDict(extra="forbid")
    action: Action = "flag"
    severity: int = Field(default=1, ge=1, le=3)
    allow: list[str] = []
    files: list[str] | None = None
    ignore: list[str] = []
    """Listed terms to drop (compared after normalisation, so variants go too)."""
    label: str = ""
    pinyin: bool = False
    """Also match the Chinese terms written with homophone characters or in Latin pinyin."""


class PatternConfig(BaseModel):
    """A regular-expression rule, matched against the normalised text."""

    model_config = ConfigDict(extra="forbid")
    category: str
    pattern: str
    name: str = ""


class LexiconConfig(BaseModel):
    """The whole ``categories.toml`` file."""

    model_config = ConfigDict(extra="forbid")
    categories: dict[str, CategoryConfig] = {}
    patterns: list[PatternConfig] = []
    allow: list[str] = []
    """Benign phrases that suppress matches of every category."""
    file_map: dict[str, str] = {}
    """Profile only: file stem -> category name, for folders without their own config."""
    min_length: int = 2
    """Terms of this folder shorter than this (in normalised characters) are dropped."""
    min_ascii_length: int = 1
    """Terms of this folder made only of Latin letters and shorter than this are dropped
    (third-party lists hold English stop words such as "is", "this")."""


@dataclass(frozen=True, slots=True)
class Category:
    """A category as used by the matcher and the policy."""

    name: str
    action: Action
    severity: int
    label: str = ""
    pinyin: bool = False
    """Whether homophones and Latin pinyin of its terms match too."""


@dataclass(frozen=True, slots=True)
class Term:
    """One listed term."""

    text: str
    """The term as written in the file (combination parts joined by ``+``)."""
    category: str
    rule: str
    """Where it comes from: ``<folder>/<file>:<line>``."""
    parts: tuple[str, ...]
    """The parts that must all occur (one part for a plain term)."""
    open_start: bool = False
    open_end: bool = False


@dataclass(frozen=True, slots=True)
class Allow:
    phrase: str
    category: str | None
    """None: suppresses every category."""


@dataclass(slots=True)
class Lexicon:
    """Everything loaded from a set of lexicon folders."""

    categories: dict[str, Category] = field(default_factory=dict)
    terms: list[Term] = field(default_factory=list)
    allows: list[Allow] = field(default_factory=list)
    patterns: list[tuple[str, str, str]] = field(default_factory=list)
    """(category, pattern, rule name)."""
    ignored: set[str] = field(default_factory=set)
    min_length: int = 2


def _read_config(folder: Path) -> LexiconConfig:
    """The folder's config: its own file, else the profile of its name, else the defaults."""
    path = folder / CONFIG_NAME
    if not path.is_file():
        path = PROFILES_DIR / f"{folder.name}.toml"
    if not path.is_file():
        return LexiconConfig()
    try:
        cfg = LexiconConfig.model_validate(tomllib.loads(_read_utf8(path)))
    except (tomllib.TOMLDecodeError, ValidationError) as exc:
        raise ConfigError(f"invalid lexicon config {path}: {exc}") from exc
    for i, p in enumerate(cfg.patterns):
        try:
            re.compile(p.pattern)
        except re.error as exc:
            raise ConfigError(
                f"invalid regular expression in {path}, [[patterns]] #{i + 1}: {p.pattern!r}: {exc}"
            ) from exc
    return cfg


def _read_utf8(path: Path) -> str:
    """The file's text; ConfigError naming the file and line when it cannot be read or is not UTF-8."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read lexicon file {path}: {exc}") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path}, line {line}: not UTF-8 text (save the file as UTF-8)") from exc


def parse_term(line: str, category: str, rule: str) -> Term | None:
    """Parse one lexicon line; None for blank lines and comments."""
    text = line.strip().lstrip("\ufeff")
    if not text or text.startswith("#"):
        return None
    open_start = len(text) > 1 and text.startswith("*")
    open_end = len(text) > 1 and text.endswith("*")
    core = text[1 if open_start else 0 : len(text) - 1 if open_end else len(text)]
    parts = tuple(p.strip() for p in core.split("+"))
    if len(parts) > 1 and not all(parts):
        parts = (core,)
    return Term(text, category, rule, parts, open_start, open_end)


def _term_files(folder: Path, cfg: LexiconConfig) -> Iterable[tuple[Path, str]]:
    explicit = {f: name for name, c in cfg.categories.items() for f in (c.files or [])}
    for path in sorted(folder.rglob("*.txt")):
        rel = path.relative_to(folder).as_posix()
        if rel in explicit or path.name in explicit:
            yield path, explicit.get(rel) or explicit[path.name]
            continue
        yield path, cfg.file_map.get(path.stem, path.stem)


def _load_folder(folder: Path, lex: Lexicon) -> None:
    if not folder.is_dir():
        raise ConfigError(f"lexicon folder not found: {folder}")
    cfg = _read_config(folder)
    lex.min_length = max(lex.min_length, cfg.min_length)
    for name, c in cfg.categories.items():
        old = lex.categories.get(name)
        if old is None or c.severity >= old.severity:
            lex.categories[name] = Category(name, c.action, c.severity, c.label or name, c.pinyin)
        lex.allows.extend(Allow(p, name) for p in c.allow)
        lex.ignored.update(normalize(x) for x in c.ignore)
    lex.allows.extend(Allow(p, None) for p in cfg.allow)
    for i, p in enumerate(cfg.patterns):
        lex.patterns.append((p.category, p.pattern, p.name or f"{folder.name}/pattern[{i}]"))
        lex.categories.setdefault(p.category, Category(p.category, "flag", 1, p.category))
    for path, category in _term_files(folder, cfg):
        lex.categories.setdefault(category, Category(category, "flag", 1, category))
        lines = _read_utf8(path).splitlines()
        rel = f"{folder.name}/{path.relative_to(folder).as_posix()}"
        for n, line in enumerate(lines, 1):
            term = parse_term(line, category, f"{rel}:{n}")
            if term is not None and normalize(term.text) not in lex.ignored and _long_enough(term, cfg):
                lex.terms.append(term)


def _long_enough(term: Term, cfg: LexiconConfig) -> bool:
    if len(term.parts) > 1:
        return True
    text = term.parts[0]
    if text.isascii() and text.isalpha() and len(text) < cfg.min_ascii_length:
        return False
    return len(normalize(text)) >= cfg.min_length


def load_lexicon(folders: Sequence[Path], *, include_default: bool = True) -> Lexicon:
    """Load the curated default lexicon (unless told not to) and extra folders, in order."""
    lex = Lexicon()
    for folder in ([DEFAULT_DIR] if include_default else []) + [Path(f) for f in folders]:
        _load_folder(folder, lex)
    return lex


def fingerprint(folders: Sequence[Path], *, include_default: bool = True) -> tuple[tuple[str, int, int], ...]:
    """Paths, sizes and modification times of every file a lexicon set reads (to detect edits)."""
    out: list[tuple[str, int, int]] = []
    for folder in ([DEFAULT_DIR] if include_default else []) + [Path(f) for f in folders]:
        for path in sorted(Path(folder).rglob("*")):
            if path.suffix in (".txt", ".toml") and path.is_file():
                st = path.stat()
                out.append((str(path), st.st_size, st.st_mtime_ns))
    return tuple(out)

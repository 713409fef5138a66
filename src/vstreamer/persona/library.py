"""The persona library: bundled personas plus the ones a user imported (and those imported through the gateway's API).

User personas live in ``user_dir/<id>/``: ``persona.json`` (normalized, our format, compact JSON),
``avatar.png`` (when the card had an image) and ``original<suffix>`` (the bytes as imported). A folder
is written aside and swapped in only once its ``persona.json`` reads back, so an import either gives a
persona that loads or leaves the previous copy as it was. Methods do blocking
file I/O: call them from a worker thread in async code. Returned personas are shared: treat them as
read-only (use ``model_copy`` to change one).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import uuid
from collections.abc import Iterable, Sequence
from functools import cache
from importlib import resources
from pathlib import Path

from pydantic import ValidationError

from vstreamer.errors import PersonaError, PersonaNotFound
from vstreamer.persona.files import load_persona_bytes, read_limited
from vstreamer.persona.limits import STORED_LIMITS, describe_validation_error, parse_json
from vstreamer.persona.model import ID_PATTERN, Persona

logger = logging.getLogger(__name__)

PERSONA_FILE = "persona.json"
AVATAR_FILE = "avatar.png"
_ID = re.compile(ID_PATTERN)


@cache
def bundled_personas() -> tuple[Persona, ...]:
    """The personas shipped with the package, sorted by id."""
    folder = resources.files("vstreamer.persona").joinpath("bundled")
    found = [
        load_persona_bytes(item.read_bytes(), item.name)
        for item in folder.iterdir()
        if item.name.endswith((".yaml", ".yml", ".toml", ".json"))
    ]
    return tuple(sorted(found, key=lambda p: p.id))


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def stored_persona(data: str, avatar: bytes | None) -> Persona:
    """A persona imported through the gateway's API, from its database row (its JSON and its avatar, kept apart).

    Raises:
        ValueError: the JSON is no persona (pydantic's ValidationError is one).
    """
    return Persona.model_validate_json(data).model_copy(update={"avatar_png": avatar})


def find_persona(everyone: Sequence[Persona], id_or_name: str) -> Persona | None:
    """The persona a chat's ``model`` (or ``--persona``) names, by one rule everywhere (the gateway's catalog, the
    command line, the web UI): an id as given, then an id, a name and a nickname in any case, each tried on every
    persona in ``everyone``'s order (files first, then those imported through the API, by id) before the next."""
    wanted = id_or_name.strip().casefold()
    for match in (
        lambda p: p.id == id_or_name,
        lambda p: p.id.casefold() == wanted,
        lambda p: p.name.strip().casefold() == wanted,
        lambda p: bool(p.nickname) and p.nickname.strip().casefold() == wanted,
    ):
        for persona in everyone:
            if match(persona):
                return persona
    return None


class PersonaLibrary:
    """Bundled personas first, then user-imported ones from ``user_dir`` (which may not exist yet), then ``stored``.

    ``stored``: personas imported through the gateway's API, which live in the database; a snapshot the caller loaded
    (:func:`vstreamer.runtime.stored_personas`), so that the command line sees what the gateway serves. The gateway
    itself keeps them in its catalog instead, which follows imports and deletes as they happen.
    """

    def __init__(self, user_dir: Path | None, *, stored: Iterable[Persona] = ()) -> None:
        self.user_dir = Path(user_dir) if user_dir is not None else None
        self._bundled = {p.id: p for p in bundled_personas()}
        self.stored: dict[str, Persona] = {}
        self.use_stored(stored)
        self._user_cache: dict[str, tuple[tuple[int, int], Persona]] = {}
        self.unreadable: dict[str, str] = {}
        """User personas whose files do not load (id -> why), as of the last listing: skipped, but deletable."""

    def use_stored(self, stored: Iterable[Persona]) -> None:
        """Take a fresher snapshot of the personas imported through the gateway's API (the web UI's, at each listing)."""
        self.stored = {p.id: p for p in stored if p.id not in self._bundled}

    # --- reading ---------------------------------------------------------------------------------

    def list(self) -> list[Persona]:
        """Bundled personas, then user ones, then stored ones (the id of a file wins), each group sorted by id."""
        users = self._user_personas()
        stored = [p for i, p in sorted(self.stored.items()) if i not in users]
        return [*self._bundled.values(), *users.values(), *stored]

    def get(self, id_or_name: str) -> Persona:
        """A persona by id, else by case-insensitive name (or nickname)."""
        if id_or_name in self._bundled:
            return self._bundled[id_or_name]
        if id_or_name in self.stored:  # first, as the gateway's catalog does
            return self.stored[id_or_name]
        everyone = self.list()
        found = find_persona(everyone, id_or_name)
        if found is not None:
            return found
        wanted = id_or_name.strip().casefold()
        damaged = self.unreadable.get(id_or_name) or self.unreadable.get(wanted)
        if damaged is not None:  # "no persona" sent people looking for a persona whose folder is right there
            raise PersonaNotFound(f"persona {id_or_name!r} cannot be read: {damaged}")
        available = ", ".join(p.id for p in everyone) or "none"
        raise PersonaNotFound(f"no persona {id_or_name!r}; available: {available}")

    def _user_personas(self) -> dict[str, Persona]:
        if self.user_dir is None or not self.user_dir.is_dir():
            return {}
        fresh: dict[str, tuple[tuple[int, int], Persona]] = {}
        unreadable: dict[str, str] = {}
        for folder in sorted(self.user_dir.iterdir()):
            if folder.name.startswith(".") or not _ID.match(folder.name) or not folder.is_dir():
                continue
            stamp = _stamp(folder / PERSONA_FILE)
            if stamp is None:
                continue
            cached = self._user_cache.get(folder.name)
            if cached is not None and cached[0] == stamp:
                fresh[folder.name] = cached
                continue
            try:
                fresh[folder.name] = (stamp, self._read_stored(folder))
            except PersonaError as exc:
                logger.warning("skipping unreadable user persona %s: %s", folder, exc)
                unreadable[folder.name] = str(exc)
        self._user_cache, self.unreadable = fresh, unreadable
        return {key: persona for key, (_, persona) in fresh.items() if key not in self._bundled}

    @staticmethod
    def _read_stored(folder: Path) -> Persona:
        persona = _read_persona_file(folder / PERSONA_FILE, folder.name)
        avatar = folder / AVATAR_FILE
        if avatar.is_file():
            persona = persona.model_copy(update={"avatar_png": read_limited(avatar)})
        return persona

    # --- writing ---------------------------------------------------------------------------------

    def import_file(self, path: Path, *, replace: bool = False) -> Persona:
        """Validate a persona file, store a normalized copy under ``user_dir`` and return it."""
        path = Path(path)
        return self.import_bytes(read_limited(path), path.name, replace=replace)

    def import_bytes(self, data: bytes, filename: str, *, replace: bool = False) -> Persona:
        """Like ``import_file`` for bytes (``filename`` gives the format and names errors)."""
        user_dir = self._require_user_dir()
        persona = load_persona_bytes(data, filename)
        if persona.id in self._bundled:
            raise PersonaError(f"id {persona.id!r} belongs to a bundled persona; give the import another id")
        if persona.id in self.stored:  # a file of that id would shadow it in one place and not in another
            raise PersonaError(
                f"a persona with id {persona.id!r} was imported through the API (it is kept in the database); "
                "delete that one first, or give this one another id"
            )
        target = user_dir / persona.id
        if target.exists() and not replace:
            raise PersonaError(f"a persona with id {persona.id!r} already exists; replace it with --replace")
        self._write(target, persona, data, filename)
        return persona

    def delete(self, persona_id: str) -> None:
        """Remove a user persona by id, even one whose files no longer load; bundled ones cannot be deleted (nor stored
        ones here: they are the database's)."""
        if persona_id in self._bundled:
            raise PersonaError(f"{persona_id!r} is a bundled persona and cannot be deleted")
        user_dir = self.user_dir
        folder = user_dir / persona_id if user_dir is not None and _ID.match(persona_id) else None
        if folder is None or not (folder / PERSONA_FILE).is_file():
            raise PersonaNotFound(f"no user persona {persona_id!r}")
        shutil.rmtree(folder)
        self._user_cache.pop(persona_id, None)

    def _require_user_dir(self) -> Path:
        if self.user_dir is None:
            raise PersonaError("no user persona directory is configured")
        try:
            self.user_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PersonaError(f"cannot create {self.user_dir}: {exc.strerror or exc}") from exc
        return self.user_dir

    @staticmethod
    def _write(target: Path, persona: Persona, original: bytes, filename: str) -> None:
        suffix = Path(filename).suffix.lower()
        suffix = suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else ".bin"
        staging = target.with_name(f".tmp-{persona.id}-{uuid.uuid4().hex[:8]}")
        retired = target.with_name(f".old-{persona.id}-{uuid.uuid4().hex[:8]}")
        normalized = persona.model_dump(mode="json", exclude={"avatar_png"})
        try:
            staging.mkdir()
            (staging / f"original{suffix}").write_bytes(original)
            if persona.avatar_png is not None:
                (staging / AVATAR_FILE).write_bytes(persona.avatar_png)
            # compact: indenting 5000 lore entries doubles the file
            text = json.dumps(normalized, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            (staging / PERSONA_FILE).write_text(text, encoding="utf-8")
            _read_back(staging / PERSONA_FILE, persona.id)
            if target.exists():
                target.rename(retired)
            staging.rename(target)
        except OSError as exc:
            if retired.exists() and not target.exists():
                with contextlib.suppress(OSError):
                    retired.rename(target)  # the swap failed half-way: put the previous copy back
            raise PersonaError(f"cannot store persona {persona.id!r}: {exc.strerror or exc}") from exc
        except ValueError as exc:  # (UnicodeEncodeError too) text or numbers JSON cannot hold
            raise PersonaError(f"cannot store persona {persona.id!r}: {exc}") from exc
        finally:
            for leftover in (staging, retired):
                if leftover.exists():
                    shutil.rmtree(leftover, ignore_errors=True)


def _read_persona_file(path: Path, persona_id: str) -> Persona:
    """The persona in a library ``persona.json`` that must have id ``persona_id``.

    Read with STORED_LIMITS, not the upload limits: the normalized form of an upload is bigger.
    """
    where = f"{persona_id}/{PERSONA_FILE}"
    obj = parse_json(read_limited(path, STORED_LIMITS.text_bytes), where, STORED_LIMITS)
    try:
        persona = Persona.model_validate(obj)
    except ValidationError as exc:
        raise PersonaError(describe_validation_error(exc, where)) from exc
    if persona.id != persona_id:
        raise PersonaError(f"{where}: id {persona.id!r} does not match its folder")
    return persona


def _read_back(path: Path, persona_id: str) -> None:
    """Refuse a freshly written ``persona.json`` that later loads would skip as unreadable."""
    try:
        _read_persona_file(path, persona_id)
    except PersonaError as exc:
        raise PersonaError(
            f"cannot store persona {persona_id!r}: its stored copy would not load ({exc})"
        ) from exc

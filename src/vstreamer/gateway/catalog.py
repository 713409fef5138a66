"""The personas the gateway serves: bundled and file-imported ones, plus those imported through the API."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from vstreamer.errors import PersonaError, PersonaNotFound
from vstreamer.gateway.errors import APIError
from vstreamer.persona import Persona, PersonaLibrary, load_persona_bytes
from vstreamer.persona.library import find_persona, stored_persona
from vstreamer.store import Store

logger = logging.getLogger(__name__)

PERSONAS = ("personas",)
"""What the gateway's workers count imports and deletes of personas under (:mod:`vstreamer.store.shared`)."""


class PersonaCatalog:
    """Read-mostly: stored personas are loaded once and kept in memory; imports update both."""

    FILE_CHECK_S = 1.0
    """How long a persona read from the library's files is served before its files are read again (in the
    background: the request that notices serves the version in memory)."""

    def __init__(self, library: PersonaLibrary, store: Store) -> None:
        self.library = library
        self.store = store
        self._stored: dict[str, Persona] = {}
        self._owners: dict[str, str] = {}
        """Who imported each stored persona: only that API key may replace or delete it."""
        self._recent: dict[str, tuple[float, Persona]] = {}
        self._refreshing: dict[str, asyncio.Task[None]] = {}
        self._generation = 0
        """Bumped whenever every remembered persona is forgotten (an import or a delete)."""
        self._changing = asyncio.Lock()
        """Held by an import or a delete from its checks to its last change (of the store and of memory)."""
        self._stamp = 0
        """The other workers' imports and deletes when the stored personas were read."""

    async def load(self) -> None:
        stamp = self.store.cache.stamp(PERSONAS)
        rows = await self.store.persona_rows()
        loaded, owners = {}, {}
        for data, avatar, owner in rows:
            persona = stored_persona(data, avatar)
            loaded[persona.id] = persona
            owners[persona.id] = owner
        self._stored, self._owners, self._stamp = loaded, owners, stamp

    async def _current(self) -> None:
        """Read the stored personas again if another worker imported or deleted one since they were read."""
        if self.store.cache.stamp(PERSONAS) != self._stamp:
            await self._reload()

    async def list(self) -> list[Persona]:
        await self._current()
        files = await asyncio.to_thread(self.library.list)
        known = {p.id for p in files}
        return files + [p for i, p in sorted(self._stored.items()) if i not in known]

    async def get(self, id_or_name: str) -> Persona:
        # Several workers: another may have imported or deleted one (checked only then: it costs a coroutine).
        if self.store.cache.shared is not None:
            await self._current()
        if id_or_name in self._stored:
            return self._stored[id_or_name]
        recent = self._recent.get(id_or_name)
        if recent is not None:
            # Every chat request asks: it is answered from memory, and a persona read more than FILE_CHECK_S ago is
            # read again in the background (no file check, no thread hop on the request's path).
            if recent[0] <= time.monotonic() and id_or_name not in self._refreshing:
                self._refreshing[id_or_name] = asyncio.get_running_loop().create_task(
                    self._refresh(id_or_name)
                )
            return recent[1]
        persona = await asyncio.to_thread(self._resolve, id_or_name, self._stored_by_id())
        if not self.is_stored(persona.id):
            self._remember(
                id_or_name, persona
            )  # a file's: re-read now and then (a stored one changes by import)
        return persona

    async def model(self, name: str) -> Persona:
        """The persona a request names as its ``model``. One that names none is OpenAI's 404 for an unknown model
        (``model_not_found``, ``param: model``), alike from the chat route and ``/v1/models/{id}``: clients tell it
        from a missing session, which is a 404 too, by that code."""
        try:
            return await self.get(name)
        except PersonaNotFound as exc:
            raise APIError(404, str(exc), param="model", code="model_not_found") from None

    def _stored_by_id(self) -> Sequence[Persona]:
        """The stored personas in id order: a name two of them share (two instances' imports at once, or older
        versions') finds the same one before and after a restart, whose load changes the dict's order."""
        return [persona for _, persona in sorted(self._stored.items())]

    def _resolve(self, id_or_name: str, stored: Sequence[Persona]) -> Persona:
        """The persona ``id_or_name`` names, files first, by the rule the command line and the UI use."""
        files = self.library.list()
        known = {p.id for p in files}
        found = find_persona([*files, *(p for p in stored if p.id not in known)], id_or_name)
        return found if found is not None else self.library.get(id_or_name)  # the library words the error

    async def _refresh(self, id_or_name: str) -> None:
        generation = self._generation
        try:
            persona = await asyncio.to_thread(self._resolve, id_or_name, self._stored_by_id())
            if generation != self._generation:
                pass  # an import or a delete forgot everything meanwhile
            elif self.is_stored(persona.id):
                self._recent.pop(id_or_name, None)  # the file went: the stored one is found at each request
            else:
                self._remember(id_or_name, persona)
        except PersonaNotFound:
            self._recent.pop(id_or_name, None)  # gone from disk: the next request is told so
        except Exception as exc:  # noqa: BLE001 - a broken edit keeps the last good version in service
            logger.warning("persona %r could not be reloaded (the loaded version stays): %s", id_or_name, exc)
            if (loaded := self._recent.get(id_or_name)) is not None:
                self._remember(id_or_name, loaded[1])
        finally:
            self._refreshing.pop(id_or_name, None)

    async def aclose(self) -> None:
        """Stop the background re-reads (shutdown)."""
        tasks = list(self._refreshing.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._refreshing.clear()  # (a task cancelled before it ran never removed itself)

    def _forget(self) -> None:
        self._recent.clear()
        self._generation += 1

    def _remember(self, id_or_name: str, persona: Persona) -> None:
        if len(self._recent) > 1000:
            self._recent.clear()
        self._recent[id_or_name] = (time.monotonic() + self.FILE_CHECK_S, persona)

    def is_stored(self, persona_id: str) -> bool:
        return persona_id in self._stored

    async def import_bytes(self, data: bytes, filename: str, *, owner: str, replace: bool = False) -> Persona:
        persona = await asyncio.to_thread(load_persona_bytes, data, filename)
        if "\x00" in persona.name:  # stored in a column of its own, which PostgreSQL refuses it in
            raise PersonaError("the persona's name must not contain NUL characters")
        try:
            payload = persona.model_copy(update={"avatar_png": None}).model_dump_json()
        except ValueError as exc:  # text JSON cannot hold (lone surrogates): loaders refuse it already
            raise PersonaError(f"the persona cannot be stored: {exc}") from exc
        # Checked and stored as one: two keys' imports of one new id both "succeeded". The store checks again, in
        # the database, against what other instances (or this one before it loaded) stored meanwhile.
        async with self._changing:
            everyone = await self.list()
            if persona.id in {p.id for p in everyone} and not (replace and self.is_stored(persona.id)):
                raise PersonaError(f"a persona with id {persona.id!r} exists already")
            self._check_owner(persona.id, owner)
            kept = self._stored.get(persona.id)
            if kept is None or kept.name.strip().casefold() != persona.name.strip().casefold():
                # A new name is checked; a persona replaced under its own name keeps it, even if a file persona
                # added since has taken it (the files come first by name: the owner's clients name it by id).
                _check_name_free(persona, everyone)
            done = await self.store.save_persona(
                persona.id, persona.name, payload, owner=owner, avatar_png=persona.avatar_png, replace=replace
            )
            if done in ("exists", "owned"):
                await self._reload()  # another instance stored it: serve its copy from now on
                if done == "owned":
                    raise _owned_elsewhere(persona.id)
                raise PersonaError(f"a persona with id {persona.id!r} exists already")
            self._stored[persona.id] = persona
            self._owners[persona.id] = owner
            self._forget()
            self.store.cache.committed(PERSONAS)
        return persona

    async def delete(self, persona_id: str, *, owner: str) -> None:
        async with self._changing:
            await self._current()
            if not self.is_stored(persona_id):
                if persona_id not in {p.id for p in await asyncio.to_thread(self.library.list)}:
                    raise PersonaNotFound(f"no persona {persona_id!r}")
                raise PersonaError(
                    f"{persona_id!r} is not a persona imported through the API; it cannot be deleted here"
                )
            self._check_owner(persona_id, owner)
            done = await self.store.delete_persona(persona_id, owner=owner)
            if done == "owned":  # replaced with another key through another instance
                await self._reload()
                raise _owned_elsewhere(persona_id)
            self._stored.pop(persona_id, None)
            self._owners.pop(persona_id, None)
            self._forget()
            self.store.cache.committed(PERSONAS)

    async def _reload(self) -> None:
        await self.load()
        self._forget()

    def _check_owner(self, persona_id: str, owner: str) -> None:
        """Every key may use every persona; only the key that imported one may replace or delete it."""
        if persona_id in self._owners and self._owners[persona_id] != owner:
            raise _owned_elsewhere(persona_id)


def _check_name_free(persona: Persona, everyone: list[Persona]) -> None:
    """A chat's ``model`` names a persona by id, name or nickname (any case), so an import may not take another
    persona's id, name or nickname as its name or nickname, nor another's name or nickname as its id: the same word
    would find one persona or the other. A persona replaced keeps its own."""
    words = _names(persona)
    for other in everyone:
        if other.id != persona.id and (
            words & (_names(other) | {other.id.casefold()}) or persona.id.casefold() in _names(other)
        ):
            raise APIError(409, f"persona {other.id!r} ({other.name!r}) is found by the name {persona.name!r} "
                           f"or the id {persona.id!r} already: give the import a name and id no other persona has",
                           code="persona_name_taken")  # fmt: skip


def _names(persona: Persona) -> set[str]:
    """The words that find a persona besides its id: its name and its nickname, in any case."""
    return {word.strip().casefold() for word in (persona.name, persona.nickname) if word and word.strip()}


def _owned_elsewhere(persona_id: str) -> APIError:
    return APIError(403, f"persona {persona_id!r} was imported with another API key", param="persona_id",
                    type_="permission_error", code="persona_owned_elsewhere")  # fmt: skip

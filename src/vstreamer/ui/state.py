"""The web UI's process-wide state: settings, options and the runtime (opened on the server's own loop)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from vstreamer.config import Settings
from vstreamer.engine import Turn
from vstreamer.errors import PersonaError, StoreError
from vstreamer.llm import ChatMessage
from vstreamer.persona import Persona
from vstreamer.runtime import Runtime, open_runtime, stored_personas
from vstreamer.store import Store
from vstreamer.ui import texts
from vstreamer.ui.emotion import strip_emotions
from vstreamer.ui.options import UIOptions

logger = logging.getLogger(__name__)


@dataclass
class UIState:
    """What every Chainlit callback shares."""

    settings: Settings
    options: UIOptions
    app_root: Path
    """Chainlit's app root: ``.chainlit/`` config, ``public/`` avatars, ``chainlit.md``."""
    runtime: Runtime | None = None

    async def start(self) -> None:
        """Open the store and the backend, and check the configured persona; called once the server's event loop
        runs.

        Raises:
            PersonaNotFound: no persona by the ``persona`` setting.
        """
        if self.runtime is not None:
            return
        self.runtime = await open_runtime(self.settings, with_stored_personas=True)
        # Refused as the terminal chat refuses it (PersonaNotFound lists the personas): a misspelt setting otherwise
        # started a UI that quietly offered the first persona instead.
        await asyncio.to_thread(self.runtime.personas.get, self.settings.persona)
        if self.settings.backend == "local":
            # Load the embedded model now (counting tokens needs it), not on the first viewer's message.
            await self.runtime.backend.count_tokens([ChatMessage("user", "hi")])
        health = await self.runtime.backend.health()
        logger.info("backend %s (%s): %s", health.backend, health.model, "ok" if health.ok else health.detail)

    async def stop(self) -> None:
        if self.runtime is not None:
            runtime, self.runtime = self.runtime, None
            await runtime.aclose()

    def require_runtime(self) -> Runtime:
        if self.runtime is None:
            raise RuntimeError("the web UI runtime is not started yet")
        return self.runtime

    def store(self) -> Store:
        store = self.require_runtime().store
        if store is None:
            raise RuntimeError("the web UI needs the store")
        return store

    async def personas(self) -> list[Persona]:
        """Every persona: the files', then those imported through the gateway's API as the database holds them now
        (the gateway may import or delete one while the UI runs)."""
        runtime = self.require_runtime()
        if runtime.store is not None:
            try:
                runtime.personas.use_stored(await stored_personas(runtime.store))
            except StoreError as exc:  # the chat needs the database anyway; the choice stays as last read
                logger.warning(
                    "could not read the personas imported through the API (kept as they were): %s", exc
                )
        return await asyncio.to_thread(runtime.personas.list)

    def persona(self, persona_id: str | None) -> Persona:
        """The persona by id, else the configured default (a deleted persona falls back too)."""
        library = self.require_runtime().personas
        for wanted in (persona_id, self.settings.persona):
            if wanted:
                try:
                    return library.get(wanted)
                except PersonaError:
                    logger.warning("persona %r not found; using the default", wanted)
        return library.list()[0]

    def describe(self, persona_id: str) -> tuple[str, str]:
        """(display name, chat profile name) of a persona id, for stored threads."""
        try:
            persona = self.require_runtime().personas.get(persona_id)
        except PersonaError:
            return persona_id, persona_id
        return persona.name, persona.id

    def shown_turn(self, turn: Turn, persona_id: str) -> str:
        """A stored turn's text as the chat shows it."""
        if turn.role == "user":
            return turn.content
        persona = self.persona(persona_id)
        content, emotions = strip_emotions(turn.content)
        return texts.shown_reply(
            persona, content, turn.status, emotions, texts.failure_text(persona, turn.error_code)
        )


_STATE: UIState | None = None


def configure(state: UIState) -> None:
    """Set by the launcher before Chainlit imports the app module."""
    global _STATE
    _STATE = state


def current() -> UIState:
    """The configured state, or one built from the environment (``chainlit run`` on the app file)."""
    global _STATE
    if _STATE is None:
        import os

        settings = Settings.load()
        _STATE = UIState(settings, UIOptions.from_settings(settings), Path(os.getcwd()))
    return _STATE

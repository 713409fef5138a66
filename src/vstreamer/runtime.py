"""Wires settings into the running parts (backend, engine, personas) for every entry point."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from vstreamer.config import Settings
from vstreamer.engine import ContextBudget, DialogueEngine
from vstreamer.engine.embeddings import OpenAIEmbeddings
from vstreamer.engine.memory import InMemoryFacts, MemoryManager, MemoryPolicy
from vstreamer.errors import ConfigError
from vstreamer.llm import LLMBackend, SamplingParams, create_backend
from vstreamer.persona import Persona, PersonaLibrary
from vstreamer.persona.library import stored_persona
from vstreamer.safety import JsonlAuditLog, SafetyPipeline
from vstreamer.store import Store, open_store

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Everything an adapter needs to serve conversations."""

    settings: Settings
    backend: LLMBackend
    engine: DialogueEngine
    personas: PersonaLibrary
    store: Store | None = None

    async def aclose(self) -> None:
        await self.engine.aclose()  # background memory work first: it may still talk to the backend and store
        if self.engine.memory is not None and self.engine.memory.embedder is not None:
            await self.engine.memory.embedder.aclose()
        await self.backend.aclose()
        if self.engine.safety is not None:
            await asyncio.to_thread(self.engine.safety.close)  # flushes the audit log's queue to its file
        if self.store is not None:
            await self.store.close()


def build_runtime(
    settings: Settings, backend: LLMBackend | None = None, store: Store | None = None
) -> Runtime:
    """Build the runtime; ``backend`` replaces the configured one (tests, embedding)."""
    backend = backend or create_backend(settings)
    budget = ContextBudget(settings.context_window, settings.max_tokens, settings.reserve_tokens)
    defaults = SamplingParams(
        temperature=settings.temperature, top_p=settings.top_p, max_tokens=settings.max_tokens
    )
    engine = DialogueEngine(
        backend, budget, defaults=defaults, store=store, safety=build_safety(settings),
        memory=build_memory(settings, backend, budget, store), drift_repair=settings.drift_repair,
        user_commit=settings.user_commit,
    )  # fmt: skip
    return Runtime(settings, backend, engine, PersonaLibrary(settings.personas_dir), store)


def build_memory(
    settings: Settings, backend: LLMBackend, budget: ContextBudget, store: Store | None
) -> MemoryManager | None:
    """Summaries and viewer facts, kept in the store when there is one (else in the process)."""
    if not settings.memory:
        return None
    policy = MemoryPolicy(
        facts=settings.memory_facts, summary_tokens=settings.memory_summary_tokens,
        facts_tokens=settings.memory_facts_tokens, summary_batch=settings.memory_summary_batch,
        facts_per_viewer=settings.memory_facts_per_viewer,
    )  # fmt: skip
    embedder = None
    if settings.embeddings_url:
        embedder = OpenAIEmbeddings(
            settings.embeddings_url, settings.embeddings_model,
            api_key=settings.embeddings_api_key.get_secret_value(),
        )  # fmt: skip
    facts = store if store is not None else InMemoryFacts()
    return MemoryManager(backend, budget, policy=policy, facts=facts, summaries=store, embedder=embedder)


def build_safety(settings: Settings) -> SafetyPipeline | None:
    """The moderation pipeline the settings ask for (lexicons are compiled once per process and shared)."""
    if not settings.moderation:
        return None
    audit = None
    if settings.audit_log:
        try:  # checked when the settings were read: its folder may be one to make (under data_dir, say)
            settings.audit_log.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"audit_log: cannot make the folder {settings.audit_log.parent}: {exc}"
            ) from exc
        audit = JsonlAuditLog(settings.audit_log)
    return SafetyPipeline.default(lexicon_dirs=settings.lexicon_dirs, audit=audit)


async def open_runtime(
    settings: Settings, backend: LLMBackend | None = None, *, with_stored_personas: bool = False
) -> Runtime:
    """Build the runtime with its persistent store opened (and migrated).

    Args:
        with_stored_personas: the personas imported through the gateway's API join the library, as they are now
            (the command line's chat). The gateway leaves them out: its catalog serves them and follows changes.
    """
    store = await open_store(settings.database_url, settings.data_dir, session_cache=settings.session_cache)
    runtime = build_runtime(settings, backend, store)
    if with_stored_personas:
        try:
            runtime.personas = PersonaLibrary(settings.personas_dir, stored=await stored_personas(store))
        except BaseException:
            await runtime.aclose()
            raise
    return runtime


async def stored_personas(store: Store) -> list[Persona]:
    """The personas imported through the gateway's API (kept in the database), read as the gateway's catalog reads
    them; one that no longer loads is skipped with a warning rather than take the others down with it."""
    personas = []
    for data, avatar, _owner in await store.persona_rows():
        try:
            personas.append(stored_persona(data, avatar))
        except ValueError as exc:  # (pydantic's ValidationError too)
            logger.warning("skipping an unreadable persona stored in the database: %s", exc)
    return personas

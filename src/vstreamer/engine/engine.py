"""The dialogue engine: one turn = prompt within budget → streamed reply → stored turn.

Adapters only translate: every behaviour (persona, budget, moderation, interruption) lives here so the CLI,
the gateway, the web UI and the live-chat loop behave the same.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from vstreamer.engine.context import BuiltContext, ContextBudget, ContextBuilder
from vstreamer.engine.conversation import Conversation, Turn
from vstreamer.engine.events import EngineEvent, ReplyDelta, ReplyFinished, ReplyStarted
from vstreamer.errors import BackendError
from vstreamer.llm.base import LLMBackend, SamplingParams, StreamEnd

if TYPE_CHECKING:
    from vstreamer.persona import Persona

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SamplingOverrides:
    """Per-request changes to the sampling defaults (``None`` keeps the default)."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None


class TurnStore(Protocol):
    """Where turns are committed (the ``store`` package implements it)."""

    async def save_turn(self, conversation: Conversation, turn: Turn) -> None: ...


class DialogueEngine:
    """Answers conversations with a backend, keeping each persona in character and within budget."""

    def __init__(
        self,
        backend: LLMBackend,
        budget: ContextBudget,
        *,
        defaults: SamplingParams | None = None,
        store: TurnStore | None = None,
    ) -> None:
        self.backend = backend
        self.store = store
        self.budget = budget
        self.defaults = defaults or SamplingParams(max_tokens=budget.max_tokens)
        self.context = ContextBuilder(backend, budget)

    def sampling_for(self, persona: Persona, overrides: SamplingOverrides | None = None) -> SamplingParams:
        """Engine defaults, then the persona's defaults, then the request's overrides."""
        params = self.defaults
        for layer in (persona.sampling, overrides):
            if layer is None:
                continue
            changes = {
                k: getattr(layer, k)
                for k in ("temperature", "top_p", "max_tokens", "seed")
                if getattr(layer, k, None) is not None
            }
            params = replace(params, **changes)
        return replace(params, max_tokens=min(params.max_tokens, self.budget.max_tokens))

    async def build_context(
        self, conversation: Conversation, persona: Persona, *, memory: Sequence[str] = ()
    ) -> BuiltContext:
        return await self.context.build(conversation, persona, memory=memory)

    async def reply(
        self,
        conversation: Conversation,
        persona: Persona,
        user_text: str,
        *,
        overrides: SamplingOverrides | None = None,
    ) -> AsyncGenerator[EngineEvent, None]:
        """Add the user's message and stream the persona's reply.

        Closing the iterator early (client gone, stop button, Ctrl-C) stops the generation upstream and keeps the
        partial reply as an ``interrupted`` turn. A backend failure keeps it as ``failed`` and re-raises.
        """
        user_turn = Turn("user", user_text)
        conversation.turns.append(user_turn)
        await self._save(conversation, user_turn)  # committed before generation starts
        context = await self.build_context(conversation, persona)
        params = self.sampling_for(persona, overrides)
        async with aclosing(self._generate(conversation, context, params)) as events:
            async for event in events:
                yield event

    async def _generate(
        self, conversation: Conversation, context: BuiltContext, params: SamplingParams
    ) -> AsyncGenerator[EngineEvent, None]:
        turn = Turn("assistant", "", status="streaming")
        conversation.turns.append(turn)
        started = time.perf_counter()
        parts: list[str] = []
        try:
            yield ReplyStarted(turn, context.prompt_tokens)
            async with aclosing(self.backend.stream(context.messages, params)) as stream:
                async for delta in stream:
                    if isinstance(delta, StreamEnd):
                        turn.usage, turn.finish_reason = delta.usage, delta.finish_reason
                        continue
                    if not parts:
                        turn.first_token_ms = round((time.perf_counter() - started) * 1000)
                    parts.append(delta.text)
                    turn.content = "".join(parts)
                    yield ReplyDelta(delta.text)
            turn.status = "complete"
            logger.debug("reply of %d chars in %.2fs", len(turn.content), time.perf_counter() - started)
            yield ReplyFinished(turn)
        except BackendError as exc:
            turn.status, turn.error = "failed", str(exc)
            raise
        finally:
            turn.content = "".join(parts)
            turn.duration_ms = round((time.perf_counter() - started) * 1000)
            if turn.status == "streaming":
                turn.status = "interrupted"
            # Shielded: a reply cancelled by its client is still committed with its partial text.
            await asyncio.shield(self._save(conversation, turn))

    async def _save(self, conversation: Conversation, turn: Turn) -> None:
        if self.store is not None:
            await self.store.save_turn(conversation, turn)

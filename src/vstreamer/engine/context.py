"""Builds each turn's prompt within the token budget.

The persona (system message) and the post-history note are pinned; the newest turns fill what is left and the
oldest leave first; user and assistant messages alternate (:func:`alternating`). Work per turn is bounded by the
turns new since the last one, not by the window or the whole history: turn token counts are cached on the turns, and
:mod:`vstreamer.engine.window` keeps each conversation's window between turns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vstreamer.engine import prompt
from vstreamer.engine.conversation import Conversation, Turn
from vstreamer.engine.window import fit_history
from vstreamer.errors import ContextBudgetError
from vstreamer.llm.base import ChatMessage, LLMBackend
from vstreamer.llm.estimate import typical_tokens
from vstreamer.llm.roles import alternating
from vstreamer.lru import LRU

if TYPE_CHECKING:
    from vstreamer.persona import LoreEntry, Persona


@dataclass(frozen=True, slots=True)
class ContextBudget:
    """How the model's context window is shared."""

    context_window: int
    """Total tokens the model accepts (prompt + reply)."""
    max_tokens: int
    """Tokens kept for the reply."""
    reserve_tokens: int = 32
    """Safety margin (generation prompt, template quirks)."""

    @property
    def prompt_budget(self) -> int:
        return self.context_window - self.max_tokens - self.reserve_tokens


@dataclass(frozen=True, slots=True)
class BuiltContext:
    """The prompt of one turn and how it was assembled."""

    messages: tuple[ChatMessage, ...]
    prompt_tokens: int
    """Tokens of ``messages`` as counted by the backend (exact where its tokenizer is reachable; where
    :func:`alternating` joined messages and the shares are the count, a bound a few tokens over)."""
    budget: int
    history_turns: int
    """History turns that fit (the new user message not included; turns :func:`alternating` joined count apart)."""
    lore: tuple[LoreEntry, ...]
    window_start: int = 0
    """Index in ``conversation.turns`` of the oldest turn in the prompt: older turns have left the window."""
    memory: tuple[str, ...] = ()
    """Memory blocks that made it into the system message (dropped only when the persona alone barely fits)."""
    protected: tuple[str, ...] = ()
    """The instructions a reply must not recite: the system messages without their memory blocks (a summary of
    the conversation or what a viewer said is no secret, and replies may well repeat it)."""
    history_from: int = 0
    """The oldest turn the history could take (those before it are summarised)."""


class ContextBuilder:
    """Assembles prompts for one backend and budget."""

    def __init__(self, backend: LLMBackend, budget: ContextBudget) -> None:
        if budget.prompt_budget <= 0:
            raise ContextBudgetError("the context window leaves no room for a prompt")
        self.backend = backend
        self.budget = budget
        self._system_cache: LRU[tuple[str, str], int] = LRU(256)
        self._rendered: LRU[tuple[object, ...], tuple[Persona, tuple[LoreEntry, ...], ChatMessage]] = LRU(512)
        self._notes: LRU[tuple[int, str], tuple[Persona, ChatMessage | None]] = LRU(512)

    async def build(
        self,
        conversation: Conversation,
        persona: Persona,
        *,
        memory: Sequence[str] = (),
        history_from: int = 0,
    ) -> BuiltContext:
        """Prompt for replying to the conversation's last turn (the new user message); the history is taken from
        ``history_from`` on (the turns before it are in the running summary among the ``memory`` blocks)."""
        if not conversation.turns or conversation.turns[-1].role != "user":
            raise ValueError("the conversation must end with the user message to answer")
        user = conversation.user_name
        current = conversation.turns[-1]
        lore = self._active_lore(conversation, persona)
        note = self._note(persona, user)
        tail = [current.as_message(), note] if note is not None else [current.as_message()]
        budget = self.budget.prompt_budget
        fixed_cost = await self._turn_tokens(current)
        if note is not None:
            fixed_cost += await self._count(note)

        system: ChatMessage | None = None
        system_cost = 0
        include_examples = True
        ladder = ((True, True, True), (True, False, True), (False, False, True), (False, False, False))
        for include_lore, include_examples, include_memory in ladder:
            candidate = self._system_message(
                persona,
                user,
                lore if include_lore else (),
                tuple(memory) if include_memory else (),
                include_examples,
            )
            system_cost = await self._count(candidate)
            if fixed_cost + system_cost <= budget:
                system, lore = candidate, lore if include_lore else []
                memory = memory if include_memory else ()
                break
        if system is None:
            raise ContextBudgetError(
                f"the persona prompt and the new message need more than the {budget}-token prompt budget; "
                "shorten the message or raise context_window"
            )
        room = budget - fixed_cost - system_cost
        history = await fit_history(conversation, room, self._turn_tokens, start=history_from)
        messages = alternating([system, *history.messages, *tail])
        if getattr(self.backend, "counts_add_up", False):
            # The shares are the count (the history took ``used`` of ``room``): no second pass over the prompt. A
            # joined message takes no more than its parts' shares: no recount for it either.
            total = budget - room + history.used
        else:
            total = await self.backend.count_tokens(messages)
        while total > budget and history.messages:
            # Per-message shares are close but not always exact (template quirks): trim until the exact count fits.
            del history.messages[0], history.indices[0]
            messages = alternating([system, *history.messages, *tail])
            total = await self.backend.count_tokens(messages)
        if total > budget:
            raise ContextBudgetError(f"the prompt needs {total} tokens, over the {budget}-token budget")
        start = history.indices[0] if history.indices else len(conversation.turns) - 1
        instructions = (
            self._system_message(persona, user, lore, (), include_examples) if memory else system
        ).content
        return BuiltContext(
            tuple(messages),
            total,
            budget,
            len(history.messages),
            tuple(lore),
            window_start=start,
            memory=tuple(memory),
            protected=(instructions, note.content) if note is not None else (instructions,),
            history_from=history_from,
        )

    def _system_message(
        self,
        persona: Persona,
        user: str,
        lore: Sequence[LoreEntry],
        memory: tuple[str, ...],
        include_examples: bool,
    ) -> ChatMessage:
        """The rendered system message, made once per persona object, viewer name, lore and memory (with its JSON,
        once a request has carried it)."""
        key = (id(persona), user, tuple(map(id, lore)), memory, include_examples)
        cached = self._rendered.get(key)
        # The objects themselves are kept and compared: an id alone could be reused by a new object.
        if (
            cached is not None
            and cached[0] is persona
            and all(a is b for a, b in zip(cached[1], lore, strict=True))
        ):
            return cached[2]
        text = prompt.system_message(
            persona, user, lore=lore, memory=memory, include_examples=include_examples
        )
        return self._rendered.put(key, (persona, tuple(lore), ChatMessage("system", text)))[2]

    def _note(self, persona: Persona, user: str) -> ChatMessage | None:
        """The card's post-history note as a message (``None``: it has none), made once per persona object and
        viewer name, like the system message (with its JSON and token count, once a request has carried it)."""
        key = (id(persona), user)
        cached = self._notes.get(key)
        if cached is not None and cached[0] is persona:
            return cached[1]
        text = prompt.post_history_note(persona, user)
        return self._notes.put(key, (persona, ChatMessage("system", text) if text else None))[1]

    def _active_lore(self, conversation: Conversation, persona: Persona) -> list[LoreEntry]:
        book = persona.lorebook
        if book is None or not book.entries:
            return []
        depth = max(book.scan_depth, 1)
        recent = [
            t.content for t in conversation.turns[-depth:] if t.in_prompt or t is conversation.turns[-1]
        ]
        return list(
            book.activate(
                recent, count_tokens=typical_tokens, char=persona.char_name, user=conversation.user_name
            )
        )

    async def count_turn(self, turn: Turn) -> None:
        """Count ``turn``'s share of later prompts ahead of time (kept on the turn)."""
        await self._turn_tokens(turn)

    async def _turn_tokens(self, turn: Turn) -> int:
        if turn.prompt_tokens is None:
            turn.prompt_tokens = await self.backend.count_message_tokens(turn.as_message())
        return turn.prompt_tokens

    async def _count(self, message: ChatMessage) -> int:
        # A tuple, not a joined string: the rendered system text is a cached object whose hash is kept.
        key = (message.role, message.content)
        cached = self._system_cache.get(key)
        if cached is None:
            cached = await self.backend.count_message_tokens(message)
            self._system_cache.put(key, cached)
        return cached

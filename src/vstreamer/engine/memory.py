"""Memory around each turn: recall before the prompt is built, learning in the background after the reply.

* Recall: the conversation's running summary and the facts remembered about the viewer (ranked for the message,
  within a token budget) become blocks of the pinned system message.
* Learning: turns that left the context window are folded into the summary; facts the viewer states about
  themselves are extracted, de-duplicated and stored under (platform, user id). Both run as background jobs
  that a reply never waits for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from vstreamer.engine.background import BackgroundTasks
from vstreamer.engine.conversation import Conversation, Turn, new_id
from vstreamer.engine.extract import FactExtractor, worth_extracting
from vstreamer.engine.facts import Fact, ViewerKey, rank_facts, similar
from vstreamer.engine.stats import EngineStats
from vstreamer.engine.summary import Summarizer
from vstreamer.errors import VStreamerError
from vstreamer.llm.estimate import estimate_tokens

if TYPE_CHECKING:
    from vstreamer.engine.context import BuiltContext, ContextBudget
    from vstreamer.engine.embeddings import Embedder
    from vstreamer.llm.base import LLMBackend
    from vstreamer.persona import Persona

logger = logging.getLogger(__name__)
_MAX_PENDING = 16


@dataclass(frozen=True, slots=True)
class MemoryPolicy:
    """What memory does and how much of the prompt it may take."""

    summaries: bool = True
    facts: bool = True
    summary_tokens: int = 256
    """Longest running summary (capped at a quarter of the prompt budget)."""
    facts_tokens: int = 128
    """Prompt tokens for remembered facts (capped at an eighth of the prompt budget)."""
    summary_batch: int = 12
    """Turns out of the window before they are folded into the summary."""
    max_fold_turns: int = 64
    """Most turns folded at once (bounds the work per fold)."""
    facts_per_viewer: int = 200
    """Newest facts kept per viewer."""
    extract_max_tokens: int = 128


@dataclass(frozen=True, slots=True)
class Recall:
    """What memory put into one prompt."""

    blocks: tuple[str, ...] = ()
    summary_id: str | None = None
    facts: tuple[Fact, ...] = ()


class FactStore(Protocol):
    """Where facts about viewers live (the ``store`` package implements it; :class:`InMemoryFacts` too)."""

    async def add_facts(self, viewer: ViewerKey, facts: Sequence[Fact], *, keep: int = 200) -> list[Fact]: ...

    async def viewer_facts(self, viewer: ViewerKey, *, limit: int = 200) -> list[Fact]: ...

    async def delete_facts(self, viewer: ViewerKey, *, fact_id: str | None = None) -> int: ...

    async def export_facts(self, *, platform: str | None = None) -> list[Fact]: ...


class SummaryStore(Protocol):
    async def save_summary(
        self, session_id: str, summary: str, *, covers_until: str | None = None
    ) -> str: ...


class InMemoryFacts:
    """Facts kept in the process (no store configured, tests)."""

    def __init__(self) -> None:
        self._facts: dict[ViewerKey, list[Fact]] = {}
        self._clock = 0.0

    async def add_facts(self, viewer: ViewerKey, facts: Sequence[Fact], *, keep: int = 200) -> list[Fact]:
        known = self._facts.setdefault(viewer, [])
        seen = {f.normalized for f in known}
        added = []
        for fact in facts:
            if fact.normalized and fact.normalized not in seen:
                self._clock += 1
                seen.add(fact.normalized)
                added.append(replace(fact, viewer=viewer, created_at=self._clock))
        known[:0] = reversed(added)
        del known[keep:]
        return added

    async def viewer_facts(self, viewer: ViewerKey, *, limit: int = 200) -> list[Fact]:
        return list(self._facts.get(viewer, [])[:limit])

    async def delete_facts(self, viewer: ViewerKey, *, fact_id: str | None = None) -> int:
        known = self._facts.get(viewer, [])
        kept = [f for f in known if fact_id is not None and f.id != fact_id]
        self._facts[viewer] = kept
        return len(known) - len(kept)

    async def export_facts(self, *, platform: str | None = None) -> list[Fact]:
        return [f for v, fs in self._facts.items() if platform in (None, v.platform) for f in reversed(fs)]


def viewer_of(conversation: Conversation) -> ViewerKey | None:
    if not conversation.viewer_id:
        return None
    return ViewerKey(conversation.platform, conversation.viewer_id)


_BLOCKS = {
    "zh": ("【之前直播里聊过的（摘要）】", "【你记得关于{user}的事】"),
    "en": ("[Earlier on stream (summary)]", "[What you remember about {user}]"),
}


class MemoryManager:
    """Recall before each reply, learning after it (see the module docstring)."""

    def __init__(
        self,
        backend: LLMBackend,
        budget: ContextBudget,
        *,
        policy: MemoryPolicy | None = None,
        facts: FactStore | None = None,
        summaries: SummaryStore | None = None,
        embedder: Embedder | None = None,
        tasks: BackgroundTasks | None = None,
        stats: EngineStats | None = None,
    ) -> None:
        self.policy = policy or MemoryPolicy()
        self.facts = facts or InMemoryFacts()
        self.summaries = summaries
        self.embedder = embedder
        self.tasks = tasks or BackgroundTasks()
        self.stats = stats or EngineStats()
        self.summarizer = Summarizer(
            backend, max_tokens=max(min(self.policy.summary_tokens, budget.prompt_budget // 4), 16)
        )
        self.extractor = FactExtractor(backend, max_tokens=self.policy.extract_max_tokens)
        self.facts_tokens = min(self.policy.facts_tokens, budget.prompt_budget // 8)
        self._pending: dict[str, list[tuple[Conversation, Persona, Turn]]] = {}
        self.fact_filter: Callable[[str], str | None] | None = None
        """Vets a fact before it is stored (the engine's moderation: a fact reaches later system prompts, so a
        viewer must not plant instructions or banned words through it); returns the text to keep, or ``None``."""

    # --- recall -----------------------------------------------------------------------------------------

    async def recall(self, conversation: Conversation, persona: Persona, query: str) -> Recall:
        """The memory blocks for the prompt answering ``query``."""
        lang = "zh" if persona.language.lower().startswith("zh") else "en"
        summary_label, facts_label = _BLOCKS[lang]
        blocks: list[str] = []
        if self.policy.summaries and conversation.summary.strip():
            blocks.append(f"{summary_label}\n{conversation.summary.strip()}")
        chosen = await self._relevant_facts(conversation, query) if self.policy.facts else []
        if chosen:
            lines = "\n".join(f"- {fact.text}" for fact in chosen)
            blocks.append(f"{facts_label.format(user=conversation.user_name)}\n{lines}")
        return Recall(tuple(blocks), conversation.summary_id, tuple(chosen))

    async def _relevant_facts(self, conversation: Conversation, query: str) -> list[Fact]:
        viewer = viewer_of(conversation)
        if viewer is None or self.facts_tokens <= 0:
            return []
        try:
            known = await self.facts.viewer_facts(viewer, limit=self.policy.facts_per_viewer)
        except VStreamerError as exc:
            logger.warning("cannot read viewer memory: %s", exc)
            return []
        if not known:
            return []
        query_vector = None
        if self.embedder is not None and any(f.embedding for f in known):
            try:
                query_vector = (await self.embedder.embed([query]))[0]
            except VStreamerError as exc:
                logger.info("embeddings unavailable, lexical recall only: %s", exc)
        room, chosen = self.facts_tokens, []
        for fact in rank_facts(query, known, query_embedding=query_vector):
            cost = estimate_tokens(fact.text) + 2
            if cost > room:
                break
            room -= cost
            chosen.append(fact)
        return chosen

    # --- learning (background) ------------------------------------------------------------------------

    def after_turn(
        self, conversation: Conversation, persona: Persona, context: BuiltContext, user_turn: Turn
    ) -> None:
        """Schedule the background work this turn calls for; returns at once."""
        if self.policy.summaries:
            evicted = self.evicted(conversation, context.window_start)
            if len(evicted) >= self.policy.summary_batch:
                self.tasks.spawn(f"summary:{conversation.id}", self._fold(conversation, persona, evicted))
        if self.policy.facts and viewer_of(conversation) and worth_extracting(user_turn.content):
            pending = self._pending.setdefault(conversation.id, [])
            pending.append((conversation, persona, user_turn))
            del pending[:-_MAX_PENDING]
            self.tasks.spawn(f"facts:{conversation.id}", self._extract_pending(conversation.id))

    def evicted(self, conversation: Conversation, window_start: int) -> list[Turn]:
        """The oldest turns that left the window and are not in the summary yet (at most ``max_fold_turns``): when
        folds fall behind (a slow summariser, a busy chat), the next ones catch up in order and skip none."""
        covered = self._covered_index(conversation, 0)
        start = 0 if covered is None else covered + 1  # not found: older than every turn held in memory
        end = min(window_start, start + self.policy.max_fold_turns)
        return [t for t in conversation.turns[start:end] if t.in_prompt]

    @staticmethod
    def _covered_index(conversation: Conversation, lowest: int) -> int | None:
        """Index of ``summary_until`` in the turns (cached on the conversation; a bounded search otherwise)."""
        until, turns = conversation.summary_until, conversation.turns
        if until is None:
            return None
        hint = conversation.summary_index
        if hint is not None and 0 <= hint < len(turns) and turns[hint].id == until:
            return hint
        for index in range(len(turns) - 1, lowest - 1, -1):
            if turns[index].id == until:
                conversation.summary_index = index
                return index
        return None

    async def _fold(self, conversation: Conversation, persona: Persona, turns: list[Turn]) -> None:
        text = await self.summarizer.fold(persona, conversation.user_name, conversation.summary, turns)
        until = turns[-1].id
        summary_id = new_id()
        if self.summaries is not None:
            try:
                summary_id = await self.summaries.save_summary(conversation.id, text, covers_until=until)
            except VStreamerError as exc:  # an unstored conversation: the summary lives in memory only
                logger.info("summary not stored: %s", exc)
        conversation.summary, conversation.summary_id, conversation.summary_until = text, summary_id, until
        conversation.summary_index = None
        self.stats.summaries += 1

    async def _extract_pending(self, key: str) -> None:
        pending = self._pending.get(key, [])
        try:
            while pending:
                conversation, persona, turn = pending.pop(0)
                try:
                    await self.learn(conversation, persona, turn)
                except VStreamerError as exc:  # this message's facts are lost, not those queued after it
                    logger.warning("facts of a message not learnt: %s", exc)
                except Exception:  # noqa: BLE001 - a bug: logged, and the queue goes on all the same
                    logger.exception("facts of a message not learnt")
        finally:
            self._pending.pop(key, None)

    async def learn(self, conversation: Conversation, persona: Persona, turn: Turn) -> list[Fact]:
        """Extract and remember the facts the viewer states in ``turn``; returns those newly remembered."""
        viewer = viewer_of(conversation)
        if viewer is None:
            return []
        failures = self.extractor.failures
        texts = await self.extractor.extract(persona, conversation.user_name, turn.content)
        self.stats.extraction_failures += self.extractor.failures - failures
        if self.fact_filter is not None:
            texts = [kept for text in texts if (kept := self.fact_filter(text))]
        if not texts:
            return []
        known = await self.facts.viewer_facts(viewer, limit=self.policy.facts_per_viewer)
        fresh: list[Fact] = []
        for text in texts:
            fact = Fact(viewer, text, session_id=conversation.id, turn_id=turn.id)
            if not any(similar(fact.normalized, other.normalized) for other in [*known, *fresh]):
                fresh.append(fact)
        if not fresh:
            return []  # all known already: nothing to embed or store
        fresh = await self._embed(fresh)
        added = await self.facts.add_facts(viewer, fresh, keep=self.policy.facts_per_viewer)
        self.stats.facts_added += len(added)
        return added

    async def _embed(self, facts: list[Fact]) -> list[Fact]:
        if self.embedder is None or not facts:
            return facts
        try:
            vectors = await self.embedder.embed([f.text for f in facts])
        except VStreamerError as exc:
            logger.info("facts stored without embeddings: %s", exc)
            return facts
        return [replace(f, embedding=v) for f, v in zip(facts, vectors, strict=True)]

"""The dialogue engine: one turn = memory recall → prompt within budget → streamed reply → stored turn →
background learning (summary, viewer facts).

Adapters only translate: every behaviour (persona, budget, memory, drift repair, moderation, interruption) lives
here so the CLI, the gateway, the web UI and the live-chat loop behave the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncGenerator, Coroutine, Sequence
from contextlib import aclosing
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Literal, Protocol, TypeVar

from vstreamer.engine.background import BackgroundTasks
from vstreamer.engine.context import BuiltContext, ContextBudget, ContextBuilder
from vstreamer.engine.conversation import RESENT, Conversation, Turn
from vstreamer.engine.drift import DriftDetector, DriftStream
from vstreamer.engine.drift_lines import fallback_line, reinforcement
from vstreamer.engine.events import EngineEvent, ReplyDelta, ReplyFinished, ReplyStarted
from vstreamer.engine.memory import MemoryManager, Recall
from vstreamer.engine.stats import EngineStats
from vstreamer.errors import BackendResponseError, ConfigError, ContextBudgetError, StoreError
from vstreamer.llm.base import ChatMessage, LLMBackend, SamplingParams, StreamEnd
from vstreamer.safety.normalize import well_formed

if TYPE_CHECKING:
    from vstreamer.persona import Persona
    from vstreamer.safety import InputDecision, OutputGuard, SafetyPipeline, Source

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SamplingOverrides:
    """Per-request changes to the sampling defaults (``None`` keeps the default)."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


_NO_OVERRIDES = SamplingOverrides()
Delivery = Literal["streamed", "whole"]
"""When an adapter shows a reply: as it streams, or whole once it has ended (see :meth:`DialogueEngine.reply`)."""
_CLOSE_WAIT_S = 5.0
"""How long closing waits for the replies being made to end (their callers cancel them) and for their commits."""
_SAMPLING_KEPT = 64
"""Sampling parameter sets an engine keeps made (personas' defaults and the overrides clients repeat)."""


def _first(*values: T | None) -> T:
    """The first value that is not ``None`` (the last one always is not)."""
    for value in values[:-1]:
        if value is not None:
            return value
    return values[-1]  # type: ignore[return-value]


MAX_STOP_CHARS = 200
"""The longest stop sequence taken (as the gateway's schema: OpenAI's API documents none, servers differ)."""
_PENALTY = 2.0
"""Presence and frequency penalties go from ``-_PENALTY`` to ``_PENALTY`` (OpenAI's API)."""


def _within(value: object, low: float, high: float) -> bool:
    """``value`` is a number from ``low`` to ``high`` (NaN never is)."""
    return isinstance(value, int | float) and low <= value <= high


def _check_sampling(params: SamplingParams) -> None:
    """Refuse values no backend takes, or takes to mean nonsense (a negative ``max_tokens``, an empty stop sequence
    that ends every reply at once). The gateway's schema, the settings and persona files hold to these ranges
    already; the web UI, the CLI and library callers meet them here, once per combination :meth:`sampling_for`
    makes.

    Raises:
        ConfigError: naming every value out of range.
    """
    problems = []
    if not _within(params.temperature, 0, 2):
        problems.append(f"temperature must be from 0 to 2, not {params.temperature!r}")
    if not _within(params.top_p, 0, 1) or params.top_p == 0:
        problems.append(f"top_p must be over 0 and at most 1, not {params.top_p!r}")
    if not isinstance(params.max_tokens, int) or params.max_tokens < 1:
        problems.append(f"max_tokens must be a whole number of at least 1, not {params.max_tokens!r}")
    for name in ("presence_penalty", "frequency_penalty"):
        value = getattr(params, name)
        if value is not None and not _within(value, -_PENALTY, _PENALTY):
            problems.append(f"{name} must be from -2 to 2, not {value!r}")
    if params.seed is not None and not isinstance(params.seed, int):
        problems.append(f"seed must be a whole number, not {params.seed!r}")
    if any(not isinstance(stop, str) or not 0 < len(stop) <= MAX_STOP_CHARS for stop in params.stop):
        problems.append(f"each stop sequence must have 1 to {MAX_STOP_CHARS} characters")
    if problems:
        raise ConfigError("invalid sampling parameters: " + "; ".join(problems))


_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
"""Control characters a model may emit (NUL among them): no client shows them, PostgreSQL refuses NUL, and left in
a reply they would split a word the output guard must see whole. And lone surrogates (a server's JSON may say
``"\\ud83d"``): no encoding takes them, and the drift finder's automaton failed the reply on one."""


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
        safety: SafetyPipeline | None = None,
        memory: MemoryManager | None = None,
        drift_repair: bool = True,
        user_commit: Literal["overlap", "before"] = "overlap",
    ) -> None:
        self.backend = backend
        self.user_commit = user_commit
        """When the user's message is committed: ``before`` building the prompt and calling the model, or
        ``overlap``-ping both (the default: the reply's first text still waits for the commit, and a failed commit
        fails the reply, so nothing is ever shown for a message that is not stored)."""
        self.store = store
        self.safety = safety
        self.memory = memory
        self.drift_repair = drift_repair
        self.budget = budget
        self.defaults = defaults or SamplingParams(max_tokens=budget.max_tokens)
        self.context = ContextBuilder(backend, budget)
        self.stats = memory.stats if memory is not None else EngineStats()
        """Drift, summary and fact counters (the gateway exports them as metrics)."""
        self.tasks = memory.tasks if memory is not None else BackgroundTasks()
        """Background work (summaries, fact extraction); :meth:`aclose` cancels what is left."""
        self._detectors: dict[tuple[str, str, str], DriftDetector] = {}
        self._sampling: dict[tuple[object, ...], SamplingParams] = {}
        self._sampling_from = self.defaults
        """The defaults that ``_sampling``'s parameter sets were made from."""
        self._replying: set[asyncio.Future[None]] = set()
        """One future per reply being made, done once its end is being committed; :meth:`aclose` waits for them."""
        self._storing: set[asyncio.Future[None]] = set()
        """Commits of replies that ended (also cut off or failed) still running: :meth:`aclose` waits for them."""
        if memory is not None and safety is not None:
            memory.fact_filter = self._vet_fact

    def _vet_fact(self, text: str) -> str | None:
        """A remembered fact goes into later system prompts: moderate it like a message, drop take-over attempts."""
        assert self.safety is not None
        decision = self.safety.prepare_user_text(text, source="web")
        if decision.action == "block" or decision.injection:
            return None
        return decision.text_for_prompt.strip() or None

    async def aclose(self) -> None:
        """Cancel background work (shutdown); replies in flight are their callers' to close. The commits of replies
        that ended are waited for (a server shutting down cancels its replies, then closes the store at once)."""
        for pending in (self._replying, self._storing):
            if pending:  # replies cancelled just now run their ends first, which start their commits
                await asyncio.wait(set(pending), timeout=_CLOSE_WAIT_S)
        await self.tasks.aclose()

    def sampling_for(self, persona: Persona, overrides: SamplingOverrides | None = None) -> SamplingParams:
        """Engine defaults, then the persona's defaults, then the request's overrides (on every turn: each
        combination's parameters are made and checked once, not with a ``dataclasses.replace`` per turn).

        Raises:
            ConfigError: a value is out of range (a negative temperature, ``max_tokens`` under 1, an empty stop
                sequence...).
        """
        defaults, own, asked = self.defaults, persona.sampling, overrides or _NO_OVERRIDES
        temperature = _first(asked.temperature, own.temperature, defaults.temperature)
        top_p = _first(asked.top_p, own.top_p, defaults.top_p)
        max_tokens = min(
            _first(asked.max_tokens, own.max_tokens, defaults.max_tokens), self.budget.max_tokens
        )
        seed = _first(asked.seed, defaults.seed)
        stop = _first(asked.stop, defaults.stop)
        presence = _first(asked.presence_penalty, defaults.presence_penalty)
        frequency = _first(asked.frequency_penalty, defaults.frequency_penalty)
        if self._sampling_from is not defaults:  # the defaults were replaced: what was made from them goes
            self._sampling, self._sampling_from = {}, defaults
        key = (temperature, top_p, max_tokens, seed, stop, presence, frequency)
        made = self._sampling.get(key)
        if made is None:
            made = replace(
                defaults, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed, stop=stop,
                presence_penalty=presence, frequency_penalty=frequency,
            )  # fmt: skip
            _check_sampling(made)  # before it is kept: a refused combination is checked (and refused) again
            if made == defaults:
                made = defaults
            if len(self._sampling) >= _SAMPLING_KEPT:
                self._sampling.clear()  # requests that each ask for other values: keep no more than a few
            self._sampling[key] = made
        return made

    async def build_context(
        self,
        conversation: Conversation,
        persona: Persona,
        *,
        memory: Sequence[str] = (),
        history_from: int = 0,
    ) -> BuiltContext:
        return await self.context.build(conversation, persona, memory=memory, history_from=history_from)

    async def reply(
        self,
        conversation: Conversation,
        persona: Persona,
        user_text: str,
        *,
        overrides: SamplingOverrides | None = None,
        source: Source = "web",
        delivery: Delivery = "streamed",
    ) -> AsyncGenerator[EngineEvent, None]:
        """Add the user's message and stream the persona's reply.

        With a safety pipeline, the message is moderated and neutralised before it reaches the prompt, and the
        reply is guarded while it streams. Closing the iterator early (client gone, stop button, Ctrl-C) stops the
        generation upstream and keeps the partial reply as an ``interrupted`` turn. A backend failure keeps it as
        ``failed`` and re-raises; a message the server refused before any text of its reply fails too (stored so,
        in no later prompt). The same message sent again while its last copy has no answer with text replaces that
        copy (:func:`_unanswered_copy`).

        ``delivery`` says when the caller shows the reply: as it streams, or ``whole`` once it has ended (a
        non-streamed API response). A whole reply that ends early (its caller cancelled or closed the iterator: the
        client left, or timed out; or the backend failed) was never read: its text is kept, marked
        :data:`~vstreamer.engine.conversation.UNDELIVERED`, and it answers nothing (in no later prompt; the message
        sent again replaces the copy it answered).
        """
        # Checked first: a request with sampling values out of range leaves no message behind, unanswered.
        params = self.sampling_for(persona, overrides)
        # One reply at a time per conversation: a second message waits for the reply before it to end (answered
        # alongside it, each prompt would end with whichever message came last, and a trim of the cached turns could
        # pull them from under a prompt being built).
        async with conversation.replying:
            user_text = well_formed(user_text)
            decision = self.safety.prepare_user_text(user_text, source=source) if self.safety else None
            if decision is not None and decision.action == "block":
                async for event in self._refuse(conversation, decision):
                    yield event
                return
            user_turn = Turn("user", decision.text_for_prompt if decision else user_text)
            earlier = _unanswered_copy(conversation, user_turn.content)
            conversation.add(user_turn)
            if earlier is not None:  # after the new copy is in: a cancel from here on loses neither
                self._withdraw(conversation, earlier)
            # Overlapped (the default), the user's message is queued and committed at the turn's first wait: usually
            # once the request is out, while the model reads the prompt (sooner, it would hold the request back by the
            # time queueing and a commit take on the event loop). The first text of the reply is released only once
            # the commit is done; a failed commit fails the reply, and the message leaves later prompts.
            saving: asyncio.Future[None] | None = None
            if self.store is not None:
                before = self.user_commit == "before"
                queued = (
                    self._queue(conversation, user_turn)
                    if before
                    else self._queue_soon(conversation, user_turn)
                )
                queued.add_done_callback(partial(_unless_stored, user_turn))
                if before:
                    await asyncio.shield(queued)
                else:
                    saving = queued
            try:
                recall = (
                    await self.memory.recall(conversation, persona, user_turn.content)
                    if self.memory
                    else Recall()
                )
                context = await self.build_context(
                    conversation, persona, memory=recall.blocks, history_from=recall.history_from
                )
            except BaseException as exc:
                refused = _refuses_message(exc)
                if refused:  # kept, as failed: never in a later prompt (it would fail there too)
                    user_turn.fail(exc)
                if saving is not None:
                    await asyncio.shield(saving)
                if refused and self.store is not None:  # its row, if committed first, too
                    await self._shielded(self._save(conversation, user_turn))
                raise
            reply = self._generate(
                conversation, persona, context, params, source, recall.summary_id, saving, delivery
            )
            try:
                async with aclosing(reply) as events:
                    async for event in events:
                        yield event
            except BackendResponseError as exc:
                # Refused before the reply's first text (a prompt over the server's context, a content filter): the
                # message fails, stored so before the error is told, or every later prompt, which would carry it,
                # would be refused too. A reply with text answered it: the message stays.
                if exc.refused and user_turn.status == "complete" and _unanswered(conversation, user_turn):
                    user_turn.fail(exc)
                    if self.store is not None:  # its row, committed before the reply's
                        await self._shielded(self._save(conversation, user_turn))
                raise
            finally:
                if self.memory is not None:  # scheduling only: the reply never waits for memory work
                    self.memory.after_turn(conversation, persona, context, user_turn)

    async def _refuse(
        self, conversation: Conversation, decision: InputDecision
    ) -> AsyncGenerator[EngineEvent, None]:
        """A blocked message: stored as blocked (masked), answered with the policy's message, never sent on."""
        user_turn = conversation.add(Turn("user", decision.result.output, status="blocked"))
        turn = conversation.add(Turn("assistant", decision.user_message or "", status="blocked"))
        await self._shielded(self._save_all(conversation, user_turn, turn))  # both, also if the caller goes
        yield ReplyStarted(turn, 0)
        if turn.content:
            yield ReplyDelta(turn.content, last=True)
        yield ReplyFinished(turn)

    def _guard(self, persona: Persona, context: BuiltContext, source: Source) -> OutputGuard:
        assert self.safety is not None
        return self.safety.output_guard(
            protected_texts=context.protected, language=persona.language, persona_name=persona.name,
            source=source,
        )  # fmt: skip

    async def _generate(
        self,
        conversation: Conversation,
        persona: Persona,
        context: BuiltContext,
        params: SamplingParams,
        source: Source,
        summary_id: str | None,
        saving: asyncio.Future[None] | None = None,
        delivery: Delivery = "streamed",
    ) -> AsyncGenerator[EngineEvent, None]:
        turn = Turn("assistant", "", status="streaming", summary_id=summary_id)
        conversation.add(turn)
        started = time.perf_counter()
        parts: list[str] = []

        def shown(text: str, last: bool = False) -> ReplyDelta:
            if not parts:
                turn.first_token_ms = round((time.perf_counter() - started) * 1000)
            parts.append(text)
            turn.content = "".join(parts)
            return ReplyDelta(text, last)

        # The guard and each attempt's drift watch are made while the request is out (the loop's next turn: the
        # request goes out before it), not on the request's way there; the first text makes them if need be.
        guard: OutputGuard | None = None
        drift: DriftStream | None = None

        def prepare() -> None:
            nonlocal guard, drift
            if guard is None and self.safety is not None:
                guard = self._guard(persona, context, source)
            if drift is None:
                drift = self._drift_stream(persona)

        def passed(text: str) -> str:
            if not text or self.safety is None:
                return text
            if guard is None:
                prepare()
            assert guard is not None
            return guard.feed(text)

        loop = asyncio.get_running_loop()
        saved = False
        ending = loop.create_future()
        self._replying.add(ending)
        try:
            yield ReplyStarted(turn, context.prompt_tokens)
            messages = context.messages
            for attempt in range(2):
                drift = None
                loop.call_soon(prepare)
                async with aclosing(self.backend.stream(messages, params)) as stream:
                    async for delta in stream:
                        if saving is not None:  # nothing is shown before the user's message is stored
                            await asyncio.shield(saving)
                            saving = None
                        if isinstance(delta, StreamEnd):
                            turn.usage, turn.finish_reason = delta.usage, delta.finish_reason
                            continue
                        if drift is None and self.drift_repair:
                            prepare()  # the first text came before the loop's next turn
                        text = delta.text
                        # Control characters go before the checks, for which they would split a word.
                        if _CONTROL.search(text):
                            text = _CONTROL.sub("", text)
                        text = passed(drift.feed(text) if drift is not None else text)
                        if text:
                            yield shown(text)
                        if guard is not None and guard.blocked:
                            break  # leaving the block closes the upstream stream: generation stops
                        if drift is not None and drift.hit is not None:
                            break  # the drifting words were held back: stop before more of them come
                if drift is None or (guard is not None and guard.blocked):
                    break
                if drift.hit is None and (text := passed(drift.finish())):
                    yield shown(text)
                if drift.hit is None:
                    break
                repair = self._on_drift(conversation, persona, drift, attempt, bool(parts))
                if repair == "retry":
                    messages = await self._reinforced(conversation, persona, context)
                    guard = None  # a fresh one: what the first attempt's held back is never shown
                    continue
                if repair and (text := passed(repair)):
                    yield shown(text)
                turn.finish_reason = "stop"
                break
            if self.safety is not None:
                guard = guard or self._guard(persona, context, source)  # a reply without text is audited too
                # The finish may block what the guard held back: the reply then ends in character all the same.
                tail = guard.finish()  # "" once blocked
                if guard.blocked:
                    tail = guard.deflection
                if tail:
                    yield shown(tail, last=True)  # the guard's held-back end, right before ReplyFinished
                guard.result()  # the whole reply's verdict goes to the audit log
            turn.status = "blocked" if guard is not None and guard.blocked else "complete"
            logger.debug("reply of %d chars in %.2fs", len(turn.content), time.perf_counter() - started)
            # Stored before it is announced: whoever hears the reply ended (an SSE client's [DONE]) and reads the
            # session back finds it there, after its user message. One attempt: a failure propagates, as below.
            if saving is not None:  # a reply without text never waited for its user message
                await asyncio.shield(saving)
                saving = None
            saved = True
            await self._store_reply(conversation, turn, parts, started)
            yield ReplyFinished(turn)
        except Exception as exc:  # backend, store, or a bug: the partial reply is kept as failed
            turn.fail(exc)
            raise
        finally:
            self._replying.discard(ending)
            ending.set_result(None)
            if not saved:
                # Shielded as one: a cancel while it waits for the user's message must not skip the reply's commit.
                # Text made, but a whole reply is shown only at the end it never reached: nobody read it.
                unread = delivery == "whole" and bool(parts)
                await self._shielded(
                    self._store_unfinished(conversation, turn, parts, started, saving, unread)
                )
            if turn.in_prompt and getattr(self.backend, "counts_remotely", False):
                # The next turn's prompt holds this reply: count its share now, not on that turn's path.
                self.tasks.spawn(f"count:{turn.id}", self.context.count_turn(turn))

    def _drift_stream(self, persona: Persona) -> DriftStream | None:
        if not self.drift_repair:
            return None
        key = (persona.id, persona.name, persona.char_name)
        detector = self._detectors.get(key)
        if detector is None:
            detector = self._detectors[key] = DriftDetector(persona.char_name, (persona.name, persona.id))
        return detector.stream()

    def _on_drift(
        self, conversation: Conversation, persona: Persona, drift: DriftStream, attempt: int, shown: bool
    ) -> str:
        """What to do about a reply that broke character: ``retry``, an in-character line, or "" (cut it here)."""
        assert drift.hit is not None
        self.stats.drift_events += 1
        logger.info("persona drift (%s) in %s: %r", drift.hit.reason, conversation.id, drift.hit.text)
        if shown:
            return ""  # what was shown is in character; the drifting rest never is
        if attempt == 0:
            self.stats.drift_regenerations += 1
            return "retry"
        self.stats.drift_fallbacks += 1
        return fallback_line(persona.language, persona.char_name, seed=conversation.turns[-1].id)

    async def _reinforced(
        self, conversation: Conversation, persona: Persona, context: BuiltContext
    ) -> tuple[ChatMessage, ...]:
        """The same prompt with a reinforced in-character instruction, rebuilt within the budget."""
        before = Conversation(conversation.persona_id, conversation.user_name, conversation.id,
                              conversation.turns[:-1])  # fmt: skip
        note = reinforcement(persona.language, persona.char_name)
        rebuilt = await self.context.build(
            before, persona, memory=(*context.memory, note), history_from=context.history_from
        )
        return rebuilt.messages

    def _queue(self, conversation: Conversation, turn: Turn) -> asyncio.Future[None]:
        """Start committing ``turn``: straight into the store's queue where it has one (no task to run it)."""
        queue = getattr(self.store, "queue_turn", None)
        if queue is not None:
            future: asyncio.Future[None] = queue(conversation, turn)
            return future
        return asyncio.ensure_future(self._save(conversation, turn))

    def _queue_soon(self, conversation: Conversation, turn: Turn) -> asyncio.Future[None]:
        """:meth:`_queue` at the loop's next turn, into the store's queue (a store without one starts its task now);
        the future is done once the turn is committed."""
        queue = getattr(self.store, "queue_turn", None)
        if queue is None:
            return self._queue(conversation, turn)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def start() -> None:
            try:
                queue(conversation, turn, done)
            except Exception as exc:  # a store closed meanwhile: fail the reply, never leave it waiting
                if not done.done():
                    done.set_exception(exc)

        loop.call_soon(start)
        return done

    async def _store_unfinished(
        self,
        conversation: Conversation,
        turn: Turn,
        parts: list[str],
        started: float,
        saving: asyncio.Future[None] | None,
        unread: bool = False,
    ) -> None:
        """A reply that ended early (stopped, failed): stored with its partial text, after its user message; marked
        undelivered if its text was never shown (``unread``)."""
        if saving is not None:  # ended before the first delta: the user's message is still being stored
            with contextlib.suppress(StoreError):
                await saving
        if turn.status == "streaming":
            turn.status = "interrupted"
        if unread:  # along with its status: the window takes a turn as settled once it is not streaming
            turn.mark_undelivered()
        await self._store_reply(conversation, turn, parts, started)

    async def _store_reply(
        self, conversation: Conversation, turn: Turn, parts: list[str], started: float
    ) -> None:
        turn.content = "".join(parts)
        turn.duration_ms = round((time.perf_counter() - started) * 1000)
        # Shielded: a reply cancelled by its client is still committed with its partial text.
        await self._shielded(self._save(conversation, turn))

    def _shielded(self, commit: Coroutine[None, None, None]) -> asyncio.Future[None]:
        """``commit`` run to its end whatever happens to its caller, and waited for by :meth:`aclose`."""
        task = asyncio.ensure_future(commit)
        self._storing.add(task)
        task.add_done_callback(self._storing.discard)
        return asyncio.shield(task)

    def _withdraw(self, conversation: Conversation, earlier: Turn) -> None:
        """Take the unanswered ``earlier`` copy of a message sent again out of prompts (a reply it has is in none
        already: it has no text, or none that was delivered): failed at once, and stored so in the background (its
        commit waited for nothing, so that a caller cancelled meanwhile could not leave the earlier copy withdrawn and
        the new one never added; :meth:`aclose` waits for it)."""
        earlier.status, earlier.error = "failed", f"{RESENT}: sent again, answered as the later copy"
        # The window kept between turns holds settled turns as they were: this one changed, so it is walked again.
        conversation.history_index = None
        if self.store is not None:
            self._shielded(self._save(conversation, earlier)).add_done_callback(_log_failed_withdrawal)

    async def _save(self, conversation: Conversation, turn: Turn) -> None:
        if self.store is not None:
            await self.store.save_turn(conversation, turn)

    async def _save_all(self, conversation: Conversation, *turns: Turn) -> None:
        for turn in turns:
            await self._save(conversation, turn)


def _refuses_message(exc: BaseException) -> bool:
    """Whether ``exc`` refuses the user's message for good: it does not fit the prompt, or the LLM server refused
    the request as such (not an outage, which the same message may well pass once it is over)."""
    return isinstance(exc, ContextBudgetError) or isinstance(exc, BackendResponseError) and exc.refused


def _unanswered(conversation: Conversation, user_turn: Turn) -> bool:
    """Whether the reply to ``user_turn`` (the turn after it: replies take turns) has shown no text."""
    turns = conversation.turns
    return len(turns) > 1 and turns[-2] is user_turn and not turns[-1].content


def _unanswered_copy(conversation: Conversation, content: str) -> Turn | None:
    """The conversation's last user message, if it reads ``content`` and was never answered with any text: no reply
    after it, or one that failed or was stopped before its first text, or before any of it was delivered (a
    non-streamed reply whose client timed out: :data:`~vstreamer.engine.conversation.UNDELIVERED`).

    Such a message sent again is the same message: an OpenAI SDK retries a 5xx or a timeout twice, and a viewer
    sends it again after an error. Both copies in later prompts would make the model read it several times (joined
    by :func:`~vstreamer.llm.roles.alternating`), so the earlier one is withdrawn (stored as failed, out of
    prompts) and the new one answered: every adapter sends through :meth:`DialogueEngine.reply`, so the gateway,
    the web UI and live chat keep one copy alike. After a reply with text that was shown (if only in part), the same
    words are a new message."""
    turns = conversation.turns
    if not turns:
        return None
    last = turns[-1]
    if last.role == "assistant":
        if len(turns) < 2 or last.status not in ("failed", "interrupted"):
            return None
        if last.content.strip() and not last.undelivered:
            return None
        last = turns[-2]
    if last.role == "user" and last.status == "complete" and last.content == content:
        return last
    return None


def _log_failed_withdrawal(saving: asyncio.Future[None]) -> None:
    """The withdrawn copy's row stays ``complete`` (a later load shows the message twice): said, never raised."""
    if not saving.cancelled() and (error := saving.exception()) is not None:
        logger.warning("a message sent again was answered, but its earlier copy was not marked so: %s", error)


def _unless_stored(turn: Turn, saving: asyncio.Future[None]) -> None:
    """A user's message whose commit failed fails its reply, and leaves later prompts (and summaries) too."""
    if not saving.cancelled() and (error := saving.exception()) is not None:
        turn.status, turn.error = "failed", f"not stored: {error}"

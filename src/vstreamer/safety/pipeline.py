"""The safety pipeline the dialogue engine talks to: moderate, prepare user text, guard output."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vstreamer.safety.audit import AuditLog, LoggingAuditLog, make_record, notable
from vstreamer.safety.external import ExternalChecker
from vstreamer.safety.injection import (
    InjectionHit,
    find_injections,
    forges_a_turn,
    neutralize,
    sanitize_control_tokens,
)
from vstreamer.safety.lexicon import Action, Category, fingerprint, load_lexicon
from vstreamer.safety.matcher import CompiledLexicon
from vstreamer.safety.normalize import VECTOR_MIN_LENGTH, fold, fold_with_map, normalize_short, well_formed
from vstreamer.safety.pii import CATEGORY as PII_CATEGORY
from vstreamer.safety.pii import find_pii
from vstreamer.safety.policy import RulePolicy, SafetyPolicy
from vstreamer.safety.stream_guard import OutputGuard, separators
from vstreamer.safety.types import Direction, Match, ModerationResult, Source, Verdict, mask_spans

logger = logging.getLogger(__name__)

NO_RULE_MATCHED = "no rule matched"
INJECTION_REASON = "prompt injection"
"""Why a message was blocked as a take-over attempt (no words of it: the reason is kept whatever the store mode)."""
_REMEMBERED = 4096
"""Short messages whose input decision is kept."""
_REMEMBERED_CHARS = 64
"""Up to this length a message's decision is kept."""

_CacheKey = tuple[tuple[str, ...], bool]
_cache: dict[_CacheKey, SharedLexicon] = {}
_cache_lock = threading.Lock()


class SharedLexicon:
    """One compiled lexicon set, shared by every pipeline that loads the same folders."""

    def __init__(self, folders: Sequence[Path], include_default: bool, backend: str = "auto") -> None:
        self.folders = tuple(Path(f) for f in folders)
        self.include_default = include_default
        self.backend = backend
        self._lock = threading.Lock()
        self.compiled = self._build()

    def _build(self) -> CompiledLexicon:
        warm_up()  # the process-wide tables every message needs, built before the first one
        self.fingerprint = fingerprint(self.folders, include_default=self.include_default)
        return CompiledLexicon(
            load_lexicon(self.folders, include_default=self.include_default), backend=self.backend
        )

    def reload(self, *, force: bool = True) -> bool:
        """Re-read the files (only if they changed, unless ``force``); True when rebuilt."""
        with self._lock:
            if (
                not force
                and fingerprint(self.folders, include_default=self.include_default) == self.fingerprint
            ):
                return False
            self.compiled = self._build()  # one attribute swap: readers see old or new, never half
            return True


def warm_up() -> None:
    """Build the lookup tables that the first message would otherwise wait for (~0.5 s)."""
    fold_with_map("Ａ")  # the fold table and the one-to-one test
    find_injections("ı")  # the case twins of the injection screen
    separators()


def shared_lexicon(folders: Sequence[Path] = (), *, include_default: bool = True) -> SharedLexicon:
    """The cached :class:`SharedLexicon` for these folders (compiled on first use)."""
    key = (tuple(str(Path(f).resolve()) for f in folders), include_default)
    with _cache_lock:
        shared = _cache.get(key)
        if shared is None:
            shared = _cache[key] = SharedLexicon(folders, include_default)
        return shared


@dataclass(frozen=True, slots=True)
class InputDecision:
    """What to do with one user or viewer message before it reaches the prompt."""

    action: Verdict
    text_for_prompt: str
    """Masked, control tokens removed, injection phrases neutralised; "" when blocked."""
    injection: bool
    """Whether a take-over attempt or forged control tokens were found."""
    result: ModerationResult
    user_message: str | None
    """What to show the sender when blocked (Chinese first, then English)."""


class SafetyPipeline:
    """Moderation for one policy over one shared lexicon set."""

    def __init__(
        self,
        shared: SharedLexicon,
        *,
        policy: SafetyPolicy | None = None,
        audit: AuditLog | None = None,
        external: ExternalChecker | None = None,
    ) -> None:
        self.shared = shared
        self.policy = policy or SafetyPolicy()
        self.audit: AuditLog = audit or LoggingAuditLog()
        self.external = external
        self._decisions: dict[tuple[str, Source], tuple[CompiledLexicon, SafetyPolicy, InputDecision]] = {}
        """Decisions on short messages, with the lexicon and policy they were made under."""

    @classmethod
    def default(
        cls,
        *,
        lexicon_dirs: Sequence[Path] = (),
        policy: SafetyPolicy | None = None,
        audit: AuditLog | None = None,
        external: ExternalChecker | None = None,
        include_default: bool = True,
    ) -> SafetyPipeline:
        """The curated lexicon plus ``lexicon_dirs``, compiled once per process and shared."""
        return cls(
            shared_lexicon(lexicon_dirs, include_default=include_default),
            policy=policy,
            audit=audit,
            external=external,
        )

    @property
    def compiled(self) -> CompiledLexicon:
        return self.shared.compiled

    def close(self) -> None:
        """Flush and stop the audit log's writer, if it has one (call on shutdown)."""
        close = getattr(self.audit, "close", None)
        if callable(close):
            close()

    def reload(self) -> None:
        """Re-read the lexicon files without a restart (every pipeline sharing them sees it)."""
        self.shared.reload(force=True)

    # -- decisions -------------------------------------------------------------------------------

    def _category(self, name: str) -> Category:
        return self.compiled.categories.get(name) or Category(name, "flag", 1, name)

    def _actions(self, matches: Sequence[Match], rule: RulePolicy) -> list[tuple[Match, Action]]:
        out: list[tuple[Match, Action]] = []
        for m in matches:
            cat = self._category(m.category)
            if cat.severity < rule.min_severity and m.category != PII_CATEGORY:
                continue
            default = rule.pii if m.category == PII_CATEGORY else cat.action
            out.append((m, rule.actions.get(m.category, default)))
        return out

    def analyse(
        self,
        text: str,
        *,
        direction: Direction,
        source: Source,
        at_end: bool = True,
        normalized: str | None = None,
    ) -> list[tuple[Match, Action]]:
        """Every match in ``text`` with the action the policy gives it (``normalized``: the
        :func:`~vstreamer.safety.normalize.normalize_short` of ``text``, if already known).

        A lone surrogate (half an emoji) is read as U+FFFD: the matchers encode the text, which it cannot be, and
        one character for one keeps the spans those of ``text``."""
        checked = well_formed(text)
        if checked is not text:
            text, normalized = checked, None
        folded = fold(text)  # for the pattern rules, pinyin and personal data alike
        matches = self.compiled.scan(text, at_end=at_end, normalized=normalized, folded=folded) + find_pii(
            text, folded
        )
        if not matches:
            return []
        return self._actions(
            sorted(matches, key=lambda m: (m.start, m.end)), self.policy.rule(direction, source)
        )

    def decide(
        self, text: str, acted: Sequence[tuple[Match, Action]], *, extra_reason: str = ""
    ) -> ModerationResult:
        """Combine matches into one result (block > mask > pass)."""
        actions = {a for _, a in acted}
        verdict: Verdict = "block" if "block" in actions else "mask" if "mask" in actions else "pass"
        if extra_reason:
            verdict = "block"
        spans = [(m.start, m.end) for m, a in acted if a in ("mask", "block")]
        output = mask_spans(text, spans) if verdict != "pass" else text
        categories = tuple(dict.fromkeys(m.category for m, _ in acted))
        parts = [f"{a} {m.category} '{m.term}' ({m.rule})" for m, a in acted]
        reason = "; ".join(([extra_reason] if extra_reason else []) + parts) or NO_RULE_MATCHED
        return ModerationResult(text, verdict, categories, output, tuple(m for m, _ in acted), reason)

    def moderate(self, text: str, *, direction: Direction, source: Source = "web") -> ModerationResult:
        """Moderate one whole message (lexicon, rules and PII); the decision is audited."""
        result = self.decide(text, self.analyse(text, direction=direction, source=source))
        self._record(result, direction, source)
        return result

    async def amoderate(self, text: str, *, direction: Direction, source: Source = "web") -> ModerationResult:
        """Like :meth:`moderate`, then asks the external checker (if any) when the lexicon passed."""
        acted = self.analyse(text, direction=direction, source=source)
        result = self.decide(text, acted)
        if self.external is not None and result.action != "block":
            verdict = await self.external.check(text, direction=direction)
            if verdict.flagged:
                cats = ", ".join(verdict.categories) or "unspecified"
                result = self.decide(text, acted, extra_reason=f"external {verdict.checker}: {cats}")
                result = _with_categories(result, verdict.categories)
        self._record(result, direction, source)
        return result

    def _record(
        self,
        result: ModerationResult,
        direction: Direction,
        source: Source,
        *,
        injection: bool = False,
        received: str | None = None,
    ) -> None:
        if not getattr(self.audit, "passes", True) and not notable(
            result.action, result.categories, injection
        ):
            return  # the audit log keeps no clean passes: skip hashing and building the record
        store = self.policy.rule(direction, source).store
        try:
            self.audit.record(
                make_record(
                    result,
                    direction=direction,
                    source=source,
                    store=store,
                    injection=injection,
                    received=received,
                )
            )
        except Exception:  # the audit log must never break a conversation
            logger.exception("audit log failed")

    # -- input -----------------------------------------------------------------------------------

    def prepare_user_text(self, text: str, *, source: Source) -> InputDecision:
        """Sanitise, moderate and neutralise one user/viewer message before it enters a prompt (every message is
        audited; short ones are decided once per lexicon and policy: a live room repeats "666" and "主播好" all day)."""
        key = (text, source) if len(text) <= _REMEMBERED_CHARS else None
        known = self._decisions.get(key) if key is not None else None
        if known is not None and known[0] is self.compiled and known[1] is self.policy:
            decision = known[2]
        else:
            decision = self._decide_input(text, source)
            if key is not None:
                if len(self._decisions) >= _REMEMBERED:
                    # A bound, not vstreamer.lru.LRU: plain dict steps are atomic, and a pipeline may be shared by
                    # threads; the hot messages come straight back.
                    self._decisions.clear()
                self._decisions[key] = (self.compiled, self.policy, decision)
        self._record(decision.result, "input", source, injection=decision.injection, received=text)
        return decision

    def _decide_input(self, text: str, source: Source) -> InputDecision:
        cleaned = sanitize_control_tokens(text)
        # normalised once, for the injection screen and the lexicon
        normalized = normalize_short(cleaned) if len(cleaned) < VECTOR_MIN_LENGTH else None
        hits = find_injections(cleaned, normalized=normalized)
        acted = self.analyse(cleaned, direction="input", source=source, normalized=normalized)
        if acted or hits or cleaned != text:
            return self._prepare(text, cleaned, hits, acted, source)
        # Most messages: nothing matched, nothing to remove. The result _prepare would build.
        result = ModerationResult(text, "pass", (), text, (), NO_RULE_MATCHED)
        return InputDecision("pass", text, False, result, None)

    def _prepare(
        self,
        text: str,
        cleaned: str,
        hits: Sequence[InjectionHit],
        acted: Sequence[tuple[Match, Action]],
        source: Source,
    ) -> InputDecision:
        rule = self.policy.rule("input", source)
        # a take-over phrase, or control tokens or role headers removed
        injection = bool(hits) or cleaned != text
        if (hits or forges_a_turn(text, cleaned)) and rule.injection == "block":
            # the lexicon's and personal-data matches stay: a blocked message is still stored masked
            result = _with_categories(
                self.decide(cleaned, acted, extra_reason=INJECTION_REASON), ("injection",)
            )
        else:
            result = self.decide(cleaned, acted)
            if hits:
                result = _with_categories(result, ("injection",))
        if result.action == "block":
            return InputDecision("block", "", injection, result, rule.user_message())
        prompt_text = result.output
        if hits and rule.injection == "neutralize":
            prompt_text = neutralize(prompt_text, list(hits), self.policy.injection_placeholder)
        return InputDecision(result.action, prompt_text, injection, result, None)

    # -- output ----------------------------------------------------------------------------------

    def output_guard(
        self,
        *,
        protected_texts: Sequence[str] = (),
        language: str = "zh",
        persona_name: str = "",
        source: Source = "web",
    ) -> OutputGuard:
        """A guard for one streamed reply (``protected_texts``: system prompt / persona definition)."""

        def analyse(text: str, at_end: bool, normalized: str | None) -> list[tuple[Match, Action]]:
            return self.analyse(text, direction="output", source=source, at_end=at_end, normalized=normalized)

        def finalise(text: str, blocked: bool, why: str) -> ModerationResult:
            result = self.decide(text, analyse(text, True, None), extra_reason=why if blocked else "")
            self._record(result, "output", source)
            return result

        return OutputGuard(
            self.compiled,
            analyse,
            finalise,
            protected_texts=protected_texts,
            language=language,
            persona_name=persona_name,
        )


def _with_categories(result: ModerationResult, extra: Sequence[str]) -> ModerationResult:
    cats = tuple(dict.fromkeys((*result.categories, *extra)))
    return ModerationResult(result.text, result.action, cats, result.output, result.matches, result.reason)

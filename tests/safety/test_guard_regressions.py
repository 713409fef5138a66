"""Regressions of the streaming output guard and the audit record found in review.

* The guard re-read its last released characters as masked ``*`` (a separator, the words gone): a
  threat after an insult was released, a WeChat id after "加微信" was shown, harmless text was blocked.
* Pattern rules (URLs, ids) were released while they could still grow: the rest of a URL was shown.
* A pattern block's matched text reached the audit log's reason under ``store="masked"``.
* A lone surrogate made the audit record's hash raise.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vstreamer.safety import JsonlAuditLog, MemoryAuditLog, SafetyPipeline
from vstreamer.safety.audit import make_record
from vstreamer.safety.policy import RulePolicy, SafetyPolicy
from vstreamer.safety.stream_guard import _TAIL_MAX, _WORDISH
from vstreamer.safety.types import Match, ModerationResult


def _stream(pipeline: SafetyPipeline, chunks: list[str]) -> tuple[bool, str]:
    """(blocked, what the viewer saw before any deflection)."""
    guard = pipeline.output_guard()
    shown = []
    for chunk in chunks:
        shown.append(guard.feed(chunk))
        if guard.blocked:
            break
    if not guard.blocked:
        shown.append(guard.finish())
    return guard.blocked, "".join(shown)


def _chunked(text: str, rng: random.Random, most: int = 6) -> list[str]:
    chunks, i = [], 0
    while i < len(text):
        k = rng.randint(1, most)
        chunks.append(text[i : i + k])
        i += k
    return chunks


# -- 1. the re-read context is the model's own text ----------------------------------------------


def test_a_threat_after_a_masked_insult_is_blocked(pipeline: SafetyPipeline) -> None:
    chunks = ["you are a bitch", " i'm going to kill you"]
    assert pipeline.moderate("".join(chunks), direction="output").action == "block"
    blocked, shown = _stream(pipeline, chunks)
    assert blocked
    assert "kill" not in shown


def test_a_wechat_id_after_a_masked_lead_in_is_masked(pipeline: SafetyPipeline) -> None:
    chunks = ["想要福利的话加微信：", "xiaoxing888 哦"]
    blocked, shown = _stream(pipeline, chunks)
    assert not blocked
    assert "xiaoxing" not in shown and "888" not in shown
    assert shown.startswith("想要福利的话***") and shown.endswith("*********** 哦")
    assert len(shown) == len("".join(chunks))


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        (["冰傻逼", "毒"], "冰**毒"),
        (["call 13800138000", "i will kill you"], "call ***********i will kill you"),
    ],
)
def test_masked_words_do_not_join_into_a_blocked_term(
    pipeline: SafetyPipeline, chunks: list[str], expected: str
) -> None:
    whole = pipeline.moderate("".join(chunks), direction="output")
    assert whole.action == "mask" and whole.output == expected
    assert _stream(pipeline, chunks) == (False, expected)


def test_a_mask_begun_in_the_context_covers_the_new_text(pipeline: SafetyPipeline) -> None:
    """The id's pattern starts in text already released: only the new part is released, masked."""
    blocked, shown = _stream(pipeline, ["加我qq: 12345", "678 好的"])
    assert not blocked
    assert shown == "加我*** ******** 好的"


# -- 2. pattern matches that may still grow are held ---------------------------------------------


@pytest.mark.parametrize(
    "chunks",
    [
        ["点这里领福利 https://evil.com/join?", "invite=XYZ123 快来"],
        ["看这里 https://evil.com/a?x=1&", "ref=abc123 好"],
        ["网址是 https://赌场", "网站.com 快来"],
        ["网址是 https://", "赌场网站.com 快来"],
        ["官网 www.", "赌场", "网站.com 快来"],
    ],
)
def test_a_url_split_across_chunks_is_masked_whole(pipeline: SafetyPipeline, chunks: list[str]) -> None:
    whole = pipeline.moderate("".join(chunks), direction="output").output
    assert _stream(pipeline, chunks) == (False, whole)
    assert "快来" in whole or "好" in whole


def test_a_url_longer_than_the_hold_is_masked_to_its_end(pipeline: SafetyPipeline) -> None:
    path = "".join(f"seg{i}路径/" for i in range(60))
    reply = f"看 https://evil.com/{path}?token=SECRET123 好的，然后我们继续聊天吧"
    whole = pipeline.moderate(reply, direction="output").output
    assert "SECRET" not in whole and whole.endswith(" 好的，然后我们继续聊天吧")
    for step in (1, 3, 7):
        guard = pipeline.output_guard()
        shown = "".join(guard.feed(reply[i : i + step]) for i in range(0, len(reply), step)) + guard.finish()
        assert shown == whole, step
        assert guard.max_held <= 200, (step, guard.max_held)  # bounded: not the whole URL


# -- 2b. a degenerate reply is not held whole -----------------------------------------------------
# Repeats collapse and spaced letters join when normalised: any number of "a"s or "a-"s is "a", the beginning of a
# term, so the whole reply was held (nothing shown until its end) and each chunk re-read all of it (8,000
# characters: 3-8 s of the event loop).


@pytest.mark.parametrize("reply", ["a" * 3000, "a-" * 1500, "hi " + "ooo" * 1000 + "!"])
def test_a_long_run_that_normalises_to_a_term_start_is_released_as_it_comes(
    pipeline: SafetyPipeline, reply: str
) -> None:
    guard = pipeline.output_guard()
    shown = "".join(guard.feed(reply[i : i + 3]) for i in range(0, len(reply), 3))
    assert len(shown) >= len(reply) - 256 and guard.max_held <= 256, guard.max_held
    assert shown + guard.finish() == pipeline.moderate(reply, direction="output").output == reply


def test_an_allowed_phrase_stretched_past_the_hold_is_decided_as_blocked(pipeline: SafetyPipeline) -> None:
    # "想死你了" (miss you) is allowed, "想死" (want to die) blocked; "想死你你你…" held until it is known which.
    reply = "想死" + "你" * 3000
    guard = pipeline.output_guard()
    for i in range(0, len(reply), 3):
        guard.feed(reply[i : i + 3])
        if guard.blocked:
            break
    assert guard.blocked and i < 300 and guard.max_held <= 256
    assert pipeline.moderate(reply, direction="output").action == "block"


# -- property: the stream never shows what the whole reply masks or blocks -----------------------

_FRAGMENTS = [
    "傻逼",
    "冰毒",
    "bitch",
    "kill you",
    "i'm going to kill you",
    "I\u2019m going to kill you",
    "b ",
    "加微信：",
    "xiaoxing888",
    "qq: ",
    "12345678",
    "https://",
    "www.",
    "evil.com/a?b=",
    "赌场",
    "网站",
    "13800138000",
    "foo@bar.com",
    "今天",
    "好的",
    "，",
    "。",
    " ",
    "hello",
    "a",
    "1",
    "-",
    "想死",
    "你了",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_FRAGMENTS), min_size=1, max_size=10).map("".join), st.randoms())
def test_the_stream_never_shows_what_the_whole_reply_hides(reply: str, rng: random.Random) -> None:
    pipeline = SafetyPipeline.default(audit=MemoryAuditLog())
    whole = pipeline.moderate(reply, direction="output")
    blocking = [m for m, a in pipeline.analyse(reply, direction="output", source="web") if a == "block"]
    for _ in range(3):
        chunks = _chunked(reply, rng)
        blocked, shown = _stream(pipeline, chunks)
        # The stream blocks exactly what the whole reply blocks.
        assert blocked == (whole.action == "block"), (chunks, shown, whole.output)
        if not blocked:
            assert len(shown) == len(reply)
        for m in blocking:  # no blocked term is shown
            assert shown[m.start : m.end] != reply[m.start : m.end], (chunks, shown)
        # Every character the whole reply masks is masked in the stream too. The latitude: punctuation released just
        # before a pattern could be known (the "：" of "加微信：" before the id), and the start of a run of word
        # characters longer than the guard holds back ("xiaoxing888" thrice, then "foo@bar.com": one e-mail address).
        for i, (a, b) in enumerate(zip(shown, whole.output, strict=False)):
            if b == "*" and a != "*":
                assert not a.isalnum() or _in_a_long_word(reply, i), (chunks, i, shown, whole.output)


def _in_a_long_word(text: str, i: int) -> bool:
    """Whether ``text[i]`` is in a run of the characters a trailing word is held back by longer than that hold."""
    start = end = i
    while start > 0 and text[start - 1].lower() in _WORDISH:
        start -= 1
    while end < len(text) and text[end].lower() in _WORDISH:
        end += 1
    return end - start > _TAIL_MAX


# -- 3. the audit log keeps no pattern text under masked storage ---------------------------------


@pytest.mark.parametrize("store", ["masked", "none"])
def test_a_streamed_pattern_block_keeps_no_matched_text_in_the_audit_reason(store: str) -> None:
    audit = MemoryAuditLog()
    policy = SafetyPolicy(output=RulePolicy(actions={"spam": "block"}, store=store))  # type: ignore[arg-type]
    pipeline = SafetyPipeline.default(audit=audit, policy=policy)
    reply = "加我 vx: secretid_4242 哦，或者 qq:1234567890 "
    guard = pipeline.output_guard()
    for c in reply:
        guard.feed(c)
        if guard.blocked:
            break
    if not guard.blocked:
        guard.finish()
    guard.result()
    assert guard.blocked
    record = audit.records[-1]
    assert record.action == "block"
    for secret in ("secretid_4242", "1234567890", "12345"):
        assert secret not in record.reason, record.reason
    assert "pattern:" in record.reason


def test_make_record_scrubs_an_unquoted_pattern_text() -> None:
    match = Match(3, 16, "spam", "qq:1234567890", "pattern:qq_number")
    result = ModerationResult(
        "或者 qq:1234567890", "block", ("spam",), "或者 *************", (match,),
        "spam: qq:1234567890 (pattern:qq_number); block spam 'qq:1234567890' (pattern:qq_number)",
    )  # fmt: skip
    masked = make_record(result, direction="output", source="web", store="masked")
    assert "1234567890" not in masked.reason and "pattern:qq_number" in masked.reason
    full = make_record(result, direction="output", source="web", store="full")
    assert "qq:1234567890" in full.reason


# -- 4. a lone surrogate does not break the audit record -----------------------------------------


def test_a_lone_surrogate_does_not_break_the_record() -> None:
    text = "好的\ud83d我们"
    result = ModerationResult(text, "pass", (), text, (), "no rule matched")
    record = make_record(result, direction="output", source="web", store="full")
    assert len(record.text_sha256) == 64
    other = make_record(
        ModerationResult("好的\ud83e我们", "pass", (), "好的\ud83e我们", (), "x"),
        direction="output",
        source="web",
        store="full",
    )
    assert other.text_sha256 != record.text_sha256


def test_a_lone_surrogate_reaches_the_jsonl_log(tmp_path: Path) -> None:
    log = JsonlAuditLog(tmp_path / "audit.jsonl")
    text = "好的\ud83d我们"
    log.record(
        make_record(
            ModerationResult(text, "mask", (), text, (), "r"), direction="output", source="web", store="full"
        )
    )
    log.close()
    [line] = (tmp_path / "audit.jsonl").read_text(encoding="utf-8").splitlines()
    assert json.loads(line)["text"] == text

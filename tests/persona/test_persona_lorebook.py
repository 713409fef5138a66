"""Lorebook activation rules and SillyTavern World Info import."""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from vstreamer.errors import PersonaError
from vstreamer.persona import Lorebook, LoreEntry, load_lorebook, lorebook
from vstreamer.persona.matching import MAX_REGEX_SCAN_CHARS, ScanText, compile_regex


def book(*entries: LoreEntry, **options: Any) -> Lorebook:
    return Lorebook(entries=list(entries), **options)


def entry(keys: list[str], content: str = "", **options: Any) -> LoreEntry:
    return LoreEntry(keys=keys, content=content or f"about {keys[0] if keys else 'nothing'}", **options)


def names(entries: list[LoreEntry]) -> list[str]:
    return [e.content for e in entries]


def test_keys_in_recent_messages_activate() -> None:
    b = book(entry(["dragon"]), entry(["castle"]))
    assert names(b.activate(["I saw a Dragon!"])) == ["about dragon"]
    assert b.activate([]) == []


def test_only_the_last_scan_depth_messages_are_scanned() -> None:
    b = book(entry(["dragon"]), scan_depth=2)
    assert b.activate(["dragon", "hello", "there"]) == []
    assert names(b.activate(["hello", "dragon", "there"])) == ["about dragon"]
    assert book(entry(["dragon"]), scan_depth=0).activate(["dragon"]) == []
    assert names(b.activate(deque(["dragon", "x"]))) == ["about dragon"]


def test_keys_do_not_span_messages() -> None:
    assert book(entry(["ab"])).activate(["a", "b"]) == []


def test_case_sensitivity_per_entry() -> None:
    b = book(entry(["Apple"], "fruit"), entry(["Apple"], "company", case_sensitive=True))
    assert names(b.activate(["an apple a day"])) == ["fruit"]
    assert names(b.activate(["Apple shares"])) == ["fruit", "company"]


def test_chinese_keys_match_as_substrings() -> None:
    b = book(entry(["布丁"], "橘猫"))
    assert names(b.activate(["你家布丁今天乖吗"])) == ["橘猫"]


def test_selective_needs_a_secondary_key() -> None:
    e = entry(["mia"], "birthday fact", selective=True, secondary_keys=["birthday", "生日"])
    b = book(e)
    assert b.activate(["mia is here"]) == []
    assert names(b.activate(["when is mia's birthday?"])) == ["birthday fact"]
    assert b.activate(["happy birthday"]) == []
    # secondary keys are ignored unless selective
    assert names(book(entry(["mia"], secondary_keys=["zzz"])).activate(["mia"])) == ["about mia"]
    # selective without secondary keys behaves like a plain entry
    assert names(book(entry(["mia"], selective=True)).activate(["mia"])) == ["about mia"]


def test_constant_entries_always_fire() -> None:
    b = book(entry([], "always", constant=True), entry(["x"], "sometimes"))
    assert names(b.activate([])) == ["always"]
    assert names(b.activate(["x"])) == ["always", "sometimes"]


def test_disabled_and_empty_entries_never_fire() -> None:
    b = book(
        entry(["x"], enabled=False),
        entry([], "c", constant=True, enabled=False),
        LoreEntry(keys=["x"], content=" "),
    )
    assert b.activate(["x"]) == []


def test_sorted_by_insertion_order_then_file_order() -> None:
    b = book(
        entry(["a"], "A", insertion_order=30),
        entry(["b"], "B", insertion_order=10),
        entry(["c"], "C", insertion_order=30),
    )
    assert names(b.activate(["a b c"])) == ["B", "A", "C"]


def test_token_budget_drops_lowest_priority_first() -> None:
    def count(text: str) -> int:
        return len(text)

    entries = [
        entry(["k"], "a" * 40, priority=5, insertion_order=1),
        entry(["k"], "b" * 40, priority=20, insertion_order=2),
        entry(["k"], "c" * 40, priority=10, insertion_order=3),
        entry(["k"], "d" * 40, priority=10, insertion_order=4),
    ]
    b = book(*entries, token_budget=100)
    kept = b.activate(["k"], count_tokens=count)
    # b (priority 20) and c (priority 10, lower insertion_order than d) survive, in insertion order
    assert [e.content[0] for e in kept] == ["b", "c"]
    assert [e.content[0] for e in book(*entries, token_budget=0).activate(["k"], count)] == [
        "a",
        "b",
        "c",
        "d",
    ]


def test_token_budget_keeps_constants_if_possible() -> None:
    def count(text: str) -> int:
        return len(text)

    b = book(
        entry([], "C" * 50, constant=True, priority=1),
        entry(["k"], "H" * 50, priority=99),
        token_budget=60,
    )
    assert [e.content[0] for e in b.activate(["k"], count)] == ["C"]
    # a constant that alone exceeds the budget gives way
    big = book(entry([], "C" * 80, constant=True), entry(["k"], "H" * 50), token_budget=60)
    assert [e.content[0] for e in big.activate(["k"], count)] == ["H"]


def test_too_big_entry_is_skipped_not_blocking() -> None:
    def count(text: str) -> int:
        return len(text)

    b = book(entry(["k"], "x" * 90, priority=50), entry(["k"], "y" * 30, priority=1), token_budget=60)
    assert [e.content[0] for e in b.activate(["k"], count)] == ["y"]


def test_use_regex_keys() -> None:
    b = book(
        entry([r"\bcolou?r\b"], "color", use_regex=True),
        entry(["/^HELLO/"], "greeting", use_regex=True, case_sensitive=True),
        entry(["/^hello/i"], "greeting-i", use_regex=True, case_sensitive=True),
    )
    assert names(b.activate(["my favourite colour"])) == ["color"]
    assert names(b.activate(["hello there"])) == ["greeting-i"]
    assert names(b.activate(["HELLO"])) == ["greeting", "greeting-i"]
    assert b.activate(["coloured pencils"]) == []


@pytest.mark.parametrize("bad", ["(unclosed", "*", "/abc/q", "x" * 300, "(a+)+$", r"(\w+\s?)*$", r"(a)\1"])
def test_bad_or_dangerous_regex_never_matches(bad: str) -> None:
    assert compile_regex(bad, case_sensitive=False) is None
    b = book(entry([bad], "never", use_regex=True), entry(["ok"], "fine"))
    assert names(b.activate(["a" * 5000 + "! ok (unclosed *"])) == ["fine"]


def test_regex_scan_of_long_text_searches_only_its_tail(regex_searches: list[int]) -> None:
    """Regex keys are searched in the last MAX_REGEX_SCAN_CHARS of the chat, however long it is: their cost (up to
    the square of the text for an open-ended repeat) stays bounded. Counted, not timed."""
    b = book(*[entry([f"/key{i}[0-9]+x/"], use_regex=True) for i in range(200)])
    b.activate(["key1" + "9" * 100_000])
    assert regex_searches  # at least the first key ran, within the turn's budget
    assert max(regex_searches) <= MAX_REGEX_SCAN_CHARS


def test_recursive_scanning() -> None:
    a = entry(["sword"], "The sword was forged by the smith Brom.")
    b_ = entry(["brom"], "Brom lives in Carvahall.")
    c = entry(["carvahall"], "Carvahall is a village.")
    assert names(book(a, b_, c).activate(["a sword"])) == [a.content]
    assert names(book(a, b_, c, recursive_scanning=True).activate(["a sword"])) == [
        a.content,
        b_.content,
        c.content,
    ]


def test_recursion_is_bounded() -> None:
    chain = [entry([f"k{i}"], f"k{i + 1}") for i in range(20)]
    hits = book(*chain, recursive_scanning=True).activate(["k0"])
    assert 1 < len(hits) < 20


def test_decorators_activate_dont_activate_and_prompt_text() -> None:
    forced = LoreEntry(keys=[], content="@@activate\n@@depth 4\nAlways here.")
    blocked = LoreEntry(keys=["x"], content="@@dont_activate\nNever here.")
    assert forced.decorators == ["activate", "depth 4"] and forced.prompt_text == "Always here."
    assert book(forced, blocked).activate(["x"]) == [forced]


def test_matchers_are_compiled_once_and_recompiled_on_change() -> None:
    b = book(entry(["a"]))
    b.activate(["a"])
    compiled = b._compiled
    b.activate(["a"])
    assert b._compiled is compiled
    changed = b.model_copy(update={"entries": [entry(["z"])]})
    assert names(changed.activate(["z"])) == ["about z"]
    assert changed == book(entry(["z"]))  # the cache does not affect equality


def test_big_books_build_their_matchers_once_and_prepare_the_chat_once_per_scan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What keeps a 5,000-entry book cheap on every turn, counted rather than timed (its speed is a benchmark's
    business): the keys' matchers are built once, not per activation, and the scanned chat is prepared (folded)
    once per scan, not per entry."""
    b = book(*[entry([f"word{i}", f"词{i}"], f"fact {i}") for i in range(5000)], token_budget=0)
    recent = ["chat " * 200 + "word42 and 词4999"] * 4
    b.activate(recent)  # builds the matchers
    built = prepared = 0
    build, prepare = lorebook.keys_matcher, ScanText.of

    def counted_build(*args: Any, **kwargs: Any) -> Any:
        nonlocal built
        built += 1
        return build(*args, **kwargs)

    def counted_prepare(text: str, budget: Any = None) -> ScanText:
        nonlocal prepared
        prepared += 1
        return prepare(text, budget)

    monkeypatch.setattr(lorebook, "keys_matcher", counted_build)
    monkeypatch.setattr(lorebook, "ScanText", SimpleNamespace(of=counted_prepare))
    for _ in range(10):
        hits = b.activate(recent)
    assert len(hits) >= 2
    assert (built, prepared) == (0, 10)  # one scan per activation: the book scans no content (not recursive)


# --- World Info ------------------------------------------------------------------------------------


def test_eldoria_world_info(eldoria_path: Path) -> None:
    wi = load_lorebook(eldoria_path)
    assert wi.name == "eldoria-worldinfo" and len(wi.entries) == 4
    first = wi.entries[0]
    assert first.keys == ["eldoria", "wood", "forest", "magical forest"]
    assert (first.id, first.position, first.insertion_order, first.enabled) == (0, "before_char", 100, True)
    hits = wi.model_copy(update={"token_budget": 0}).activate(["Tell me about the glade and its magic"])
    assert [e.id for e in hits] == [2, 3]


def test_world_info_attaches_to_a_persona(eldoria_path: Path, seraphina_path: Path) -> None:
    from vstreamer.persona import load_persona

    seraphina = load_persona(seraphina_path)
    wi = load_lorebook(eldoria_path.read_bytes(), name="Eldoria WI")
    assert wi.name == "Eldoria WI"
    with_wi = seraphina.model_copy(update={"lorebook": wi})
    assert with_wi.lorebook is wi


def test_world_info_field_mapping() -> None:
    st = {
        "entries": {
            "5": {
                "uid": 5,
                "key": ["Mira"],
                "keysecondary": ["sister"],
                "content": "Mira is the sister.",
                "order": 40,
                "position": 4,
                "disable": True,
                "constant": False,
                "selective": True,
                "caseSensitive": None,
                "probability": 100,
                "depth": 4,
            },
            "6": {"uid": 6, "key": "a, b", "content": "c", "position": 1, "caseSensitive": True},
        }
    }
    wi = load_lorebook(json.dumps(st).encode(), name="st")
    mira, other = wi.entries
    assert (mira.id, mira.secondary_keys, mira.insertion_order, mira.enabled) == (5, ["sister"], 40, False)
    assert mira.selective and not mira.case_sensitive and mira.position == "after_char"
    assert mira.extensions == {"position": 4, "probability": 100, "depth": 4}
    assert (other.keys, other.position, other.case_sensitive) == (["a", "b"], "after_char", True)


def test_load_lorebook_other_shapes(cardkit: Any) -> None:
    v3 = {
        "spec": "lorebook_v3",
        "data": {"name": "L", "entries": [{"keys": ["k"], "content": "c", "use_regex": False}]},
    }
    assert load_lorebook(json.dumps(v3).encode()).name == "L"
    bare = {"entries": [{"keys": ["k"], "content": "c"}]}
    assert len(load_lorebook(json.dumps(bare).encode()).entries) == 1
    card = cardkit.v2()
    assert load_lorebook(json.dumps(card).encode()).name == "Aria book"
    assert load_lorebook(cardkit.card_png(chara=card)).name == "Aria book"


@pytest.mark.parametrize(
    "data",
    [
        b"[]",
        b"{}",
        b'{"entries": 3}',
        b'{"entries": {"1": {"key": {"a": 1}}}}',
        b"not json",
        b"\x89PNG\r\n\x1a\n",
    ],
)
def test_load_lorebook_rejects_malformed(data: bytes) -> None:
    with pytest.raises(PersonaError):
        load_lorebook(data)


def test_load_lorebook_card_without_book(cardkit: Any) -> None:
    card = cardkit.v2()
    del card["data"]["character_book"]
    with pytest.raises(PersonaError, match="no character_book"):
        load_lorebook(json.dumps(card).encode())

"""Limits that keep an uploaded persona from stalling every chat turn or inflating in storage."""

from __future__ import annotations

import json
import re
import time
import zlib
from typing import Any

import pytest
import yaml

from vstreamer.errors import PersonaError
from vstreamer.persona import Lorebook, LoreEntry, limits, load_lorebook, load_persona_bytes, matching, png
from vstreamer.persona.limits import MAX_LORE_KEYS, MAX_REGEX_KEYS
from vstreamer.persona.matching import compile_regex, unsafe_regex_reason


def _card(entries: list[dict[str, Any]], cardkit: Any) -> bytes:
    card = cardkit.v2()
    card["data"]["character_book"]["entries"] = entries
    return json.dumps(card).encode()


# --- regex keys ------------------------------------------------------------------------------------

SIDE_BY_SIDE = [r".*.*.*.*=", r"\s*\s*\s*x", r"[^!]*[^!]*!", r"a.*b.*c", r".{0,5000}.{0,5000}=", "/x+y+/i"]
NESTED = [r"(a+)+$", r"(\w+\s?)*$", r"(a)\1"]


@pytest.mark.parametrize("key", SIDE_BY_SIDE + NESTED)
def test_backtracking_regex_key_is_refused_at_import(key: str, cardkit: Any) -> None:
    data = _card([{"keys": [key], "content": "lore", "use_regex": True}], cardkit)
    with pytest.raises(PersonaError, match="regex key .* may backtrack catastrophically"):
        load_persona_bytes(data, "evil.json")


@pytest.mark.parametrize("key", SIDE_BY_SIDE)
def test_backtracking_regex_key_already_stored_never_matches(key: str) -> None:
    assert compile_regex(key, case_sensitive=False) is None
    book = Lorebook(entries=[LoreEntry(keys=[key], content="never", use_regex=True)])
    assert book.activate(["a" * 400 + " x = ! bc"]) == []


#: a repeat of something that can match in more than one way (alternatives that overlap, an optional
#: part), or bounded repeats that multiply: each passed the old check and backtracks exponentially
AMBIGUOUS_REPEATS = [
    r"(a|a)*b",
    r"(a|ab)*c",
    r"(?:x|x){0,100}y",
    r"(?:a?a)*b",
    r"(?:a?a?){0,50}b",
    r"/(?:cat|cats)+!/i",
    r"a{0,99}a{0,99}a{0,99}b",
]


@pytest.mark.parametrize("key", AMBIGUOUS_REPEATS)
def test_ambiguous_repeat_regex_key_is_refused_at_import(key: str, cardkit: Any) -> None:
    data = _card([{"keys": [key], "content": "lore", "use_regex": True}], cardkit)
    with pytest.raises(PersonaError, match="regex key .* may backtrack catastrophically"):
        load_persona_bytes(data, "evil.json")


def test_ambiguous_repeat_regex_keys_already_stored_cannot_stall_a_turn(regex_searches: list[int]) -> None:
    """They never reach the regex engine (they took seconds there, doubling with each letter). Counted, not timed:
    one search of them fails this on any machine, and a busy one cannot fail it."""
    book = Lorebook(entries=[LoreEntry(keys=[k], content=k, use_regex=True) for k in AMBIGUOUS_REPEATS])
    found = book.activate(["a" * 18 + "! " + "x" * 18 + "!"])
    assert found == []
    assert regex_searches == []


def test_slow_regex_keys_share_a_few_ms_per_turn() -> None:
    r"""What the static check lets through may still be slow on hostile chat (``(\w|\d)+x`` is
    quadratic, and ``re`` reads it as ``[\w\d]+x``): the regex keys of one turn share a time budget."""
    slow = r"(\w|\d)+x"
    assert unsafe_regex_reason(slow) is None
    entries = [LoreEntry(keys=["^1+"], content="cheap regex, first", use_regex=True)]
    entries += [LoreEntry(keys=[slow], content=f"slow {i}", use_regex=True) for i in range(MAX_REGEX_KEYS)]
    entries += [LoreEntry(keys=["!x"], content="plain key, last")]
    book = Lorebook(entries=entries, token_budget=0, recursive_scanning=True)
    book.activate(["1" * 998 + "!x"])  # compiled
    start = time.perf_counter()
    found = book.activate(["1" * 998 + "!x"])
    assert (
        time.perf_counter() - start < 0.5
    )  # was ~1 s: 50 keys of ~20 ms each (~10 ms now; room for a busy machine)
    assert [e.content for e in found] == ["cheap regex, first", "plain key, last"]


@pytest.mark.parametrize(
    ("key", "chat"),
    [
        (r"/\b(sword|blade)s?\b/i", "she drew her Blades"),
        (r"/(?:^|\W)(Nyx|Nix)(?:$|\W)/", "ask Nyx."),
        (r"/dragon(s|kin)?/i", "the Dragonkin came"),
        (r"\bkill(s|ed|ing)?\b", "he killed it"),
        (r"\bcolou?r\b", "what colour"),
        ("小星|星星", "今天的星星很亮"),
        (r"/\d{1,3}(?:\.\d{1,3}){3}/", "ping 10.0.0.1 now"),
        ("(?i)eldoria", "off to ELDORIA"),
        (r"/the .* tower/i", "The old grey tower"),
        (r"\w+ing\b", "she was singing"),
    ],
)
def test_everyday_regex_keys_still_match(key: str, chat: str) -> None:
    assert unsafe_regex_reason(key) is None
    book = Lorebook(entries=[LoreEntry(keys=[key], content="hit", use_regex=True)])
    assert [e.content for e in book.activate(["hello", chat])] == ["hit"]
    assert book.activate(["quiet now."]) == []


@pytest.mark.parametrize(
    ("key", "chat", "hit"),
    [("{desc}", "see {desc} here", True), ("hello{e}", "hellx", False), ("hello{e}", "hello{e}", True),
     ("[{d}]{2}", "{d", True), ("a{,2}b{2}", "abb", True)],
)  # fmt: skip
def test_regex_keys_read_braces_as_re_does(key: str, chat: str, hit: bool) -> None:
    """Keys are written for Python's re; the regex engine that runs them must not read a literal
    ``{e}`` or ``{d}`` as a fuzzy-matching constraint."""
    book = Lorebook(entries=[LoreEntry(keys=[key], content="hit", use_regex=True)])
    assert bool(book.activate([chat])) is hit
    assert (re.search(key, chat, re.IGNORECASE) is not None) is hit


def test_ordinary_regex_keys_are_accepted(cardkit: Any) -> None:
    keys = ["cat|dog", r"\bMochi\b", "^hello.*", "/lut(e|es)/i", r"\d{1,3}-\d{1,3}", "(unclosed"]
    assert [unsafe_regex_reason(k) for k in keys] == [None] * len(keys)
    data = _card([{"keys": [k], "content": k, "use_regex": True} for k in keys], cardkit)
    book = load_persona_bytes(data, "ok.json").lorebook
    assert book is not None
    assert [e.content for e in book.activate(["hello, Mochi the cat"])] == keys[:3]


def test_regex_keys_see_only_a_bounded_tail() -> None:
    book = Lorebook(entries=[LoreEntry(keys=["^start"], content="c", use_regex=True)])
    assert book.activate(["start" + "." * (matching.MAX_REGEX_SCAN_CHARS - 5)]) != []
    assert book.activate(["start" + "." * matching.MAX_REGEX_SCAN_CHARS]) == []


def test_too_many_regex_keys_are_refused(cardkit: Any) -> None:
    entries = [{"keys": [f"key{i}"], "content": "c", "use_regex": True} for i in range(MAX_REGEX_KEYS + 1)]
    with pytest.raises(PersonaError, match="regex keys, more than"):
        load_persona_bytes(_card(entries, cardkit), "many.json")
    load_persona_bytes(_card(entries[:MAX_REGEX_KEYS], cardkit), "enough.json")


# --- plain keys ------------------------------------------------------------------------------------


def test_too_many_keys_in_a_card_are_refused(cardkit: Any) -> None:
    per_entry = 100
    count = MAX_LORE_KEYS // per_entry
    entries = [{"keys": [f"k{i}-{j}" for j in range(per_entry)], "content": "c"} for i in range(count)]
    load_persona_bytes(_card(entries, cardkit), "enough.json")
    entries.append({"keys": ["one"], "secondary_keys": ["more"], "selective": True, "content": "c"})
    with pytest.raises(PersonaError, match=f"keys, more than the {MAX_LORE_KEYS} allowed"):
        load_persona_bytes(_card(entries, cardkit), "many.json")


def test_too_many_keys_in_a_world_info_file_are_refused() -> None:
    entries = {str(i): {"key": [f"k{i}-{j}" for j in range(200)], "content": "c"} for i in range(51)}
    with pytest.raises(PersonaError, match="keys, more than"):
        load_lorebook(json.dumps({"entries": entries}).encode(), "wi.json")


def test_plain_keys_see_only_a_bounded_tail() -> None:
    book = Lorebook(entries=[LoreEntry(keys=["needle"], content="c")])
    assert book.activate(["needle" + "." * (matching.MAX_PLAIN_SCAN_CHARS - 6)]) != []
    assert book.activate(["needle" + "." * matching.MAX_PLAIN_SCAN_CHARS]) == []


# --- YAML ------------------------------------------------------------------------------------------


@pytest.fixture(params=limits.YAML_LOADERS, ids=lambda loader: loader.__name__)
def yaml_loader(request: pytest.FixtureRequest) -> type[Any]:
    return request.param  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "text",
    [
        "name: A\ndescription: &s long text\nscenario: *s\n",
        "name: A\nlorebook:\n  entries:\n  - &e {keys: [k], content: c}\n  - *e\n",
        "name: a\nextensions:\n  m0: &m0 {a: 1}\n  m1: {<<: *m0}\n",
        "name: x\nextensions: &a {b: *a}\n",
    ],
)
def test_yaml_aliases_are_refused(text: str, yaml_loader: type[Any]) -> None:
    with pytest.raises(PersonaError, match="YAML aliases are not allowed"):
        limits.parse_yaml(text.encode(), "a.yaml", yaml_loader)


def test_yaml_anchor_without_alias_and_inline_merge_still_load(yaml_loader: type[Any]) -> None:
    text = b"name: A\ndescription: &s text\nextensions: {<<: {a: 1}, b: [1, {c: d}]}\n"
    assert limits.parse_yaml(text, "a.yaml", yaml_loader) == {
        "name": "A",
        "description": "text",
        "extensions": {"a": 1, "b": [1, {"c": "d"}]},
    }


@pytest.mark.parametrize(
    "text", ["a: !!python/object/apply:os.getcwd []\n", "a: !!set {x, y}\n", "a: !!binary aGVsbG8=\n"]
)
def test_yaml_tags_are_refused_by_every_loader(text: str, yaml_loader: type[Any]) -> None:
    with pytest.raises(PersonaError):
        limits.parse_yaml(text.encode(), "t.yaml", yaml_loader)


def test_the_fast_yaml_loader_is_used_when_available() -> None:
    if getattr(yaml, "__with_libyaml__", False):
        assert issubclass(limits.YAML_LOADERS[0], yaml.CSafeLoader)


def test_big_yaml_is_refused_with_a_clear_message() -> None:
    text = b"name: a\ndescription: " + b"a" * limits.MAX_YAML_BYTES + b"\n"
    with pytest.raises(PersonaError, match="YAML text is .* bytes, more than the .* allowed"):
        load_persona_bytes(text, "big.yaml")


def test_total_text_of_a_document_is_capped() -> None:
    shared = "a" * 100_000  # what YAML aliases would share: few values, much text
    with pytest.raises(PersonaError, match="characters of text"):
        limits.check_tree({"entries": [shared] * (limits.MAX_TOTAL_CHARS // len(shared) + 1)}, "x")
    limits.check_tree({"entries": [shared] * (limits.MAX_TOTAL_CHARS // len(shared) - 1)}, "x")


# --- PNG -------------------------------------------------------------------------------------------


def test_png_inflates_only_the_first_chunk_of_each_card_keyword(
    cardkit: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real_inflate = png._inflate

    def counting_inflate(data: bytes, where: str) -> bytes:
        calls.append(len(data))
        return real_inflate(data, where)

    monkeypatch.setattr(png, "_inflate", counting_inflate)
    text = cardkit.b64(cardkit.v2()).encode()
    ztxt = cardkit.chunk(b"zTXt", b"chara\0\0" + zlib.compress(text))
    itxt = cardkit.chunk(b"iTXt", b"CCV3\0\1\0\0\0" + zlib.compress(cardkit.b64(cardkit.v3()).encode()))
    data = cardkit.png(*([ztxt] * 50 + [itxt] * 50))
    assert set(png.read_card_chunks(data)) == {"chara", "ccv3"}
    assert len(calls) == 2

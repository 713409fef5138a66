"""Persona model, macros, our YAML/TOML/JSON format and the bundled personas."""

from __future__ import annotations

from pathlib import Path

import pytest

from vstreamer.errors import PersonaError
from vstreamer.persona import (
    DEFAULT_PERSONA_ID,
    Persona,
    SamplingDefaults,
    bundled_personas,
    load_persona,
    load_persona_bytes,
    slugify,
)


def test_render_replaces_char_and_user_in_any_case() -> None:
    p = Persona(name="小星")
    text = "{{char}} greets {{USER}}; {{ Char }} and {{user}}; <BOT> to <user>; {{original}} stays"
    assert p.render(text, "阿明") == "小星 greets 阿明; 小星 and 阿明; 小星 to 阿明; {{original}} stays"


def test_render_uses_nickname_when_set() -> None:
    p = Persona(name="Seraphina Evergreen", nickname="Sera")
    assert p.render("I am {{char}}.", "you") == "I am Sera."
    assert p.char_name == "Sera"


def test_render_leaves_unknown_macros_and_plain_text() -> None:
    p = Persona(name="A")
    assert p.render("{{charx}} <b> {{original}} {{roll:x}}", "u") == "{{charx}} <b> {{original}} {{roll:x}}"
    assert p.render("no macros", "u") == "no macros"


def test_render_fills_the_v3_macros_in_any_case() -> None:
    p = Persona(name="Aria")
    for _ in range(20):
        assert p.render("{{random:Hello,Hi,Hey}}", "u") in {"Hello", "Hi", "Hey"}
        assert p.render("{{RANDOM: a\\,b ,c}}", "u") in {" a,b ", "c"}
        assert p.render("{{random:{{char}},{{user}}}}", "Bob") in {"Aria", "Bob"}
        assert 1 <= int(p.render("{{roll:6}}", "u")) <= 6
        assert 1 <= int(p.render("{{Roll:D20}}", "u")) <= 20
    assert {p.render("{{random:a,b,c,d}}", "u") for _ in range(200)} == {"a", "b", "c", "d"}
    assert {p.render("{{roll:d2}}", "u") for _ in range(200)} == {"1", "2"}
    # pick: the same text gives the same choice, request after request (the prompt stays cacheable)
    picked = p.render("Mood: {{pick::calm,loud,sleepy}}", "u")
    assert picked in {"Mood: calm", "Mood: loud", "Mood: sleepy"}
    assert all(p.render("Mood: {{pick::calm,loud,sleepy}}", "u") == picked for _ in range(20))
    assert p.render("{{reverse:Hello}} {{char}}", "u") == "olleH Aria"
    assert p.render("a{{// note for card authors}}b{{hidden_key: dragon}}c{{Comment: hi}}d", "u") == "abcd"


def test_original_is_ours_in_any_case() -> None:
    from vstreamer.engine.prompt import main_prompt

    ours = main_prompt(Persona(name="Aria"), "u")
    card = Persona(name="Aria", system_prompt="{{Original}}\nAlso: be brief.")
    assert main_prompt(card, "u") == f"{ours}\nAlso: be brief."


def test_greetings_skips_empty() -> None:
    p = Persona(name="A", greeting="hi", alternate_greetings=["", "  ", "yo"])
    assert p.greetings() == ["hi", "yo"]
    assert Persona(name="B").greetings() == []


@pytest.mark.parametrize(
    ("name", "expected"),
    [("Seraphina", "seraphina"), ("Dr. Jekyll & Mr Hyde", "dr-jekyll-mr-hyde"), ("Zoë", None)],
)
def test_slugify_ascii(name: str, expected: str | None) -> None:
    slug = slugify(name)
    assert slug == (expected or slug)
    assert Persona(name=name).id == slug


def test_slugify_chinese_is_stable_and_distinct() -> None:
    assert slugify("小星") == slugify("小星")
    assert slugify("小星") != slugify("大星")
    assert slugify("小星").startswith("p-")
    assert slugify("小星 Star").startswith("star-")
    assert Persona(name="小星").id == slugify("小星")


def test_id_must_be_a_slug() -> None:
    with pytest.raises(ValueError, match="id"):
        Persona(id="Bad Id!", name="x")


def test_persona_forbids_unknown_fields() -> None:
    with pytest.raises(ValueError, match="colour"):
        Persona(name="x", colour="red")
    with pytest.raises(ValueError):
        SamplingDefaults(temperature=0.5, top_k=3)


def test_avatar_is_not_in_repr() -> None:
    p = Persona(name="x", avatar_png=b"\x89PNG" + b"x" * 1000)
    assert "avatar_png" not in repr(p)


def test_yaml_persona_with_lorebook(tmp_path: Path) -> None:
    path = tmp_path / "mia.yaml"
    path.write_text(
        "name: Mia\nlanguage: en\ngreeting: Hi {{user}}\ncharacter_version: 1.0\n"
        "sampling: {temperature: 0.7}\n"
        "lorebook:\n  entries:\n    - keys: [cake]\n      content: Mia bakes cakes.\n",
        encoding="utf-8",
    )
    p = load_persona(path)
    assert (p.id, p.name, p.language, p.source_format) == ("mia", "Mia", "en", "vstreamer")
    assert p.character_version == "1.0"
    assert p.sampling.temperature == 0.7
    assert p.lorebook is not None and p.lorebook.entries[0].keys == ["cake"]


def test_yaml_unknown_key_error_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yml"
    path.write_text("name: Mia\nfavourite_colour: red\n", encoding="utf-8")
    with pytest.raises(PersonaError, match=r"bad\.yml.*favourite_colour"):
        load_persona(path)


def test_yaml_nested_unknown_key_is_named() -> None:
    data = b"name: Mia\nlorebook:\n  entries:\n    - keys: [a]\n      content: b\n      weight: 3\n"
    with pytest.raises(PersonaError, match=r"lorebook\.entries\.0\.weight"):
        load_persona_bytes(data, "mia.yaml")


def test_yaml_missing_name() -> None:
    with pytest.raises(PersonaError, match="name"):
        load_persona_bytes(b"description: nobody\n", "x.yaml")


def test_yaml_rejects_non_json_values() -> None:
    with pytest.raises(PersonaError, match="date"):
        load_persona_bytes(b"name: Mia\nextensions: {born: 2020-01-01}\n", "x.yaml")


def test_yaml_alias_bomb_is_rejected() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    bomb = "name: Bomb\nextensions:\n" + "\n".join("  " + line for line in lines) + "\n"
    with pytest.raises(PersonaError, match="YAML aliases are not allowed"):
        load_persona_bytes(bomb.encode(), "bomb.yaml")


def test_yaml_python_tags_are_not_executed() -> None:
    with pytest.raises(PersonaError, match="invalid YAML"):
        load_persona_bytes(b"name: !!python/object/apply:os.system ['true']\n", "x.yaml")


def test_toml_persona(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text('name = "Tom"\nlanguage = "en"\n[sampling]\nmax_tokens = 64\n', encoding="utf-8")
    p = load_persona(path)
    assert p.name == "Tom" and p.sampling.max_tokens == 64


def test_our_json_format() -> None:
    p = load_persona_bytes(b'{"id": "j1", "name": "Jay", "tags": ["a"]}', "j.json")
    assert (p.id, p.tags, p.source_format) == ("j1", ["a"], "vstreamer")


def test_our_format_cannot_set_avatar_or_source_format() -> None:
    with pytest.raises(PersonaError, match="avatar_png"):
        load_persona_bytes(b'{"name": "Jay", "avatar_png": "abc"}', "j.json")
    p = load_persona_bytes(b'{"name": "Jay", "source_format": "chara_card_v3"}', "j.json")
    assert p.source_format == "vstreamer"


def test_string_limit_is_enforced() -> None:
    huge = "x" * 100_001
    with pytest.raises(PersonaError, match="description"):
        load_persona_bytes(f'{{"name": "A", "description": "{huge}"}}'.encode(), "a.json")


def test_bundled_personas() -> None:
    personas = {p.id: p for p in bundled_personas()}
    assert DEFAULT_PERSONA_ID == "xiaoxing"
    assert {"xiaoxing", "nova"} <= set(personas)
    xiaoxing = personas["xiaoxing"]
    assert xiaoxing.name == "小星" and xiaoxing.language == "zh"
    assert len(xiaoxing.greetings()) == 3
    assert xiaoxing.post_history_instructions and xiaoxing.example_dialogue
    assert xiaoxing.lorebook is not None and len(xiaoxing.lorebook.entries) >= 2
    assert personas["nova"].language == "en"


def test_bundled_lorebook_activates() -> None:
    xiaoxing = next(p for p in bundled_personas() if p.id == DEFAULT_PERSONA_ID)
    assert xiaoxing.lorebook is not None
    hits = xiaoxing.lorebook.activate(["小星你几点直播呀？", "你家猫叫什么"])
    assert [e.name for e in hits] == ["直播时间", "布丁"]
    assert xiaoxing.lorebook.activate(["今天天气不错"]) == []

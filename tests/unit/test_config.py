"""Settings: precedence, validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from vstreamer.config import Settings
from vstreamer.errors import ConfigError


def test_defaults_follow_the_seed() -> None:
    settings = Settings.load()
    assert (settings.temperature, settings.top_p) == (0.7, 0.9)
    assert settings.backend == "local"
    assert settings.ui_port != settings.vllm.port == 8000


def test_precedence_flags_over_env_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "vstreamer.toml"
    config.write_text('backend = "openai"\nmax_tokens = 111\ntemperature = 0.2\n[vllm]\nport = 8100\n')
    monkeypatch.setenv("VSTREAMER_MAX_TOKENS", "222")
    settings = Settings.load(config, temperature=0.5)
    assert settings.backend == "openai"  # file
    assert settings.max_tokens == 222  # env beats file
    assert settings.temperature == 0.5  # flag beats both
    assert settings.vllm.port == 8100


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"base_url": "localhost:8000"}, "base_url must be an http"),
        ({"base_url": "http://h:8000/v1?api-version=1"}, "query"),  # chat requests would drop it
        ({"base_url": "http://h:8000/v1#x"}, "query"),
        ({"backend": "gpt"}, "backend"),
        ({"context_window": 512, "max_tokens": 500}, "context_window"),
        ({"api_key": "changeme"}, "placeholder"),
        ({"ui_port": 8000}, "collides"),
        ({"temperature": 3}, "temperature"),
        ({"model_path": "/nonexistent.gguf"}, "not a file"),
        ({"prompt_roles": "mistral"}, "prompt_roles"),
    ],
)
def test_invalid_settings_give_clear_errors(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.load(**overrides)


def test_a_validators_message_comes_without_pydantics_prefix() -> None:
    """It read "- settings: Value error, model_path /nope/model.gguf is not a file"."""
    with pytest.raises(ConfigError) as caught:
        Settings.load(model_path="/nope/model.gguf")
    assert "  - settings: model_path /nope/model.gguf is not a file" in str(caught.value)
    assert "Value error" not in str(caught.value)


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("VSTREAMER_LEXICON_DIRS", "/tmp", """VSTREAMER_LEXICON_DIRS must hold a JSON list, such as VSTREAMER_LEXICON_DIRS='["""),
        ("VSTREAMER_CORS_ORIGINS", "https://a.example", "VSTREAMER_CORS_ORIGINS must hold a JSON list, such as"),
        ("VSTREAMER_UI_USERS", "alice:pw", """VSTREAMER_UI_USERS must hold a JSON object, such as VSTREAMER_UI_USERS='{"""),
        ("VSTREAMER_VLLM__EXTRA_ARGS", "--enable-prefix-caching", "VSTREAMER_VLLM__EXTRA_ARGS='["),
    ],
)  # fmt: skip
def test_an_environment_value_that_is_not_json_says_what_it_should_hold(
    variable: str, value: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It said only: error parsing value for field "lexicon_dirs" from source "EnvSettingsSource"."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        Settings.load()
    field = variable.removeprefix("VSTREAMER_").partition("__")[0].lower()
    assert f"invalid configuration: {field}: " in str(caught.value)  # the setting, as a config file names it
    assert expected in str(caught.value) and "not JSON" in str(caught.value)
    assert "EnvSettingsSource" not in str(caught.value)


async def test_prompt_roles_reach_the_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    from vstreamer.llm import create_backend
    from vstreamer.llm.resilience import ResilientBackend

    assert Settings.load().prompt_roles == "auto"
    monkeypatch.setenv("VSTREAMER_PROMPT_ROLES", "strict")
    backend = create_backend(Settings.load(backend="openai"))
    assert isinstance(backend, ResilientBackend)
    assert backend.primary.prompt_roles == "strict"  # type: ignore[attr-defined]
    await backend.aclose()
    pytest.importorskip("llama_cpp")
    assert create_backend(Settings.load(prompt_roles="system")).prompt_roles == "system"  # type: ignore[attr-defined]


def test_unknown_key_in_file_is_rejected(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("temprature = 0.3\n")
    with pytest.raises(ConfigError, match="temprature"):
        Settings.load(config)
    with pytest.raises(ConfigError, match="not found"):
        Settings.load(tmp_path / "missing.toml")


def test_secret_is_not_shown() -> None:
    settings = Settings.load(api_key="sk-realsecret123456")
    assert "sk-realsecret123456" not in repr(settings)

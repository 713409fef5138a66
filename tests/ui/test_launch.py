"""The web UI's start-up and access rules without a browser: cookie secret, local-only access, avatars, URL."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vstreamer.config import Settings
from vstreamer.persona import PersonaLibrary
from vstreamer.ui import auth, launcher
from vstreamer.ui.options import LOCAL_USER, UIOptions

pytest.importorskip("chainlit", reason="the web UI needs Chainlit")


@pytest.fixture
def prepared_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """``prepare`` as a restart with these options would run it; returns the cookie secret it set."""
    monkeypatch.setenv(
        "CHAINLIT_APP_ROOT", os.environ["CHAINLIT_APP_ROOT"]
    )  # restored after prepare moves it
    monkeypatch.delenv("CHAINLIT_AUTH_SECRET", raising=False)
    settings = Settings.load(data_dir=tmp_path)

    def prepare(options: UIOptions) -> str:
        launcher.prepare(settings, options)
        return os.environ["CHAINLIT_AUTH_SECRET"]

    return prepare


def test_login_cookies_end_when_a_user_is_removed_or_changes_password(prepared_secret) -> None:  # type: ignore[no-untyped-def]
    """The cookie secret was kept as is across restarts: a removed user's cookie still logged him in."""
    both = UIOptions(auth="password", users={"alice": "alice-pw-1", "bob": "bob-pw-2"})
    first = prepared_secret(both)
    assert prepared_secret(both) == first  # a plain restart keeps everyone logged in
    assert prepared_secret(UIOptions(auth="password", users={"alice": "alice-pw-1"})) != first
    assert prepared_secret(UIOptions(auth="password", users={"alice": "alice-pw-1", "bob": "new"})) != first
    assert prepared_secret(UIOptions(auth="none")) != first
    assert prepared_secret(both) == first


def test_an_operators_cookie_secret_is_still_the_base(
    prepared_secret, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    options = UIOptions(auth="password", users={"alice": "pw"})
    kept = prepared_secret(options)
    monkeypatch.setenv("CHAINLIT_AUTH_SECRET", "operator-secret-" + "x" * 40)
    from_operator = prepared_secret(options)
    assert from_operator not in (kept, "operator-secret-" + "x" * 40)
    assert (
        prepared_secret(options) == from_operator
    )  # preparing again does not derive from the derived secret


@pytest.mark.parametrize(
    "host", ["127.0.0.1:8310", "localhost:8310", "LocalHost", "127.0.0.2", "[::1]:8310", "[::1]"]
)
def test_the_local_user_on_a_loopback_host(host: str) -> None:
    from starlette.datastructures import Headers

    assert auth.local_user(Headers({"host": host})) == LOCAL_USER


@pytest.mark.parametrize(
    "host",
    ["attacker.example:8310", "127.0.0.1.attacker.example", "localhost.attacker.example:80", "::1", ""],
)
def test_no_local_user_for_another_host(host: str) -> None:
    """A DNS-rebinding page (attacker.example resolving to 127.0.0.1) must not get the local user's history."""
    from starlette.datastructures import Headers

    assert auth.local_user(Headers({"host": host})) is None
    assert auth.local_user(Headers({})) is None


def test_a_persona_imported_while_running_gets_its_avatar(tmp_path: Path) -> None:
    """Avatars were written at start only: a persona imported later was offered with a missing (404) avatar."""
    from vstreamer.ui import profiles

    library = PersonaLibrary(tmp_path / "personas")
    public = tmp_path / "public"
    profiles.chat_profiles(library.list(), "u", default_id="xiaoxing", public_dir=public)
    card = tmp_path / "luna.yaml"
    card.write_text('id: luna\nname: "Luna"\ndescription: "a new persona"\n', encoding="utf-8")
    library.import_file(card)
    offered = profiles.chat_profiles(library.list(), "u", default_id="xiaoxing", public_dir=public)
    assert "luna" in [p.name for p in offered] and offered[0].name == "xiaoxing"
    for profile in offered:
        assert (public / profile.icon.removeprefix("/public/")).is_file(), profile.icon

    card.write_text('id: luna\nname: "Moon"\n', encoding="utf-8")  # replaced: a stale avatar is rewritten
    library.import_file(card, replace=True)
    profiles.chat_profiles(library.list(), "u", default_id="xiaoxing", public_dir=public)
    assert ">M</text>" in (public / "avatars" / "luna.svg").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:8311"),
        ("::1", "http://[::1]:8311"),
        ("0.0.0.0", "http://127.0.0.1:8311"),
    ],
)
def test_the_announced_url_is_usable(host: str, url: str) -> None:
    assert launcher.browser_url(UIOptions(host=host, port=8311, auth="password", users={"a": "b"})) == url

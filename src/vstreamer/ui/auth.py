"""Who is using the web UI: one local user without login, or Chainlit's password form."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

from vstreamer.config import is_loopback
from vstreamer.ui.options import LOCAL_USER, UIOptions


def check_password(options: UIOptions, username: str, password: str) -> str | None:
    """The user's identifier when the credentials match, else ``None`` (constant-time comparison)."""
    expected = options.users.get(username.strip())
    # Compare against a dummy when the user is unknown, so timing does not reveal which names exist.
    ok = hmac.compare_digest((expected or "\x00" * 16).encode(), password.encode())
    return username.strip() if expected is not None and ok else None


def local_user(headers: Mapping[str, str]) -> str | None:
    """The one local user, for a request addressed to localhost or a loopback IP (``None`` for another ``Host``).

    Without login the UI listens on loopback, but a DNS-rebinding page (its own name resolving to 127.0.0.1)
    reaches it too, and its requests carry that name in ``Host``.
    """
    address = urllib.parse.urlsplit("//" + headers.get("host", "").strip())  # "[::1]:8310" -> "::1"
    try:
        address.port  # noqa: B018 - a malformed port is no loopback address
    except ValueError:
        return None
    return LOCAL_USER if address.hostname and is_loopback(address.hostname) else None


def ensure_jwt_secret(folder: Path) -> str:
    """The base of the login-cookie secret (:func:`cookie_secret`): ``CHAINLIT_AUTH_SECRET`` or one kept in ``folder``.

    Keeping it across restarts lets users stay logged in and resume their conversations after a restart.
    """
    if secret := os.environ.get("CHAINLIT_AUTH_SECRET"):
        return secret
    path = folder / "auth_secret"
    if path.is_file():
        return path.read_text(encoding="utf-8").strip()
    folder.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(secret)
    return secret


def cookie_secret(kept: str, options: UIOptions) -> str:
    """The kept secret bound to the login mode and each user's name and password (hashed).

    A restart with the same users keeps everyone logged in; removing a user or changing a password changes the
    secret, which ends every login cookie signed before (all users log in again).
    """
    users = sorted(
        (name, hashlib.sha256(password.encode()).hexdigest()) for name, password in options.users.items()
    )
    message = json.dumps([options.auth, users], ensure_ascii=False)
    return hmac.new(kept.encode(), message.encode(), hashlib.sha256).hexdigest()

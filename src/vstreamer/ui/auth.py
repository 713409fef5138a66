"""Who is using the web UI: one local user without login, or Chainlit's password form."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from vstreamer.ui.options import LOCAL_USER, UIOptions


def check_password(options: UIOptions, username: str, password: str) -> str | None:
    """The user's identifier when the credentials match, else ``None`` (constant-time comparison)."""
    expected = options.users.get(username.strip())
    # Compare against a dummy when the user is unknown, so timing does not reveal which names exist.
    ok = hmac.compare_digest((expected or "\x00" * 16).encode(), password.encode())
    return username.strip() if expected is not None and ok else None


def local_user() -> str:
    return LOCAL_USER


def ensure_jwt_secret(folder: Path) -> str:
    """The secret Chainlit signs login cookies with: ``CHAINLIT_AUTH_SECRET`` or one kept in ``folder``.

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

"""What the web UI needs beyond the engine's settings: bind address, port and how users log in."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Literal

from vstreamer.config import VLLM_DEFAULT_PORT, Settings, is_loopback
from vstreamer.errors import ConfigError

AuthMode = Literal["none", "password"]
LOCAL_USER = "local"
"""The one user of a UI without login: every browser shares this history (fine on 127.0.0.1)."""


@dataclass(frozen=True, slots=True)
class UIOptions:
    """Web UI options, resolved once by the entry point."""

    host: str = "127.0.0.1"
    port: int = 8310
    auth: AuthMode = "none"
    """``none``: no login, one local user; ``password``: Chainlit's login form checked against ``users``."""
    users: dict[str, str] = field(default_factory=dict, repr=False)
    """Login name -> password (``password`` mode)."""

    @classmethod
    def from_settings(
        cls, settings: Settings, *, host: str | None = None, port: int | None = None
    ) -> UIOptions:
        """Read the options from the settings (``ui_host``, ``ui_auth``, ``ui_users``; flags override).

        Without login every browser shares one history, so that mode only binds to the loopback interface.
        """
        resolved_host = str(host or _setting(settings, "ui_host") or "127.0.0.1")
        auth = str(_setting(settings, "ui_auth") or "none").lower()
        if auth not in ("none", "password"):
            raise ConfigError(f"ui_auth must be 'none' or 'password', got {auth!r}")
        users = _parse_users(_setting(settings, "ui_users"))
        if auth == "password" and not users:
            raise ConfigError("ui_auth is 'password' but no ui_users are configured (name -> password)")
        if auth == "none" and not is_loopback(resolved_host):
            raise ConfigError(
                f"the web UI without login only binds to 127.0.0.1 (asked for {resolved_host}); "
                "set ui_auth='password' and ui_users to serve other machines"
            )
        resolved_port = settings.ui_port if port is None else port  # 0 is refused below, not replaced
        if not 1 <= resolved_port <= 65535:
            raise ConfigError(f"UI port must be 1-65535, got {resolved_port}")
        if resolved_port in (VLLM_DEFAULT_PORT, settings.vllm.port, settings.gateway_port):
            raise ConfigError(
                f"UI port {resolved_port} collides with the vLLM or gateway port; choose another"
            )
        return cls(host=resolved_host, port=resolved_port, auth=auth, users=users)  # type: ignore[arg-type]


def _setting(settings: Settings, name: str) -> object:
    value = getattr(settings, name, None)
    if value is None:
        value = os.environ.get(f"VSTREAMER_{name.upper()}")
    return value


def _parse_users(raw: object) -> dict[str, str]:
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise ConfigError('ui_users must be a JSON object such as {"alice": "s3cret"}') from None
    if not isinstance(raw, dict):
        raise ConfigError('ui_users must map user names to passwords, e.g. {"alice": "s3cret"}')
    users: dict[str, str] = {}
    for name, password in raw.items():
        secret = password.get_secret_value() if hasattr(password, "get_secret_value") else password
        if not isinstance(name, str) or not name.strip() or not isinstance(secret, str) or not secret:
            raise ConfigError("ui_users needs non-empty user names and passwords")
        users[name.strip()] = secret
    return users

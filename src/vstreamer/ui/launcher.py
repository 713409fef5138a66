"""Starts the Chainlit web UI in this process: prepares its app root, then serves it with uvicorn.

The app root lives under ``data_dir/ui``: Chainlit's ``.chainlit/config.toml`` (written from the options on
every start), ``chainlit.md``, ``public/avatars/`` and the login-cookie secret. Chainlit reads its app root when
first imported, so nothing here imports Chainlit before :func:`prepare` has set it.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from vstreamer.config import Settings
from vstreamer.errors import BackendNotInstalled, ConfigError
from vstreamer.listening import listening_socket
from vstreamer.llm.vllm_launch import local_url
from vstreamer.persona import PersonaLibrary
from vstreamer.ui import state as ui_state
from vstreamer.ui.auth import cookie_secret, ensure_jwt_secret
from vstreamer.ui.avatars import write_avatars
from vstreamer.ui.options import UIOptions

logger = logging.getLogger(__name__)
_KEPT_SECRETS: dict[str, str] = {}
"""Cookie secret set by :func:`prepare` -> the secret it came from, so preparing again derives the same one."""

_README = """\
# vstreamer · 虚拟主播

和虚拟主播聊天：选择左上角的角色，发一条消息，看着回复一个字一个字地出来。
**停止**按钮会立刻停下生成，已经说出的部分会保留。

Chat with a virtual streamer: pick a persona at the top left, send a message and watch the reply stream.
The **stop** button ends the generation at once and keeps what was already said.
"""


def _config_toml(options: UIOptions, chainlit_version: str) -> str:
    return f"""\
# Written by `vstreamer ui` on every start; edit the vstreamer settings instead.
[project]
user_env = []
session_timeout = 600
user_session_timeout = 1296000
cache = false
persist_user_env = false
allow_origins = ["*"]

[features]
unsafe_allow_html = false
latex = false
user_message_markdown = false
auto_tag_thread = false
edit_message = false
allow_thread_sharing = false
favorites = false

[features.spontaneous_file_upload]
enabled = false

[features.audio]
enabled = false

[features.mcp]
enabled = false

[UI]
name = "vstreamer"
description = "LLM virtual streamer"
cot = "hidden"
default_sidebar_state = "open"

[meta]
generated_by = "{chainlit_version}"
"""


def app_root(settings: Settings) -> Path:
    return settings.data_dir / "ui"


def prepare(settings: Settings, options: UIOptions) -> Path:
    """Write the app root and point Chainlit at it (environment), before Chainlit is imported."""
    try:
        version = importlib.metadata.version("chainlit")
    except importlib.metadata.PackageNotFoundError:
        raise BackendNotInstalled("the web UI needs Chainlit: pip install 'vstreamer[ui]'") from None
    root = app_root(settings)
    try:
        (root / ".chainlit").mkdir(parents=True, exist_ok=True)
        (root / ".chainlit" / "config.toml").write_text(_config_toml(options, version), encoding="utf-8")
        for name in ("chainlit.md", "chainlit_zh-CN.md", "chainlit_en-US.md"):
            (root / name).write_text(_README, encoding="utf-8")
    except OSError as exc:  # a data folder that is a file, or not writable
        raise ConfigError(f"cannot write the web UI's files in {root}: {exc}") from None
    os.environ["CHAINLIT_APP_ROOT"] = str(root)
    # Chainlit checks only a cookie's signature: binding the secret to the users ends removed users' logins.
    kept = _KEPT_SECRETS.get(os.environ.get("CHAINLIT_AUTH_SECRET", "")) or ensure_jwt_secret(root)
    secret = cookie_secret(kept, options)
    _KEPT_SECRETS[secret] = kept
    os.environ["CHAINLIT_AUTH_SECRET"] = secret
    write_avatars(PersonaLibrary(settings.personas_dir).list(), root / "public")
    return root


def browser_url(options: UIOptions) -> str:
    """Where a browser on this machine opens the UI (IPv6 literals in brackets, wildcard binds on loopback)."""
    return local_url(options.host, options.port)


def serve(
    settings: Settings, options: UIOptions, *, on_ready: Callable[[str, float], None] | None = None
) -> int:
    """Run the web UI until interrupted; ``on_ready(url, seconds_since_launch)`` once it answers."""
    started = time.perf_counter()
    root = prepare(settings, options)
    if "chainlit.config" in sys.modules and os.path.realpath(
        sys.modules["chainlit.config"].APP_ROOT
    ) != os.path.realpath(root):
        raise RuntimeError("Chainlit was imported before the web UI set its app root")
    ui_state.configure(ui_state.UIState(settings, options, root))

    import nest_asyncio
    import uvicorn

    # As `chainlit run` does: Chainlit computes per-profile session config with a nested run_until_complete.
    nest_asyncio.apply()
    from chainlit.config import config
    from chainlit.server import app

    import vstreamer.ui.app  # noqa: F401  - registers the Chainlit callbacks

    config.run.host, config.run.port, config.run.headless = options.host, options.port, True
    server = uvicorn.Server(
        uvicorn.Config(app, host=options.host, port=options.port, log_level="warning", ws="auto")
    )

    async def announce() -> None:
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
            await asyncio.sleep(0.05)
        if on_ready is not None:
            on_ready(browser_url(options), time.perf_counter() - started)

    async def run() -> None:
        # Both before the server: Chainlit logs (and so swallows) a failing startup hook and ends its shutdown with
        # exit status 0, so a database that cannot be opened or a port that is taken left a "ready" server with
        # no runtime, or a status that said all went well.
        listening = listening_socket(
            options.host, options.port, what="the web UI",
            hint="choose another port with --port or VSTREAMER_UI_PORT (ui_port in the config file)",
        )  # fmt: skip
        listening.set_inheritable(True)
        try:
            state = ui_state.current()
            try:
                await state.start()
            except BaseException:
                await state.stop()  # what it opened before failing (the store, say)
                raise
            announcer = asyncio.create_task(announce())
            try:
                await server.serve(sockets=[listening])
            finally:
                announcer.cancel()
        finally:
            listening.close()

    asyncio.run(run())
    return 0

"""The stop button without Chainlit's English "Task manually stopped." line.

The reply itself says it was interrupted, in the persona's language; stopping still cancels the session's task
(which closes the engine stream, and so the generation upstream) and then runs the app's ``on_stop``.
"""

from __future__ import annotations

from chainlit.config import config
from chainlit.context import init_ws_context
from chainlit.server import sio
from chainlit.session import WebsocketSession


async def _stop(sid: str) -> None:
    session = WebsocketSession.get(sid)
    if session is None:
        return
    init_ws_context(session)
    if session.current_task is not None:
        session.current_task.cancel()
    if config.code.on_stop:
        await config.code.on_stop()


def install_quiet_stop() -> None:
    """Replace Chainlit's ``stop`` socket handler (registered when :mod:`chainlit.socket` was imported)."""
    import chainlit.socket  # noqa: F401  - its handlers must be registered before ours replaces one

    sio.on("stop", handler=_stop)

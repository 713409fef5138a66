"""``vstreamer ui``: the web chat (Chainlit) over the engine."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from vstreamer.cli.extras import require_extra
from vstreamer.config import Settings


def add_commands(
    commands: Any,
    settings_options: Callable[[argparse.ArgumentParser], None],
    load_settings: Callable[[argparse.Namespace], Settings],
) -> None:
    ui = commands.add_parser("ui", help="start the web chat (Chainlit) on http://127.0.0.1:8310")
    settings_options(ui)
    group = ui.add_argument_group("web UI")
    group.add_argument("--host", help="address to bind (default 127.0.0.1; 0.0.0.0 to serve the network)")
    group.add_argument("--port", type=int, help="port (default: ui_port, 8310; never vLLM's 8000)")
    ui.set_defaults(handler=lambda a: run(a, load_settings(a)))


def run(args: argparse.Namespace, settings: Settings) -> int:
    require_extra("ui", "ui", "chainlit", "nest_asyncio", "uvicorn")
    from vstreamer.ui.launcher import serve
    from vstreamer.ui.options import UIOptions

    options = UIOptions.from_settings(settings, host=args.host, port=args.port)
    if settings.backend == "local":
        print("（正在加载模型 / loading the model…）", flush=True)
    return serve(settings, options, on_ready=_announce)


def _announce(url: str, seconds: float) -> None:
    print(f"vstreamer web UI: {url}  (ready in {seconds:.1f}s; Ctrl-C stops)", flush=True)

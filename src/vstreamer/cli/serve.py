"""``vstreamer serve`` (the gateway) and ``vstreamer keys create | list | revoke``."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vstreamer.cli.extras import require_extra
from vstreamer.config import Settings, is_loopback
from vstreamer.errors import ConfigError
from vstreamer.listening import listening_socket
from vstreamer.store.shared import SharedVersions

if TYPE_CHECKING:
    from vstreamer.runtime import Runtime


def add_commands(
    commands: Any,
    settings_options: Callable[[argparse.ArgumentParser], None],
    load_settings: Callable[[argparse.Namespace], Settings],
) -> None:
    serve = commands.add_parser("serve", help="run the OpenAI-compatible gateway and REST API")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8320)")
    serve.add_argument("--no-auth", action="store_true", help="no API keys; only allowed on localhost")
    serve.add_argument(
        "--workers", type=int, help="processes serving the port (default 1; one uses one core)"
    )
    serve.add_argument("--database-url", help="sqlite:///file.db or postgresql://user@host/db")
    settings_options(serve)
    serve.set_defaults(handler=lambda a: run_serve(a, load_settings(a)))

    keys = commands.add_parser("keys", help="manage the gateway's API keys")
    actions = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="create a key (shown once)")
    create.add_argument("name")
    actions.add_parser("list", help="list keys (prefixes only)")
    revoke = actions.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id")
    for sub in (create, revoke, *[a for n, a in actions.choices.items() if n == "list"]):
        sub.add_argument("--database-url")
        settings_options(sub)
        sub.set_defaults(handler=lambda a: asyncio.run(run_keys(a, load_settings(a))))


def tune_gc() -> None:
    """A long-running server keeps many live objects (sessions, compiled lexicons); full collections walking them
    showed up as multi-ms pauses under load. Freeze what startup made, and collect the young generation less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 100)


def run_serve(args: argparse.Namespace, settings: Settings) -> int:
    updates: dict[str, Any] = {}
    if args.host:
        updates["gateway_host"] = args.host
    if args.port is not None:  # --port 0 is refused by the check below, not silently replaced by the default
        updates["gateway_port"] = args.port
    if args.no_auth:
        updates["auth"] = False
    if args.database_url:
        updates["database_url"] = args.database_url
    if args.workers is not None:
        updates["gateway_workers"] = args.workers
    settings = settings.updated(**updates)
    if not settings.auth and not is_loopback(settings.gateway_host):
        raise ConfigError(
            "--no-auth is for local use only: bind to 127.0.0.1 (or create keys with `vstreamer keys`)"
        )
    workers = settings.gateway_workers
    if workers > 1 and settings.backend == "local":
        raise ConfigError(
            "--workers: the embedded model runs in one process; serve it with one worker, or run an LLM server "
            "(vLLM, backend openai or vllm) for several"
        )
    metrics_dir = _multiprocess_metrics() if workers > 1 else None
    require_extra("server", "serve", "fastapi", "uvicorn", "prometheus_client")
    from vstreamer.gateway.workers import run_workers

    # Bound first: a busy port fails with a clear error before anything starts or is announced.
    listening = listening_socket(
        settings.gateway_host, settings.gateway_port, what="the gateway",
        hint="choose another port with --port or VSTREAMER_GATEWAY_PORT (gateway_port in the config file)",
    )  # fmt: skip
    try:
        runtime, keys_active = asyncio.run(_opened(settings))
        versions = SharedVersions(workers) if workers > 1 else None
        tune_gc()
        host = f"[{settings.gateway_host}]" if ":" in settings.gateway_host else settings.gateway_host
        print(f"vstreamer gateway on http://{host}:{settings.gateway_port}/v1 "
              f"(auth {'on' if settings.auth else 'off'}{f', {workers} workers' if workers > 1 else ''})",
              flush=True)  # fmt: skip
        if settings.auth and not keys_active:
            print(NO_KEYS_WARNING, file=sys.stderr, flush=True)

        def serve(worker: int) -> int:
            if versions is not None and runtime.store is not None:
                runtime.store.cache.shared = versions.view(worker)
            return _serve(runtime, listening)

        if versions is None:
            return serve(0)
        return run_workers(workers, serve, on_exit=_metrics_gone)
    finally:
        listening.close()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _serve(runtime: Runtime, listening: socket.socket) -> int:
    """Serve on ``listening`` until stopped (in this process; one of the workers, if there are several)."""
    import uvicorn

    from vstreamer.gateway import create_app

    app = create_app(runtime, close_runtime=True)
    # The gateway never reads a client's address or scheme, so uvicorn's X-Forwarded-* middleware (one more layer on
    # every request) is left out, and responses do not name the server software.
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5,
                       proxy_headers=False, server_header=False)
    )  # fmt: skip
    server.run(sockets=[listening])
    return 0 if server.started else 3  # as uvicorn.run: 3 when the app failed to start


def _multiprocess_metrics() -> str | None:
    """Put prometheus_client in multiprocess mode (before it makes a metric): each worker writes its values under a
    new directory, which ``/metrics`` reads whole. One given in ``PROMETHEUS_MULTIPROC_DIR`` is used instead (and
    kept); returns the directory to remove at the end, else ``None``."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    directory = given or tempfile.mkdtemp(prefix="vstreamer-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    if "prometheus_client" in sys.modules:  # imported already: its value class was picked for one process
        from prometheus_client import values

        values.ValueClass = values.get_value_class()
    return None if given else directory


def _metrics_gone(pid: int) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)


NO_KEYS_WARNING = (
    "warning: auth is on and no API key is active, so every request will be refused (401): create one with "
    "`vstreamer keys create NAME`, or serve with --no-auth for local use"
)
"""Said at start: a gateway with no key to accept started as any other and then refused every request."""


async def _opened(settings: Settings) -> tuple[Runtime, bool]:
    """The runtime, opened (and its database migrated) before the server starts, on a loop of its own: the database
    connections made meanwhile belong to that loop (asyncpg's do), so they are closed and the server's loop makes
    its own. With it, whether an API key is active (asked only when auth is on)."""
    from vstreamer.runtime import open_runtime

    runtime = await open_runtime(settings)
    keys_active = False
    if runtime.store is not None:
        try:
            if settings.auth:
                keys_active = any(not key.revoked for key in await runtime.store.list_api_keys())
        except BaseException:
            await runtime.aclose()
            raise
        await runtime.store.engine.dispose()
    return runtime, keys_active


async def run_keys(args: argparse.Namespace, settings: Settings) -> int:
    from vstreamer.store import open_store

    store = await open_store(args.database_url or settings.database_url, settings.data_dir)
    try:
        if args.action == "create":
            record, key = await store.create_api_key(args.name)
            print(f"created key {record.id} ({record.name}). Keep it now; it is not shown again:\n{key}")
        elif args.action == "list":
            for k in await store.list_api_keys():
                state = "revoked" if k.revoked else "active"
                print(f"{k.id}  {k.prefix}…  {k.name:<20} {state}  {k.created_at:%Y-%m-%d}")
        elif args.action == "revoke":
            if not await store.revoke_api_key(args.key_id):
                raise ConfigError(f"no active key {args.key_id!r}")
            print(f"revoked {args.key_id}")
    finally:
        await store.close()
    return 0

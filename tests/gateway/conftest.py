"""A real gateway: ``vstreamer serve`` as a subprocess on a free port, over a SQLite file in a temp dir."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port, stop_process, wait_http
from vstreamer.engine import Turn
from vstreamer.store import open_store


class GatewayServer:
    def __init__(self, data_dir: Path, env: dict[str, str], *, auth: bool = False) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.env = os.environ | {"VSTREAMER_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"} | env
        self.auth = auth
        self.log = data_dir / "gateway.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "vstreamer", "serve", "--port", str(self.port)]
        if not self.auth:
            cmd.append("--no-auth")
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_http(f"{self.url}/healthz", timeout=60, process=self.process)
        except Exception:
            raise RuntimeError(f"gateway did not start:\n{self.log.read_text()}") from None

    def stop(self) -> None:
        stop_process(self.process)

    def messages(self, session_id: str) -> list[Turn]:
        async def read() -> list[Turn]:
            store = await open_store(None, self.data_dir)
            try:
                return await store.list_messages(session_id)
            finally:
                await store.close()

        return asyncio.run(read())


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[object]:
    servers: list[GatewayServer] = []

    def start(env: dict[str, str], *, auth: bool = False, name: str = "gw") -> GatewayServer:
        server = GatewayServer(tmp_path / name, env, auth=auth)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def fake_gateway(start_gateway) -> GatewayServer:  # type: ignore[no-untyped-def]
    return start_gateway({"VSTREAMER_BACKEND": "fake", "VSTREAMER_FAKE_DELAY": "0.002"})

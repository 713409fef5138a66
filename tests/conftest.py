"""Shared fixtures: real servers on free ports, the embedded model, the shared data folder."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import hypothesis  # noqa: F401  - imported up front: a late first import in pytest's summary trips a CPython 3.11 AST bug
import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 60.0, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before it was ready")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout}s")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (pip install 'vstreamer[local]')"
    )
    from vstreamer.llm.models import smollm2_path

    return smollm2_path()


class LlamaServer:
    """``python -m llama_cpp.server`` with the embedded model, on a free port."""

    def __init__(self, model: Path, alias: str = "smollm2") -> None:
        self.model = model
        self.alias = alias
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model), "--model_alias", self.alias,
               "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "4096", "--verbose", "False"]  # fmt: skip
        log = open(os.devnull, "wb")  # noqa: SIM115 - owned by the process for its lifetime
        self.process = subprocess.Popen(cmd, stdout=log, stderr=log)
        wait_http(f"{self.base_url}/models", timeout=60, process=self.process)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="session")
def llama_server(smollm2_gguf: Path) -> Iterator[LlamaServer]:
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] is not installed")
    server = LlamaServer(smollm2_gguf)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def private_llama_server(smollm2_gguf: Path) -> Iterator[LlamaServer]:
    """A server of its own, for tests that kill it."""
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] is not installed")
    server = LlamaServer(smollm2_gguf)
    server.start()
    yield server
    server.stop()

"""Web UI fixtures: ``vstreamer ui`` as a real server on a free port, and headless Chromium driven by Playwright."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PROJECT_ROOT, free_port, stop_process, wait_http
from vstreamer.config import Settings
from vstreamer.ui import state as ui_state
from vstreamer.ui.options import UIOptions

# Chainlit reads its app root when first imported: keep unit tests from writing into the repository.
os.environ.setdefault("CHAINLIT_APP_ROOT", tempfile.mkdtemp(prefix="vstreamer-chainlit-"))

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = PROJECT_ROOT / "test-artifacts" / "ui"
USERS = {"alice": "alice-secret-1", "bob": "bob-secret-2"}


class UIServer:
    """``vstreamer ui`` in a subprocess, with its own data folder."""

    def __init__(self, data_dir: Path, env: dict[str, str], name: str) -> None:
        self.data_dir = data_dir
        self.env = env
        self.name = name
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self.log_path = ARTIFACTS / f"server-{name}.log"
        self.log_path.unlink(missing_ok=True)
        self.ready_s = 0.0
        """Seconds from launch until the page answered."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        env = os.environ | {"VSTREAMER_DATA_DIR": str(self.data_dir), "PYTHONUNBUFFERED": "1"} | self.env
        env.pop("CHAINLIT_APP_ROOT", None)
        env.pop("CHAINLIT_AUTH_SECRET", None)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vstreamer", "ui", "--port", str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=self.data_dir,
        )  # fmt: skip
        wait_http(self.url + "/", timeout=timeout, process=self.process)
        self.ready_s = time.perf_counter() - started

    def stop(self) -> None:
        stop_process(self.process)
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Read the store's SQLite file directly (what a restart would load)."""
        with sqlite3.connect(self.data_dir / "vstreamer.db") as db:
            return db.execute(sql, params).fetchall()

    def replies(self, session_id: str) -> list[tuple[str, str]]:
        """(content, status) of a session's stored replies after the greeting."""
        rows = self.query(
            "SELECT content, status FROM messages WHERE session_id = ? AND role = 'assistant' ORDER BY pk",
            session_id,
        )
        return rows[1:]

    def wait_reply_committed(self, session_id: str, count: int, timeout: float = 5.0) -> tuple[str, str]:
        """The session's ``count``-th reply once the engine committed it (it commits a reply when it ends)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            turns = self.replies(session_id)
            if len(turns) >= count:
                return turns[count - 1]
            time.sleep(0.05)
        raise AssertionError(f"reply {count} of session {session_id} was not committed within {timeout}s")

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def _ensure_chromium() -> Path:
    if not CHROMIUM.exists():
        script = PROJECT_ROOT / "scripts" / "install-browser.sh"
        result = subprocess.run([str(script)], capture_output=True, text=True, check=False)
        if result.returncode != 0 or not CHROMIUM.exists():
            pytest.skip(f"no headless browser: {CHROMIUM} is missing and could not be installed "
                        f"({(result.stderr or result.stdout).strip()[-200:]})")  # fmt: skip
    return CHROMIUM


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium, per test module: Playwright's sync API holds an event loop open while it runs,
    which the asyncio tests of other modules must not meet."""
    pytest.importorskip("chainlit", reason="the web UI needs Chainlit (pip install 'vstreamer[ui]')")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
    executable = _ensure_chromium()
    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(executable), headless=True)
        yield instance
        instance.close()


def _server(tmp_path_factory: pytest.TempPathFactory, name: str, env: dict[str, str]) -> Iterator[UIServer]:
    server = UIServer(tmp_path_factory.mktemp(f"ui-{name}"), env, name)
    try:
        server.start()
    except Exception:
        server.stop()
        raise
    yield server
    server.stop()
    shutil.rmtree(server.data_dir / "ui" / ".files", ignore_errors=True)


FAKE = {"VSTREAMER_BACKEND": "fake", "VSTREAMER_FAKE_DELAY": "0.05"}


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UIServer]:
    """Password login with two users, the fake backend streaming a piece every 50 ms."""
    env = FAKE | {"VSTREAMER_UI_AUTH": "password", "VSTREAMER_UI_USERS": json.dumps(USERS)}
    yield from _server(tmp_path_factory, "password", env)


@pytest.fixture(scope="module")
def ui_backend_down(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UIServer]:
    """Password login, the model server down: nothing listens where the backend connects."""
    env = {"VSTREAMER_UI_AUTH": "password", "VSTREAMER_UI_USERS": json.dumps(USERS), "VSTREAMER_BACKEND": "openai",
           "VSTREAMER_BASE_URL": f"http://127.0.0.1:{free_port()}/v1", "VSTREAMER_CONNECT_TIMEOUT": "1",
           "VSTREAMER_MAX_RETRIES": "0"}  # fmt: skip
    yield from _server(tmp_path_factory, "backend-down", env)


@pytest.fixture
def screenshot() -> Any:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def take(page: Any, name: str) -> Path:
        path = ARTIFACTS / f"{name}.png"
        page.screenshot(path=str(path))
        return path

    return take


def record_timing(name: str, seconds: float) -> None:
    """Load-time numbers, collected in test-artifacts/ui/timings.json."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / "timings.json"
    timings = json.loads(path.read_text()) if path.is_file() else {}
    timings[name] = round(seconds, 3)
    path.write_text(json.dumps(timings, indent=2, ensure_ascii=False) + "\n")


@pytest.fixture
def ui_app() -> Any:
    """The Chainlit app module, imported in this process (the tests that call it swap in their own ``STATE``)."""
    pytest.importorskip("chainlit", reason="the web UI needs Chainlit")
    configured = ui_state._STATE
    with warnings.catch_warnings():
        # The app imports Chainlit's server, whose models still use pydantic's deprecated class-based config.
        warnings.simplefilter("ignore", DeprecationWarning)
        app = importlib.import_module("vstreamer.ui.app")
    ui_state._STATE = configured  # the app made one from the environment: other tests configure their own
    return app


@pytest.fixture
async def started_ui(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ui_app: Any
) -> AsyncIterator[ui_state.UIState]:
    """The UI's state started on a temp data folder (the fake backend, a piece every 20 ms), as the app's ``STATE``."""
    settings = Settings(data_dir=tmp_path / "data", backend="fake", fake_delay=0.02)
    state = ui_state.UIState(settings, UIOptions.from_settings(settings), tmp_path / "ui")
    await state.start()
    monkeypatch.setattr(ui_app, "STATE", state)
    yield state
    await state.stop()

"""``vstreamer vllm-serve`` (GPU profile) with a stand-in ``vllm`` on PATH: it must never outlive the command."""

from __future__ import annotations

import contextlib
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from vstreamer.cli import main


@pytest.fixture
def fake_vllm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A ``vllm`` that writes its pid to the returned file, then loads forever (never listens)."""
    pid_file = tmp_path / "vllm.pid"
    _install_vllm(tmp_path, monkeypatch, f'echo $$ > "{pid_file}"\nexec sleep 60\n')
    yield pid_file
    with contextlib.suppress(OSError, ValueError):  # never leave a stand-in behind, whatever the test did
        os.kill(int(pid_file.read_text()), signal.SIGKILL)


def _install_vllm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "vllm"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _pid(pid_file: Path, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            return int(pid_file.read_text())
        time.sleep(0.05)
    raise AssertionError(f"the stand-in vllm never wrote {pid_file}")


def test_wait_timeout_stops_vllm(fake_vllm: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["vllm-serve", "--wait", "--timeout", "1", "--port", str(free_port())])
    assert code == 2 and "not ready after 1s" in capsys.readouterr().err
    assert not _alive(_pid(fake_vllm))  # stopped, not left holding the GPU and the port


def test_sigterm_stops_vllm(fake_vllm: Path) -> None:
    cli = subprocess.Popen(
        [sys.executable, "-m", "vstreamer.cli", "vllm-serve", "--port", str(free_port())],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        pid = _pid(fake_vllm)
        cli.send_signal(signal.SIGTERM)  # systemd, `docker stop`, `kill`
        assert cli.wait(30) == 143
    finally:
        cli.kill()
        cli.communicate()
    assert not _alive(pid)


def test_vllm_that_crashes_fails_the_wait_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _install_vllm(tmp_path, monkeypatch, "echo 'CUDA out of memory (stand-in)' >&2\nexit 7\n")
    started = time.monotonic()
    code = main(["vllm-serve", "--wait", "--timeout", "20", "--port", str(free_port())])
    assert code == 2 and time.monotonic() - started < 10  # not the whole --timeout
    assert "exited with 7" in capsys.readouterr().err


class _Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_busy_port_is_refused_before_starting_vllm(
    fake_vllm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = http.server.HTTPServer(("127.0.0.1", 0), _Answer)  # e.g. a vLLM left over from an earlier run
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        code = main(["vllm-serve", "--wait", "--timeout", "5", "--port", str(other.server_address[1])])
    finally:
        other.shutdown()
        other.server_close()
    assert code == 2 and "already in use" in capsys.readouterr().err
    assert not fake_vllm.exists()  # never started


def test_waiting_for_a_server_started_with_a_key_sends_the_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """vLLM started with an API key answers 401 to a request without it: the wait sends the configured key (it
    waited out its whole timeout, then failed a healthy server)."""

    with serving_models(key="sk-test-key-123") as port:
        url = f"http://127.0.0.1:{port}/v1"
        assert (
            main(["vllm-wait", "--url", url, "--timeout", "3"]) == 2
        )  # no key configured: 401 until the end
        assert "401" in capsys.readouterr().err
        monkeypatch.setenv("VSTREAMER_API_KEY", "sk-test-key-123")
        assert main(["vllm-wait", "--url", url, "--timeout", "3"]) == 0
        assert "serves ['qwen']" in capsys.readouterr().out


@contextlib.contextmanager
def serving_models(
    key: str | None = None, models: bytes = b'{"object":"list","data":[{"id":"qwen"}]}'
) -> Iterator[int]:
    """A ``/v1/models`` server on a free port answering ``models`` (with ``key``: 401 to a request without that
    bearer key)."""

    class Models(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            ok = key is None or self.headers.get("Authorization") == f"Bearer {key}"
            body = models if ok else b'{"error":"unauthorized"}'
            self.send_response(200 if ok else 401)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Models)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_waiting_never_prints_the_urls_password(capsys: pytest.CaptureFixture[str]) -> None:
    """``vllm-wait`` printed the base URL it waited for, password and all."""
    with serving_models() as port:
        url = f"http://proxyuser:TopSecretPw123@127.0.0.1:{port}/v1"
        assert main(["vllm-wait", "--url", url, "--timeout", "3"]) == 0
    out, err = capsys.readouterr()
    assert "serves ['qwen']" in out and f"127.0.0.1:{port}/v1" in out
    assert "TopSecretPw123" not in out + err

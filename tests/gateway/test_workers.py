"""``vstreamer serve --workers 2``: two forked workers on one port over one SQLite file, each with its session cache.

A worker stopped (SIGSTOP) accepts nothing, so the other takes the next connection: a test chooses which worker
serves each turn. The scripted LLM server (tests/gateway/test_upstream_refusals.py) keeps every chat prompt.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.gateway.conftest import GatewayServer
from tests.gateway.test_upstream_refusals import _Upstream, chat, upstream  # noqa: F401 - the fixture
from vstreamer.gateway.workers import STEADY_AFTER_S

pytestmark = pytest.mark.integration


@pytest.fixture
def workers(start_gateway, upstream: str) -> tuple[GatewayServer, list[int]]:  # type: ignore[no-untyped-def]  # noqa: F811
    server = start_gateway({
        "VSTREAMER_BACKEND": "openai", "VSTREAMER_BASE_URL": upstream, "VSTREAMER_MODEL": "m",
        "VSTREAMER_GATEWAY_WORKERS": "2",
    })  # fmt: skip
    assert server.process is not None
    children = _children(server.process.pid)
    assert len(children) == 2, children
    return server, children


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


@contextmanager
def only(serving: int, all_workers: list[int]) -> Iterator[None]:
    """Every other worker stopped meanwhile: ``serving`` accepts every new connection."""
    others = [pid for pid in all_workers if pid != serving]
    for pid in others:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in others:
            os.kill(pid, signal.SIGCONT)


def _turn(server: GatewayServer, text: str) -> None:
    response = chat(server, text, **{"X-Session-Id": "s1"})
    assert response.status_code == 200, response.text


def test_each_turn_reads_what_the_other_worker_said(workers: tuple[GatewayServer, list[int]]) -> None:
    server, (a, b) = workers
    with only(a, [a, b]):
        _turn(server, "一")
    with only(b, [a, b]):
        _turn(server, "二")  # b reads the session from the file
    with only(a, [a, b]):
        _turn(server, "三")  # a cached the session at turn one: it must not serve that copy
    users = [[content for role, content in prompt if role == "user"] for prompt in _Upstream.prompts]
    assert users == [["一"], ["一", "二"], ["一", "二", "三"]]
    # A session deleted through one worker is gone for the other, whose copy was the latest.
    with only(b, [a, b]):
        assert httpx.delete(f"{server.url}/api/sessions/s1", timeout=30).status_code in (200, 204)
    with only(a, [a, b]):
        _turn(server, "新的开始")  # the client's id names a new session
    assert [c for r, c in _Upstream.prompts[-1] if r == "user"] == ["新的开始"]
    assert [t.content for t in server.messages("s1")] == ["新的开始", "新的开始"]


def test_a_persona_imported_through_one_worker_is_served_by_the_other(
    workers: tuple[GatewayServer, list[int]],
) -> None:
    server, (a, b) = workers
    card = json.dumps({"spec": "chara_card_v2", "spec_version": "2.0",
                       "data": {"name": "Aria", "description": "a cheerful streamer"}}).encode()  # fmt: skip
    with only(b, [a, b]):  # b has its personas in memory before the import
        assert httpx.get(f"{server.url}/v1/models/aria", timeout=30).status_code == 404
    with only(a, [a, b]):
        imported = httpx.post(
            f"{server.url}/api/personas", params={"filename": "aria.json"}, content=card, timeout=30
        )
        assert imported.status_code == 201, imported.text
    with only(b, [a, b]):
        assert httpx.get(f"{server.url}/v1/models/aria", timeout=30).status_code == 200
        body = {"model": "aria", "messages": [{"role": "user", "content": "hi"}]}
        assert httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30).status_code == 200
        assert httpx.delete(f"{server.url}/api/personas/aria", timeout=30).status_code == 204
    with only(a, [a, b]):
        assert httpx.get(f"{server.url}/v1/models/aria", timeout=30).status_code == 404


def test_workers_over_postgresql_with_their_caches_on(start_gateway, upstream: str, postgres) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """One host's workers over PostgreSQL may cache sessions too: the table is the same."""
    server = start_gateway({
        "VSTREAMER_BACKEND": "openai", "VSTREAMER_BASE_URL": upstream, "VSTREAMER_MODEL": "m",
        "VSTREAMER_GATEWAY_WORKERS": "2", "VSTREAMER_SESSION_CACHE": "100",
        "VSTREAMER_DATABASE_URL": postgres.create_database("gateway_workers"),
    })  # fmt: skip
    a, b = _children(server.process.pid)
    for text, worker in (("一", a), ("二", b), ("三", a)):
        with only(worker, [a, b]):
            _turn(server, text)
    users = [[content for role, content in prompt if role == "user"] for prompt in _Upstream.prompts]
    assert users == [["一"], ["一", "二"], ["一", "二", "三"]]


def test_metrics_add_up_across_workers_and_sigterm_stops_them_all(
    workers: tuple[GatewayServer, list[int]],
) -> None:
    server, pids = workers
    for pid in pids:
        with only(pid, pids):
            for text in ("早", "晚"):
                response = chat(server, text)
                assert response.status_code == 200, response.text
    scraped = httpx.get(f"{server.url}/metrics", timeout=30).text
    assert 'vstreamer_requests_total{route="/v1/chat/completions",status="200"} 4.0' in scraped
    assert 'vstreamer_replies_total{status="complete"} 4.0' in scraped
    assert server.process is not None
    server.process.terminate()
    assert server.process.wait(20) == 0
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]


def test_a_worker_that_dies_is_started_again(workers: tuple[GatewayServer, list[int]]) -> None:
    """Once steady: one that dies at its start would only die again, and stops the gateway instead."""
    server, pids = workers
    assert server.process is not None
    time.sleep(STEADY_AFTER_S)
    os.kill(pids[0], signal.SIGKILL)
    for _ in range(200):
        now = _children(server.process.pid)
        if len(now) == 2 and pids[0] not in now:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"no worker replaced {pids[0]}: {_children(server.process.pid)}")
    for pid in _children(server.process.pid):  # each of them serves
        with only(pid, _children(server.process.pid)):
            assert chat(server, "还在吗").status_code == 200


def test_workers_stop_when_their_parent_is_killed_outright(workers: tuple[GatewayServer, list[int]]) -> None:
    server, pids = workers
    assert server.process is not None
    server.process.kill()
    server.process.wait(10)
    for _ in range(100):
        if not [pid for pid in pids if Path(f"/proc/{pid}").exists() and _state(pid) != "Z"]:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"workers left running without their parent: {pids}")
    with socket.socket() as probe:  # nobody holds the port any more
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", server.port))


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return "gone"


def test_the_embedded_model_is_refused_several_workers(tmp_path: Path) -> None:
    env = os.environ | {"VSTREAMER_DATA_DIR": str(tmp_path), "VSTREAMER_BACKEND": "local"}
    result = subprocess.run([sys.executable, "-m", "vstreamer", "serve", "--no-auth", "--workers", "2"], env=env,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2 and "embedded model runs in one process" in result.stderr

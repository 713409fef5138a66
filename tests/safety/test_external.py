"""External checkers against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from vstreamer.safety import LLMJudgeChecker, MemoryAuditLog, OpenAIModerationChecker, SafetyPipeline


class _Handler(BaseHTTPRequestHandler):
    replies: dict[str, Any] = {}
    delay = 0.0

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        time.sleep(self.delay)
        if self.path.endswith("/moderations"):
            flagged = "kill" in body["input"]
            payload = {
                "results": [{"flagged": flagged, "categories": {"violence": flagged, "sexual": False}}]
            }
        elif self.path.endswith("/chat/completions"):
            text = body["messages"][0]["content"]
            answer = "UNSAFE: harassment" if "loser" in text else "SAFE"
            payload = {"choices": [{"message": {"role": "assistant", "content": answer}}]}
        else:
            self.send_error(404)
            return
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that time out on purpose close the socket mid-reply


@pytest.fixture
def server() -> Iterator[str]:
    _Handler.delay = 0.0
    httpd = _QuietServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


async def test_moderations_endpoint(server: str) -> None:
    checker = OpenAIModerationChecker(server, api_key="test-key", model="omni-moderation-latest")
    assert (await checker.check("hello", direction="input")).flagged is False
    verdict = await checker.check("I kill", direction="input")
    assert verdict.flagged and verdict.categories == ("violence",)


async def test_llm_judge(server: str) -> None:
    checker = LLMJudgeChecker(server, model="guard")
    assert not (await checker.check("nice game", direction="output")).flagged
    verdict = await checker.check("you loser", direction="output")
    assert verdict.flagged and verdict.categories == ("harassment",)


@pytest.mark.parametrize("fail_open", [True, False])
async def test_timeout_fails_open_or_closed(server: str, fail_open: bool) -> None:
    _Handler.delay = 0.5
    checker = OpenAIModerationChecker(server, timeout=0.1, fail_open=fail_open)
    verdict = await checker.check("hello", direction="input")
    assert verdict.error is not None
    assert verdict.flagged is (not fail_open)


async def test_unreachable_server_fails_closed() -> None:
    checker = OpenAIModerationChecker("http://127.0.0.1:9/v1", timeout=0.5, fail_open=False)
    assert (await checker.check("hello", direction="input")).flagged


async def test_pipeline_asks_the_external_checker_after_the_lexicon(server: str) -> None:
    audit = MemoryAuditLog()
    pipeline = SafetyPipeline.default(audit=audit, external=LLMJudgeChecker(server))
    assert (await pipeline.amoderate("nice game", direction="input")).action == "pass"
    r = await pipeline.amoderate("you loser", direction="input")
    assert r.action == "block" and "harassment" in r.categories
    assert "external llm_judge" in audit.records[-1].reason

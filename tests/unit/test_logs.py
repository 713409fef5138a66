"""Secrets never reach the logs."""

from __future__ import annotations

import logging

import pytest

from vstreamer.llm.tokenize import hide_secret
from vstreamer.logs import RedactingFilter, redact


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: Bearer abcdef123456789",
        "api_key=sk-verysecretvalue123",
        '{"password": "hunter2hunter2"}',
        "using key sk-proj-ABCDEFGHIJKLMNOP",
    ],
)
def test_redact_removes_secrets(text: str) -> None:
    cleaned = redact(text)
    assert "***" in cleaned
    for secret in ("abcdef123456789", "verysecretvalue123", "hunter2hunter2", "ABCDEFGHIJKLMNOP"):
        assert secret not in cleaned


def test_filter_rewrites_records(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("vstreamer.test")
    logger.addFilter(RedactingFilter())
    with caplog.at_level(logging.INFO, logger="vstreamer.test"):
        logger.info("calling %s with token=%s", "server", "tok_abcdefgh1234")
    assert "tok_abcdefgh1234" not in caplog.text
    assert "token=***" in caplog.text


def test_a_password_in_a_url_is_redacted_in_logs_and_in_backend_errors() -> None:
    """``https://user:password@proxy/v1`` as a base URL: httpx's errors and request logs quote the URL whole, and
    ``/readyz`` and the CLI show backend errors."""
    quoted = "Client error '401 Unauthorized' for url 'http://user:SECRETPW@127.0.0.1:8396/v1/models'"
    assert "SECRETPW" not in redact(quoted) and "http://user:***@127.0.0.1:8396/v1/models" in redact(quoted)
    assert "SECRETPW" not in hide_secret(quoted, "sk-other")
    assert redact("see http://127.0.0.1:8000/v1 and a@b.c") == "see http://127.0.0.1:8000/v1 and a@b.c"

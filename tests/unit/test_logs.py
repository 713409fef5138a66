"""Secrets never reach the logs."""

from __future__ import annotations

import logging

import pytest

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

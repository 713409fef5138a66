"""The check that keeps a gateway without API keys to this machine's programs: host names and origins, in process."""

from __future__ import annotations

import json

import pytest

from vstreamer.gateway.local_only import LocalOnly


def _scope(*headers: tuple[bytes, bytes]) -> dict[str, object]:
    return {"type": "http", "headers": list(headers)}


@pytest.mark.parametrize(
    "host",
    [b"localhost", b"LocalHost:8320", b"127.0.0.1", b"127.0.0.2:1", b"[::1]", b"[::1]:8320", b"localhost.",
     b"LOCALHOST.:8320"],
)  # fmt: skip
def test_loopback_host_names_are_served(host: bytes) -> None:
    assert LocalOnly([]).refusal(_scope((b"host", host))) is None


@pytest.mark.parametrize(
    "host",
    [b"attacker.example", b"attacker.example:8320", b"127.0.0.1.nip.io", b"localhost.evil.example", b"0.0.0.0",
     b"[::1]x", b"[::1]:x", b"[::2]", b"::1", b"", b"127.0.0.1:80x", b"127.0.0.1:\xb2", b"127.0.0.1.",
     b"127.0.0.1.:8320", b"[::1].", b"localhost..", b".localhost", b"localhost.:x"],
)  # fmt: skip
def test_other_host_names_are_refused(host: bytes) -> None:
    refusal = LocalOnly([]).refusal(_scope((b"host", host)))
    assert refusal is not None and refusal.status_code == 400
    assert b"host_not_allowed" in refusal.body


def test_a_repeated_header_cannot_hide_a_refused_value() -> None:
    check = LocalOnly(["http://overlay.example"])
    assert check.refusal(_scope((b"host", b"localhost"), (b"host", b"attacker.example"))) is not None
    origins = (b"origin", b"http://overlay.example"), (b"origin", b"http://evil.example")
    refusal = check.refusal(_scope((b"host", b"localhost"), *origins))
    assert refusal is not None and refusal.status_code == 403


def test_origins_served_are_the_listed_ones_and_the_gateways_own() -> None:
    check = LocalOnly(["http://overlay.example"])
    host = (b"host", b"127.0.0.1:8320")
    for origin in (b"http://overlay.example", b"http://127.0.0.1:8320"):
        assert check.refusal(_scope(host, (b"origin", origin))) is None
    for origin in (
        b"http://127.0.0.1:9999",
        b"http://localhost:8320",
        b"null",
        b"http://overlay.example.evil",
    ):
        assert check.refusal(_scope(host, (b"origin", origin))) is not None, origin
    assert LocalOnly(["*"]).refusal(_scope(host, (b"origin", b"http://evil.example"))) is None
    assert check.refusal(_scope()) is None  # no Host at all (HTTP/1.0): not a browser's request


def test_a_page_with_no_origin_is_told_to_be_served_from_localhost_not_to_list_null() -> None:
    """``Origin: null`` is a file's page (an OBS browser source) or any site's sandboxed frame: listing "null" would
    let every such frame in, so the refusal says how to serve the page instead of to list its origin."""
    refusal = LocalOnly([]).refusal(_scope((b"host", b"localhost"), (b"origin", b"null")))
    assert refusal is not None and refusal.status_code == 403
    message = json.loads(bytes(refusal.body))["error"]["message"]
    assert "http://localhost" in message and "add the page's origin" not in message

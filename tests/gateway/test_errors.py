"""Where failures become HTTP statuses (OpenAI's error schema)."""

from __future__ import annotations

import orjson
import pytest

from vstreamer.errors import BackendResponseError, BackendTimeout, BackendUnavailable, StoreError
from vstreamer.gateway.errors import error_response, status_for


@pytest.mark.parametrize(
    ("error", "status", "type_"),
    [
        (BackendResponseError("LLM server returned HTTP 400: max_tokens is too large", 400), 400,
         "invalid_request_error"),
        (BackendResponseError("LLM server returned HTTP 422: bad stop", 422), 400, "invalid_request_error"),
        (BackendResponseError("LLM server returned HTTP 401: no key", 401), 502, "upstream_error"),
        (BackendResponseError("LLM server returned HTTP 500: oops", 500), 502, "upstream_error"),
        (BackendResponseError("malformed body"), 502, "upstream_error"),
        (BackendUnavailable("down"), 503, "upstream_error"),
        (BackendTimeout("slow"), 504, "upstream_error"),
        (StoreError("full"), 503, "server_error"),
    ],
)  # fmt: skip
def test_statuses(error: Exception, status: int, type_: str) -> None:
    """A request the LLM server refuses is the client's to change (400, with the server's reason); a server that
    fails or is misconfigured (its key, its model) is the gateway's upstream failing (5xx)."""
    assert status_for(error) == (status, type_)  # type: ignore[arg-type]
    response = error_response(error)
    assert response.status_code == status
    body = orjson.loads(bytes(response.body))["error"]
    assert body["type"] == type_ and body["message"] == str(error)


def test_an_unexpected_error_is_a_500_that_tells_nothing_of_it() -> None:
    response = error_response(KeyError("internal detail"))
    assert response.status_code == 500
    assert "internal detail" not in bytes(response.body).decode()

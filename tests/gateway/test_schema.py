"""Property-based API testing: schemathesis against the running gateway's own OpenAPI finds no 5xx."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.gateway.conftest import GatewayServer

pytestmark = pytest.mark.integration


def test_no_server_errors_anywhere_in_the_api(fake_gateway: GatewayServer, tmp_path: Path) -> None:
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if cli is None:
        pytest.skip("schemathesis is not installed (pip install -e '.[dev]')")
    result = subprocess.run(
        [cli, "run", f"{fake_gateway.url}/openapi.json", "--checks", "not_a_server_error",
         "--max-examples", "40", "--seed", "1", "--workers", "1", "--report-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    summary = result.stdout[result.stdout.rfind("Test cases:") :]
    assert " passed" in summary and "failed" not in summary, result.stdout[-3000:]

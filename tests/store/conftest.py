from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.pg import PostgresServer, postgres_bin
from vstreamer.store import Store, open_store

_names = itertools.count()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    if postgres_bin() is None:
        pytest.skip(
            "PostgreSQL server binaries not installed (apt-get install postgresql): PostgreSQL tests skipped"
        )
    # Not under pytest's tmp dir: that one is private to root, and PostgreSQL runs as its own user.
    root = Path(tempfile.mkdtemp(prefix="vstreamer-pg-"))
    server = PostgresServer(root)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        opened = await open_store(None, tmp_path)
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        opened = await open_store(server.create_database(f"t{next(_names)}"), tmp_path)
    yield opened
    await opened.close()

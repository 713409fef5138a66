from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.pg import PostgresServer
from vstreamer.store import Store, open_store

_names = itertools.count()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        opened = await open_store(None, tmp_path)
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        opened = await open_store(server.create_database(f"t{next(_names)}"), tmp_path)
    yield opened
    await opened.close()

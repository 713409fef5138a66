"""Schema migrations when several instances open one new database at the same moment (a PostgreSQL deployment
with replicas, or the web UI and the gateway started together on one data folder)."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
from pathlib import Path
from subprocess import PIPE

import pytest
from sqlalchemy import text

from tests.pg import PostgresServer
from vstreamer.store.database import create_engine, migrate

_names = itertools.count()
INSTANCE = """
import asyncio, sys
from vstreamer.store.database import create_engine, migrate

async def main() -> None:
    engine = create_engine(sys.argv[1])
    print("ready", flush=True)
    sys.stdin.readline()  # every instance is loaded: they start at once
    try:
        await migrate(engine)
    finally:
        await engine.dispose()

asyncio.run(main())
"""


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def new_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database(f"m{next(_names)}")


def start_together(url: str, count: int) -> list[str]:
    """Run ``count`` instances that open ``url`` at the same moment; the error of each that failed."""
    instances = [
        subprocess.Popen(
            [sys.executable, "-c", INSTANCE, url], stdin=PIPE, stdout=PIPE, stderr=PIPE, text=True
        )
        for _ in range(count)
    ]
    for instance in instances:
        assert instance.stdout is not None and instance.stdout.readline() == "ready\n"
    failures = []
    for instance in instances:
        assert instance.stdin is not None
        instance.stdin.write("go\n")
        instance.stdin.flush()
    for instance in instances:
        _, err = instance.communicate(timeout=120)
        if instance.returncode:
            failures.append(next(line for line in reversed(err.splitlines()) if "Error" in line))
    return failures


async def test_instances_opening_a_new_database_together_all_start(new_database: str) -> None:
    assert await asyncio.to_thread(start_together, new_database, 4) == []
    engine = create_engine(new_database)
    try:
        async with engine.connect() as connection:
            versions = (await connection.execute(text("SELECT version_num FROM alembic_version"))).all()
            tables = await connection.run_sync(lambda c: set(c.dialect.get_table_names(c)))
        assert len(versions) == 1 and {"sessions", "messages", "personas"} <= tables
        await migrate(engine)  # and once more, later: nothing to do
    finally:
        await engine.dispose()

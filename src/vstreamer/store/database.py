"""Opening the database: SQLite (embedded default, WAL mode) or PostgreSQL by URL, migrated on open."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: SQLite files are not shared by instances there
    fcntl = None  # type: ignore[assignment]

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from vstreamer.errors import BackendNotInstalled, ConfigError, StoreError

logger = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"
P = ParamSpec("P")
T = TypeVar("T")


def shielded(method: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Let a database call finish even if its caller is cancelled.

    A transaction cut off mid-way (a client gone, a stop button) could otherwise keep SQLite's write lock until
    it is garbage-collected and stall every other writer.
    """

    @functools.wraps(method)
    async def run(*args: P.args, **kwargs: P.kwargs) -> T:
        return await asyncio.shield(method(*args, **kwargs))

    return run


def default_url(data_dir: Path) -> str:
    return f"sqlite+aiosqlite:///{data_dir / 'vstreamer.db'}"


def normalise_url(url: str) -> str:
    """Accept plain ``sqlite:///`` and ``postgresql://`` URLs and pick the async drivers."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:  # a port that is not a number is a ValueError
        raise ConfigError(f"invalid database URL: {exc}") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    elif backend == "postgresql":
        parsed = parsed.set(drivername="postgresql+asyncpg")
    else:
        raise ConfigError(f"unsupported database {backend!r}: use sqlite:/// or postgresql://")
    return parsed.render_as_string(hide_password=False)


def create_engine(url: str) -> AsyncEngine:
    url = normalise_url(url)
    is_sqlite = url.startswith("sqlite")
    if is_sqlite:
        database = make_url(url).database
        if database and database != ":memory:":
            try:
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"cannot create the data folder {Path(database).parent}: {exc}") from None
    # hide_parameters: a failed statement's message (logged) never carries the rows' values: message text, owners.
    try:
        engine = create_async_engine(url, pool_pre_ping=not is_sqlite, hide_parameters=True)
    except ModuleNotFoundError as exc:
        # The driver is imported here: every command that opens the database (serve, ui, chat, keys, personas) died
        # of this traceback, which named no extra to install.
        if exc.name != "asyncpg":
            raise
        raise BackendNotInstalled(
            "a PostgreSQL database needs the postgres extra (asyncpg not installed): "
            "pip install 'vstreamer[postgres]'"
        ) from None
    if is_sqlite:
        event.listen(engine.sync_engine, "connect", sqlite_pragmas)
    return engine


def database_error(exc: BaseException) -> StoreError:
    """The error a client is told of a failed database call: its kind only. The detail (the database's own message,
    SQL without its values) is logged, for the operator."""
    logger.warning("database call failed: %s: %s", type(exc).__name__, exc)
    return StoreError(f"the database refused or failed the operation ({type(exc).__name__})")


def dialect_insert(dialect: str) -> Callable[..., Any]:
    """The ``insert`` of the dialect named ``dialect`` (``on_conflict_do_nothing`` is spelled per dialect)."""
    return postgresql_insert if dialect == "postgresql" else sqlite_insert


def storable(text: str) -> str:
    """``text`` as every database can keep it: PostgreSQL refuses NUL in text, which a model's output may hold (a
    whole reply failed to store at its end for one), so it is dropped on SQLite too: the same text either way."""
    return text.replace("\x00", "") if "\x00" in text else text


def sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
    # SQLite's own lower() folds ASCII only, and a search in any case (ILIKE) is lower() LIKE lower(): "été" did
    # not find "ÉTÉ", as it does on PostgreSQL.
    dbapi_connection.create_function("lower", 1, _lower, deterministic=True)


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


MIGRATION_LOCK = 0x7673_7472_6D69_6772 & 0x7FFF_FFFF_FFFF_FFFF
"""The PostgreSQL advisory lock that instances migrating one database take in turn (a constant of this project)."""


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Instances starting together take turns; each later one finds the schema at head and does nothing. The
        # lock ends with the migration's transaction.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def migrate(engine: AsyncEngine) -> None:
    """Apply every pending migration (idempotent; instances opening one database at once take turns)."""
    try:
        async with _file_lock(_sqlite_lock_path(engine)), engine.begin() as connection:
            await connection.run_sync(_upgrade)
    except (SQLAlchemyError, OSError) as exc:
        raise StoreError(f"cannot open or migrate the database: {exc}") from exc


def _sqlite_lock_path(engine: AsyncEngine) -> Path | None:
    """Beside a SQLite file, the file that processes migrating it lock in turn (SQLite's own locks do not cover a
    migration: its schema changes are not one transaction there)."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return None
    return Path(f"{database}.migrate.lock")


@asynccontextmanager
async def _file_lock(path: Path | None) -> AsyncIterator[None]:
    if path is None or fcntl is None:
        yield
        return
    handle = path.open("a")
    try:
        await asyncio.to_thread(fcntl.flock, handle.fileno(), fcntl.LOCK_EX)  # waits for another instance
        yield
    finally:
        handle.close()  # closing releases the lock

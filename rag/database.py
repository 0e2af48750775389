"""The little SQL the registries need (embedding spaces, web sources), on either database: SQLite beside the embedded
store, or the PostgreSQL the replicas share. Queries are written once with `$1` placeholders, which SQLite reads as
`?1`."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import anyio
import asyncpg

from config import Settings
from rag.stores.pg_schema import SCHEMA_LOCK

Row = tuple[Any, ...]


class Database(Protocol):
    # "sqlite" or "postgres": for the one statement that differs (serialising the registry's creation)
    dialect: str

    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...

    async def execute(self, sql: str, *args: Any) -> None: ...

    async def executemany(self, sql: str, rows: Sequence[Row]) -> None: ...

    def transaction(self) -> Any:
        """An async context manager yielding a Database whose statements commit together, or not at all."""
        ...

    async def aclose(self) -> None: ...


class SqliteDatabase:
    """One connection, used from worker threads one statement at a time; a transaction holds it throughout (and,
    from BEGIN IMMEDIATE, SQLite's write lock, so another process's transaction waits)."""

    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._lock = asyncio.Lock()

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("$", "?")

    async def _run(self, sql: str, args: Sequence[Any]) -> list[Row]:
        return await anyio.to_thread.run_sync(lambda: self._db.execute(self._sql(sql), args).fetchall())

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        async with self._lock:
            return await self._run(sql, args)

    async def execute(self, sql: str, *args: Any) -> None:
        await self.fetch(sql, *args)

    async def executemany(self, sql: str, rows: Sequence[Row]) -> None:
        async with self._lock:
            await anyio.to_thread.run_sync(lambda: self._db.executemany(self._sql(sql), rows))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_SqliteTransaction]:
        async with self._lock:
            await self._run("BEGIN IMMEDIATE", ())
            try:
                yield _SqliteTransaction(self)
            except BaseException:
                await self._run("ROLLBACK", ())
                raise
            await self._run("COMMIT", ())

    async def aclose(self) -> None:
        self._db.close()


class _SqliteTransaction:
    dialect = "sqlite"

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return await self._db._run(sql, args)

    async def execute(self, sql: str, *args: Any) -> None:
        await self._db._run(sql, args)

    async def executemany(self, sql: str, rows: Sequence[Row]) -> None:
        sql = self._db._sql(sql)
        await anyio.to_thread.run_sync(lambda: self._db._db.executemany(sql, rows))


class PgDatabase:
    """A small pool in the `public` schema (the registry is the replicas' one, whichever space is active)."""

    dialect = "postgres"

    def __init__(self, pool: asyncpg.Pool, conn: asyncpg.Connection | None = None) -> None:
        self._pool = pool
        self._conn = conn

    @classmethod
    async def open(cls, dsn: str) -> PgDatabase:
        return cls(await asyncpg.create_pool(dsn, min_size=1, max_size=2))

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        if self._conn is not None:
            yield self._conn
        else:
            async with self._pool.acquire() as conn:
                yield conn

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        async with self._connection() as conn:
            return [tuple(row) for row in await conn.fetch(sql, *args)]

    async def execute(self, sql: str, *args: Any) -> None:
        async with self._connection() as conn:
            await conn.execute(sql, *args)

    async def executemany(self, sql: str, rows: Sequence[Row]) -> None:
        async with self._connection() as conn:
            await conn.executemany(sql, rows)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PgDatabase]:
        async with self._pool.acquire() as conn, conn.transaction():
            yield PgDatabase(self._pool, conn)

    async def aclose(self) -> None:
        if self._conn is None:
            await self._pool.close()


async def open_database(settings: Settings, sqlite_name: str, schema: Sequence[str]) -> Database:
    """The database beside the configured store (the PostgreSQL the replicas share, else `sqlite_name` in DATA_DIR),
    with `schema`'s tables made when missing."""
    db: Database
    if settings.vector_store == "postgres":
        assert settings.database_url is not None
        db = await PgDatabase.open(settings.database_url.get_secret_value())
    else:
        db = SqliteDatabase(settings.data_dir / sqlite_name)
    try:
        async with db.transaction() as tx:
            if tx.dialect == "postgres":  # replicas starting together: CREATE TABLE IF NOT EXISTS races otherwise
                await tx.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
            for statement in schema:
                await tx.execute(statement)
    except BaseException:
        await db.aclose()
        raise
    return db

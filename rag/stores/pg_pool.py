"""Connections from a PostgreSQL pool, with a lost database turned into the domain's StoreUnavailable (503)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from rag.errors import StoreUnavailable

# What a lost or refused connection raises, in asyncpg and below it
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    TimeoutError,
)


@asynccontextmanager
async def pooled_connection(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A connection from `pool`; a lost database becomes StoreUnavailable (503), never a 500 with a trace."""
    try:
        async with pool.acquire() as conn:
            yield conn
    except CONNECTION_ERRORS as exc:
        raise StoreUnavailable("the database is unavailable; try again in a moment") from exc

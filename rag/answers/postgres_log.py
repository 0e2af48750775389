"""The answer log in PostgreSQL (DATABASE_URL set), shared by replicas.

Each flush is one statement, whatever the number of answers running on the replica: the batches travel as arrays
and are unnested, the lease update fences runs another replica declared interrupted, and one NOTIFY on the
`rag_answers` channel wakes the readers on other replicas (payload `e:<run ids>`). A stop asked through another
replica is told the same way (`s:<run id>`), so it takes effect at once. Each replica keeps one listening
connection; while it is lost, readers fall back to polling every `poll_seconds`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import asyncpg

from rag.answers.log import (
    INTERRUPTED,
    NEW_RUN_COLUMNS,
    SOURCES_MARK,
    Batch,
    Run,
    admit,
    cited_in,
    runs_by_id,
    unbatch,
)
from rag.stores.pg_pool import pooled_connection

logger = logging.getLogger(__name__)

CHANNEL = "rag_answers"
SCHEMA_LOCK = 0x52414703  # pg_advisory_xact_lock key for this schema
NOTIFY_BYTES = 7000  # PostgreSQL's payload limit is 8,000 bytes
SCHEMA = """
CREATE TABLE IF NOT EXISTS rag_answer_runs (
    run_id text PRIMARY KEY, chat_id text NOT NULL, user_id text NOT NULL, org_id text, org_key text NOT NULL,
    question text NOT NULL, replica text NOT NULL, started_at double precision NOT NULL,
    lease_until double precision NOT NULL, status text NOT NULL, ended_at double precision,
    stop_requested boolean NOT NULL DEFAULT false);
CREATE INDEX IF NOT EXISTS rag_answer_runs_by_chat ON rag_answer_runs (chat_id, started_at);
CREATE INDEX IF NOT EXISTS rag_answer_runs_running ON rag_answer_runs (org_key) WHERE status = 'running';
CREATE TABLE IF NOT EXISTS rag_answer_events (
    run_id text NOT NULL REFERENCES rag_answer_runs (run_id) ON DELETE CASCADE,
    first_seq integer NOT NULL, n integer NOT NULL, data text NOT NULL, PRIMARY KEY (run_id, first_seq));
"""
_RUN_COLUMNS = (
    "run_id, chat_id, user_id, org_id, question, replica, started_at, lease_until, status, "
    "(SELECT coalesce(max(first_seq + n - 1), 0) FROM rag_answer_events e WHERE e.run_id = r.run_id), ended_at"
)
_FLUSH = """
WITH b AS (
    SELECT * FROM unnest($1::text[], $2::int[], $3::int[], $4::text[], $5::text[], $6::bool[])
        AS b(run_id, first_seq, n, data, final, renew)
), r AS (
    -- FOR SHARE: a reader declaring the run interrupted waits for this flush, and then numbers after its events.
    SELECT a.run_id, a.stop_requested FROM rag_answer_runs a JOIN b USING (run_id)
    WHERE a.status = 'running' FOR SHARE OF a
), u AS (
    UPDATE rag_answer_runs a SET
        lease_until = CASE WHEN b.renew THEN $7 ELSE a.lease_until END,
        status = COALESCE(b.final, a.status),
        ended_at = CASE WHEN b.final IS NULL THEN a.ended_at ELSE $8 END
    FROM b JOIN r USING (run_id) WHERE a.run_id = b.run_id AND (b.renew OR b.final IS NOT NULL)
), i AS (
    INSERT INTO rag_answer_events (run_id, first_seq, n, data)
    SELECT b.run_id, b.first_seq, b.n, b.data FROM b JOIN r USING (run_id) WHERE b.n > 0
)
SELECT run_id, stop_requested FROM r
"""


def _run(row: asyncpg.Record | None) -> Run | None:
    return None if row is None else Run(*row)


class PgAnswerLog:
    def __init__(self, dsn: str, pool: asyncpg.Pool, poll_seconds: float) -> None:
        self._dsn = dsn
        self._pool = pool
        self.poll_seconds = poll_seconds
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self.on_stop: Callable[[str], None] | None = None  # told of stops asked through other replicas
        self._listener: asyncpg.Connection | None = None
        self._keeper: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, dsn: str, pool_size: int = 4, poll_seconds: float = 1.0) -> PgAnswerLog:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=pool_size)
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
            await conn.execute(SCHEMA)
        log = cls(dsn, pool, poll_seconds)
        await log._listen()
        log._keeper = asyncio.create_task(log._keep_listening(), name="answer-log-listener")
        return log

    def _connection(self) -> AbstractAsyncContextManager[asyncpg.Connection]:
        return pooled_connection(self._pool)

    # --- notifications ---------------------------------------------------------------------------

    async def _listen(self) -> None:
        try:
            conn = await asyncpg.connect(self._dsn)
            await conn.add_listener(CHANNEL, self._notified)
        except (OSError, asyncpg.PostgresError) as exc:
            logger.warning("cannot listen for answer events (%s): readers on other replicas poll", exc)
            return
        self._listener = conn

    async def _keep_listening(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds * 5)
            if self._listener is None or self._listener.is_closed():
                await self._listen()
                self._wake_all()  # events may have been missed while no one listened

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        kind, _, ids = payload.partition(":")
        if kind == "s":
            if self.on_stop is not None:
                self.on_stop(ids)
            return
        for run_id in ids.split(","):
            for event in self._waiters.get(run_id, ()):
                event.set()

    def _wake_all(self) -> None:
        for events in self._waiters.values():
            for event in events:
                event.set()

    def subscribe(self, run_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._waiters.setdefault(run_id, set()).add(event)
        return event

    def unsubscribe(self, run_id: str, event: asyncio.Event) -> None:
        waiters = self._waiters.get(run_id)
        if waiters is not None:
            waiters.discard(event)
            if not waiters:
                del self._waiters[run_id]

    # --- runs ------------------------------------------------------------------------------------

    async def begin(self, run: Run, max_running_per_org: int) -> None:
        async with self._connection() as conn, conn.transaction():
            # Two replicas admitting answers of one organisation at once must not both pass the cap.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", run.org_key)
            await conn.execute(
                "UPDATE rag_answer_runs SET status = $1, ended_at = lease_until "
                "WHERE status = 'running' AND lease_until < $2 AND (chat_id = $3 OR org_key = $4)",
                INTERRUPTED,
                time.time(),
                run.chat_id,
                run.org_key,
            )
            busy = await conn.fetchval(
                "SELECT 1 FROM rag_answer_runs WHERE chat_id = $1 AND status = 'running' FOR UPDATE", run.chat_id
            )
            running = await conn.fetchval(
                "SELECT count(*) FROM rag_answer_runs WHERE org_key = $1 AND status = 'running'", run.org_key
            )
            admit(run, busy is not None, running, max_running_per_org)
            await conn.execute(
                f"INSERT INTO rag_answer_runs ({NEW_RUN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                *run.new_row(),
            )

    async def abandon(self, run_id: str) -> None:
        async with self._connection() as conn:
            await conn.execute("DELETE FROM rag_answer_runs WHERE run_id = $1", run_id)

    async def flush(self, batches: list[Batch], renew: list[str], lease_until: float) -> dict[str, bool]:
        by_run = {batch.run_id: batch for batch in batches}
        run_ids = runs_by_id(batches, renew)
        renewing = set(renew)
        columns: tuple[list[Any], ...] = ([], [], [], [], [], [])
        for run_id in run_ids:
            batch = by_run.get(run_id)
            columns[5].append(run_id in renewing)
            columns[0].append(run_id)
            columns[1].append(batch.first_seq if batch else None)
            columns[2].append(batch.count if batch else 0)
            columns[3].append(batch.data if batch else None)
            columns[4].append(batch.final_status if batch else None)
        async with self._connection() as conn, conn.transaction():
            rows = await conn.fetch(_FLUSH, *columns, lease_until, time.time())
            owned = {row["run_id"]: row["stop_requested"] for row in rows}
            written = [run_id for run_id in owned if run_id in by_run and by_run[run_id].count]
            for payload in _notify_payloads(written):
                await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
        return owned

    async def current(self, chat_id: str) -> Run | None:
        async with self._connection() as conn:
            return _run(
                await conn.fetchrow(
                    f"SELECT {_RUN_COLUMNS} FROM rag_answer_runs r WHERE chat_id = $1 ORDER BY started_at DESC LIMIT 1",
                    chat_id,
                )
            )

    async def get(self, run_id: str) -> Run | None:
        async with self._connection() as conn:
            return _run(await conn.fetchrow(f"SELECT {_RUN_COLUMNS} FROM rag_answer_runs r WHERE run_id = $1", run_id))

    async def read(self, run_id: str, after_seq: int) -> list[tuple[int, str | dict[str, Any]]]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT first_seq, data FROM rag_answer_events WHERE run_id = $1 AND first_seq + n - 1 > $2 "
                "ORDER BY first_seq",
                run_id,
                after_seq,
            )
        return unbatch([tuple(row) for row in rows], after_seq)

    async def request_stop(self, run_id: str) -> None:
        async with self._connection() as conn, conn.transaction():
            await conn.execute(
                "UPDATE rag_answer_runs SET stop_requested = true WHERE run_id = $1 AND status = 'running'", run_id
            )
            await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, f"s:{run_id}")

    async def interrupt_lapsed(self, run_id: str, now: float) -> bool:
        async with self._connection() as conn:
            result = await conn.execute(
                "UPDATE rag_answer_runs SET status = $1, ended_at = lease_until "
                "WHERE run_id = $2 AND status = 'running' AND lease_until < $3",
                INTERRUPTED,
                run_id,
                now,
            )
        return result != "UPDATE 0"

    async def forget_chat(self, chat_id: str) -> None:
        async with self._connection() as conn:
            await conn.execute("DELETE FROM rag_answer_runs WHERE chat_id = $1 AND status != 'running'", chat_id)

    async def cited_documents(self) -> dict[str, set[str]]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT e.run_id, e.data FROM rag_answer_events e JOIN rag_answer_runs r ON r.run_id = e.run_id "
                "WHERE r.status != 'running' AND strpos(e.data, $1) > 0",
                SOURCES_MARK,
            )
        cited: dict[str, set[str]] = {}
        for row in rows:
            cited.setdefault(row["run_id"], set()).update(cited_in(row["data"]))
        return cited

    async def forget_runs(self, run_ids: list[str]) -> None:
        async with self._connection() as conn:
            await conn.execute("DELETE FROM rag_answer_runs WHERE run_id = ANY($1) AND status != 'running'", run_ids)

    async def sweep(self, now: float, retention_seconds: float) -> int:
        async with self._connection() as conn, conn.transaction():
            await conn.execute(
                "UPDATE rag_answer_runs SET status = $1, ended_at = lease_until "
                "WHERE status = 'running' AND lease_until < $2",
                INTERRUPTED,
                now,
            )
            result = await conn.execute(
                "DELETE FROM rag_answer_runs WHERE status != 'running' AND ended_at < $1", now - retention_seconds
            )
        return int(result.split()[-1])

    async def aclose(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        if self._listener is not None and not self._listener.is_closed():
            await self._listener.close()
        await self._pool.close()


def _notify_payloads(run_ids: list[str]) -> list[str]:
    """`e:<id>,<id>...` payloads under PostgreSQL's size limit."""
    payloads: list[str] = []
    current: list[str] = []
    size = 0
    for run_id in run_ids:
        if current and size + len(run_id) + 1 > NOTIFY_BYTES:
            payloads.append("e:" + ",".join(current))
            current, size = [], 0
        current.append(run_id)
        size += len(run_id) + 1
    if current:
        payloads.append("e:" + ",".join(current))
    return payloads

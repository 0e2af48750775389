"""The answer log in the chat database of one machine (`chats.sqlite3` under DATA_DIR).

One connection, used from worker threads one call at a time. Its writes are `synchronous=NORMAL`: in WAL mode they
survive the process being killed, which is what a resume needs; an answer in progress does not outlive a power cut
of its machine anyway. Readers in other processes sharing the file poll it every `poll_seconds`."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio

from rag.answers.log import (
    INTERRUPTED,
    NEW_RUN_COLUMNS,
    RUNNING,
    SOURCES_MARK,
    Batch,
    Run,
    admit,
    cited_in,
    runs_by_id,
    unbatch,
)

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS answer_runs (
    run_id         TEXT PRIMARY KEY,
    chat_id        TEXT NOT NULL,
    user_id        TEXT NOT NULL,
    org_id         TEXT,
    org_key        TEXT NOT NULL,
    question       TEXT NOT NULL,
    replica        TEXT NOT NULL,
    started_at     REAL NOT NULL,
    lease_until    REAL NOT NULL,
    status         TEXT NOT NULL,
    ended_at       REAL,
    stop_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS answer_runs_by_chat ON answer_runs (chat_id, started_at);
CREATE INDEX IF NOT EXISTS answer_runs_running ON answer_runs (org_key) WHERE status = 'running';
CREATE TABLE IF NOT EXISTS answer_events (
    run_id    TEXT NOT NULL REFERENCES answer_runs (run_id) ON DELETE CASCADE,
    first_seq INTEGER NOT NULL,
    n         INTEGER NOT NULL,
    data      TEXT NOT NULL,
    PRIMARY KEY (run_id, first_seq)
) WITHOUT ROWID;
"""
_RUN_COLUMNS = (
    "run_id, chat_id, user_id, org_id, question, replica, started_at, lease_until, status, "
    "(SELECT coalesce(max(first_seq + n - 1), 0) FROM answer_events e WHERE e.run_id = answer_runs.run_id), ended_at"
)


def _run(row: tuple[Any, ...] | None) -> Run | None:
    return None if row is None else Run(*row)


class SqliteAnswerLog:
    def __init__(self, path: Path, poll_seconds: float = 0.05) -> None:
        self.path = path
        self.poll_seconds = poll_seconds
        self.on_stop: Callable[[str], None] | None = None  # never called: stops are read at each flush
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    @classmethod
    async def open(cls, path: Path, poll_seconds: float = 0.05) -> SqliteAnswerLog:
        log = cls(path, poll_seconds)
        await anyio.to_thread.run_sync(log._open)
        return log

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA secure_delete=ON")  # deleted text is zeroed, not left in free pages (rag/purge.py)
        db.execute("PRAGMA foreign_keys=ON")
        db.executescript(SCHEMA)
        self._db = db

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            with self._lock:
                assert self._db is not None, "the answer log is closed"
                return fn(self._db)

        return await anyio.to_thread.run_sync(run)

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def transaction(db: sqlite3.Connection) -> T:
            db.execute("BEGIN IMMEDIATE")  # take the write lock first: the checks below hold until the commit
            try:
                result = fn(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result

        return await self._call(transaction)

    async def begin(self, run: Run, max_running_per_org: int) -> None:
        def begin(db: sqlite3.Connection) -> None:
            now = time.time()
            db.execute(
                "UPDATE answer_runs SET status = ?, ended_at = lease_until "
                "WHERE status = 'running' AND lease_until < ? AND (chat_id = ? OR org_key = ?)",
                (INTERRUPTED, now, run.chat_id, run.org_key),
            )
            busy = db.execute(
                "SELECT 1 FROM answer_runs WHERE chat_id = ? AND status = 'running'", (run.chat_id,)
            ).fetchone()
            (running,) = db.execute(
                "SELECT count(*) FROM answer_runs WHERE org_key = ? AND status = 'running'", (run.org_key,)
            ).fetchone()
            admit(run, busy is not None, running, max_running_per_org)
            db.execute(
                f"INSERT INTO answer_runs ({NEW_RUN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", run.new_row()
            )

        await self._write(begin)

    async def abandon(self, run_id: str) -> None:
        await self._write(lambda db: db.execute("DELETE FROM answer_runs WHERE run_id = ?", (run_id,)))

    async def flush(self, batches: list[Batch], renew: list[str], lease_until: float) -> dict[str, bool]:
        def flush(db: sqlite3.Connection) -> dict[str, bool]:
            now = time.time()
            owned: dict[str, bool] = {}
            for run_id in runs_by_id(batches, renew):
                # Inside the write transaction: no one can declare the run interrupted between this and the writes.
                row = db.execute(
                    "SELECT status, stop_requested FROM answer_runs WHERE run_id = ?", (run_id,)
                ).fetchone()
                if row is not None and row[0] == RUNNING:
                    owned[run_id] = bool(row[1])
            for batch in batches:
                if batch.run_id not in owned:
                    continue  # fenced: another replica declared this run interrupted
                if batch.count:
                    db.execute(
                        "INSERT INTO answer_events (run_id, first_seq, n, data) VALUES (?, ?, ?, ?)",
                        (batch.run_id, batch.first_seq, batch.count, batch.data),
                    )
                if batch.final_status is not None:
                    db.execute(
                        "UPDATE answer_runs SET status = ?, ended_at = ? WHERE run_id = ?",
                        (batch.final_status, now, batch.run_id),
                    )
            db.executemany(
                "UPDATE answer_runs SET lease_until = ? WHERE run_id = ? AND status = 'running'",
                [(lease_until, run_id) for run_id in renew if run_id in owned],
            )
            return owned

        return await self._write(flush)

    async def current(self, chat_id: str) -> Run | None:
        return await self._call(
            lambda db: _run(
                db.execute(
                    f"SELECT {_RUN_COLUMNS} FROM answer_runs WHERE chat_id = ? ORDER BY started_at DESC LIMIT 1",
                    (chat_id,),
                ).fetchone()
            )
        )

    async def get(self, run_id: str) -> Run | None:
        return await self._call(
            lambda db: _run(
                db.execute(f"SELECT {_RUN_COLUMNS} FROM answer_runs WHERE run_id = ?", (run_id,)).fetchone()
            )
        )

    async def read(self, run_id: str, after_seq: int) -> list[tuple[int, str | dict[str, Any]]]:
        rows = await self._call(
            lambda db: db.execute(
                "SELECT first_seq, data FROM answer_events WHERE run_id = ? AND first_seq + n - 1 > ? "
                "ORDER BY first_seq",
                (run_id, after_seq),
            ).fetchall()
        )
        return unbatch(rows, after_seq)

    async def request_stop(self, run_id: str) -> None:
        await self._write(
            lambda db: db.execute(
                "UPDATE answer_runs SET stop_requested = 1 WHERE run_id = ? AND status = 'running'", (run_id,)
            )
        )

    async def interrupt_lapsed(self, run_id: str, now: float) -> bool:
        cursor = await self._write(
            lambda db: db.execute(
                "UPDATE answer_runs SET status = ?, ended_at = lease_until "
                "WHERE run_id = ? AND status = 'running' AND lease_until < ?",
                (INTERRUPTED, run_id, now),
            )
        )
        return cursor.rowcount > 0

    async def forget_chat(self, chat_id: str) -> None:
        await self._write(
            lambda db: db.execute("DELETE FROM answer_runs WHERE chat_id = ? AND status != 'running'", (chat_id,))
        )

    async def cited_documents(self) -> dict[str, set[str]]:
        rows = await self._call(
            lambda db: db.execute(
                "SELECT e.run_id, e.data FROM answer_events e JOIN answer_runs r ON r.run_id = e.run_id "
                "WHERE r.status != 'running' AND instr(e.data, ?) > 0",
                (SOURCES_MARK,),
            ).fetchall()
        )
        cited: dict[str, set[str]] = {}
        for run_id, data in rows:
            cited.setdefault(run_id, set()).update(cited_in(data))
        return cited

    async def forget_runs(self, run_ids: list[str]) -> None:
        await self._write(
            lambda db: db.executemany(
                "DELETE FROM answer_runs WHERE run_id = ? AND status != 'running'", [(r,) for r in run_ids]
            )
        )

    async def sweep(self, now: float, retention_seconds: float) -> int:
        def sweep(db: sqlite3.Connection) -> int:
            db.execute(
                "UPDATE answer_runs SET status = ?, ended_at = lease_until "
                "WHERE status = 'running' AND lease_until < ?",
                (INTERRUPTED, now),
            )
            cursor = db.execute(
                "DELETE FROM answer_runs WHERE status != 'running' AND ended_at < ?", (now - retention_seconds,)
            )
            return cursor.rowcount

        return await self._write(sweep)

    def subscribe(self, run_id: str) -> asyncio.Event:
        return asyncio.Event()  # never set: readers poll

    def unsubscribe(self, run_id: str, event: asyncio.Event) -> None:
        pass

    async def aclose(self) -> None:
        def close() -> None:
            with self._lock:
                if self._db is not None:
                    self._db.close()
                    self._db = None

        await anyio.to_thread.run_sync(close)

"""Deleted means deleted: after a deletion, once PURGE_DELAY_SECONDS have passed, no file under DATA_DIR holds the
deleted text.

Deleting marks, it does not erase: SQLite leaves a deleted row's bytes in its page and the page's earlier image in
the WAL, Tantivy keeps a deleted chunk's terms in its segment until a merge, PostgreSQL keeps dead tuples until a
vacuum. So every SQLite database here runs with `secure_delete` (a deleted row is overwritten with zeros in place),
and this purger, a while after the last deletion, finishes the job:
- kept answer events (resumable answers) whose sources quote a deleted document are removed;
- the store's `purge()`: the embedded store rewrites the keyword index segments that hold deleted entries;
  PostgreSQL vacuums its tables and each replica rewrites its keyword index likewise;
- every SQLite database under DATA_DIR (catalog, chats, answers, jobs) has its WAL checkpointed into the database
  and truncated to nothing, so no earlier image of a page survives.

Why wait at all (PURGE_DELAY_SECONDS): a purge rewrites files, so deletions arriving together (a user's purge, a
clean-up script) share one, and a deletion is never slowed by it. A purge also runs at start-up, for deletions a
crash or a stop left unpurged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from rag.answers.log import AnswerLog
from rag.errors import DocumentNotFound
from rag.stores import VectorStore

logger = logging.getLogger(__name__)

MIN_PERIOD_SECONDS = 10.0  # how often a purge runs anyway (deletions by other processes), at least
CHECKPOINT_TRIES = 100  # a checkpoint waits for readers of older pages; each try waits 50 ms more


def truncate_wal(path: Path) -> bool:
    """Checkpoint a SQLite database's WAL into it and truncate the WAL to zero bytes; False when readers kept it."""
    conn = sqlite3.connect(path, timeout=30)
    try:
        for _ in range(CHECKPOINT_TRIES):
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                return True
            time.sleep(0.05)
        return False
    finally:
        conn.close()


# One part of a purge; its argument says whether this process deleted anything since the last purge (a step may
# skip costly work otherwise: other processes purge after their own deletions).
PurgeStep = Callable[[bool], Awaitable[None]]


def forgetting_answers_citing_deleted(log: AnswerLog, store: VectorStore) -> PurgeStep:
    """A purge step: kept answer events whose sources quote a document deleted since are removed (the answer itself
    stays in its chat; only the quoted chunks go)."""

    async def step(deleted_here: bool) -> None:
        cited = await log.cited_documents()
        gone: set[str] = set()
        for document_id in set().union(*cited.values()):
            try:
                await store.get_document(document_id)
            except DocumentNotFound:
                gone.add(document_id)
        runs = [run_id for run_id, documents in cited.items() if documents & gone]
        if runs:
            await log.forget_runs(runs)

    return step


def vacuuming(dsn: str, tables: list[str], rewrite: bool) -> PurgeStep:
    """A purge step for the PostgreSQL tables beside the store's (chats, kept answers): after deletions through this
    process, VACUUM them (VACUUM FULL with `rewrite`, PG_PURGE_REWRITE)."""

    async def step(deleted_here: bool) -> None:
        if not deleted_here:
            return  # the process that deleted purges
        import asyncpg

        from rag.stores.postgres_store import vacuum

        conn = await asyncpg.connect(dsn)
        try:
            await vacuum(conn, tables, rewrite)
        finally:
            await conn.close()

    return step


EXPORT_LEFTOVER_SECONDS = 3600.0  # an export file this old was left by a crash or a dropped client: removed


def remove_leftover_exports(folder: Path) -> None:
    """Remove export archives (DATA_DIR/exports) left by a crash or a client that went away: they hold documents'
    text, which must not outlive their deletion. One still being written or sent is younger than the cut-off."""
    for path in folder.glob("*"):
        with contextlib.suppress(FileNotFoundError):
            if time.time() - path.stat().st_mtime > EXPORT_LEFTOVER_SECONDS:
                shutil.rmtree(path) if path.is_dir() else path.unlink()


def removing_leftover_exports(folder: Path) -> PurgeStep:
    """A purge step: `remove_leftover_exports` at every purge, so a crash's leftovers go without another export."""

    async def step(deleted_here: bool) -> None:
        await anyio.to_thread.run_sync(remove_leftover_exports, folder)

    return step


def purge_of(store: VectorStore) -> PurgeStep:
    """The store's own purge, or nothing for a plug-in store without one. Looked up at each purge: the service's
    store is the active embedding space's, whichever that is then (rag/spaces/active.py)."""

    async def step(deleted_here: bool) -> None:
        purge = getattr(store, "purge", None)
        if callable(purge):
            await purge(deleted_here)

    return step


class Purger:
    """Purges `delay_seconds` after a deletion in this process, and every `delay_seconds` (at least each
    MIN_PERIOD_SECONDS) in case another process or replica deleted: each purge step costs next to nothing when
    there is nothing to purge."""

    def __init__(self, data_dir: Path, delay_seconds: float, steps: list[PurgeStep]) -> None:
        self.data_dir = data_dir
        self.delay_seconds = delay_seconds
        self._steps = steps
        self._wake = asyncio.Event()
        self._deleted_here = True  # at start: deletions a crash or a stop left unpurged
        self._task: asyncio.Task[None] | None = None
        self._done = asyncio.Condition()
        self.purges = 0  # completed, for tests and the health route

    def start(self) -> None:
        self._wake.set()  # what a crash or a stop left unpurged
        self._task = asyncio.create_task(self._run())

    def deleted(self) -> None:
        """Something was deleted: purge once the delay has passed (one purge for deletions that come together)."""
        self._deleted_here = True
        self._wake.set()

    async def _run(self) -> None:
        period = max(self.delay_seconds, MIN_PERIOD_SECONDS)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), period)
            await asyncio.sleep(self.delay_seconds)
            self._wake.clear()  # deletions from here on are after this purge's start: they wake the next one
            try:
                await self.purge()
            except Exception:
                logger.exception("purge failed; the next one retries it")

    async def purge(self) -> None:
        """Purge now: each step (kept answers quoting deleted documents, the store), then every SQLite database's
        WAL."""
        deleted_here, self._deleted_here = self._deleted_here, False
        try:
            for step in self._steps:
                await step(deleted_here)
        except BaseException:
            self._deleted_here |= deleted_here  # the next purge does it again
            raise
        for path in sorted(self.data_dir.rglob("*.sqlite3")):
            if not await anyio.to_thread.run_sync(truncate_wal, path):
                logger.warning("purge: readers kept %s's WAL busy; the next purge truncates it", path)
        async with self._done:
            self.purges += 1
            self._done.notify_all()

    async def wait_for_purge(self, after: int) -> None:
        """Wait until more than `after` purges have completed (tests)."""
        async with self._done:
            await self._done.wait_for(lambda: self.purges > after)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

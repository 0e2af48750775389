"""A PostgreSQL replica's keyword index: the Tantivy index of `keyword_index.py` on the replica's own disk,
following the chunk table, so that the keyword leg stops early there too and needs no extension in the database.

PostgreSQL stays the only place anything is stored; this index is derived from it, and rebuilt from it when lost.
How a replica follows the table:
- every chunk row carries the id of the transaction that wrote it (`xid`, an `xid8`), and a trigger notes each
  deleted chunk, with its transaction, in `rag_deleted_chunks`;
- a replica remembers a watermark, the oldest transaction still running when it last caught up (its snapshot's
  `xmin`): every transaction below it had ended then, and was applied. It catches up by reading the rows and
  deletions of transactions at or above the watermark that it has not applied yet, applying them (idempotently:
  each key is deleted before it is added), and moving the watermark. Transaction ids order transactions by start,
  not by commit, which is why the watermark is a snapshot's `xmin` and not the largest id seen;
- a search first reads the store's write counter (`generation`) inside its own snapshot; when it moved, the search
  catches up within that snapshot before it asks the index. So a search sees every write acknowledged before it
  began, through any replica, in both legs; and the chunk rows of the index's hits are read in the same snapshot,
  so nothing the snapshot does not hold (a concurrent add, a deleted chunk) is returned.

The watermark is kept in `followed.json` beside the index, written after the index commits: a crash in between
re-applies a change, which changes nothing. Processes of one host may share the directory: catching up takes a file
lock and starts from the state on disk. Deletions are noted for `DELETED_RETENTION_DAYS`; a replica whose last
catch-up is older than that, less a day's margin, rebuilds its index (at start, or at its next search), as does one
whose state names another database.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import tarfile
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import anyio
import anyio.from_thread
import asyncpg

from rag.durable import fsync_path
from rag.stores import pg_keyword_snapshots as snapshots
from rag.stores.keyword_index import Entry, KeywordIndex

logger = logging.getLogger(__name__)

STATE = "followed.json"
LOCK = ".follow.lock"
DELETED_RETENTION_DAYS = 7
REBUILD_BATCH = 10_000

# The columns and table the follower reads, created by the store's schema migrations (postgres_store.MIGRATIONS).
SCHEMA = """
    -- a constant default first: adding the column then rewrites no row (and rebuilds no index); the rows written
    -- before have no transaction to follow, and a replica's first start indexes every row anyway
    ALTER TABLE rag_chunks ADD COLUMN xid xid8 NOT NULL DEFAULT '0';
    ALTER TABLE rag_chunks ALTER COLUMN xid SET DEFAULT pg_current_xact_id();
    CREATE INDEX rag_chunks_by_xid ON rag_chunks (xid);
    CREATE TABLE rag_deleted_chunks (
        key bigint NOT NULL, xid xid8 NOT NULL DEFAULT pg_current_xact_id(), at timestamptz NOT NULL DEFAULT now());
    CREATE INDEX rag_deleted_chunks_by_xid ON rag_deleted_chunks (xid);
    CREATE INDEX rag_deleted_chunks_by_time ON rag_deleted_chunks (at);
    CREATE FUNCTION rag_note_deleted_chunks() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO rag_deleted_chunks (key) SELECT key FROM gone;
        RETURN NULL;
    END $$;
    CREATE TRIGGER rag_chunks_deleted AFTER DELETE ON rag_chunks REFERENCING OLD TABLE AS gone
        FOR EACH STATEMENT EXECUTE FUNCTION rag_note_deleted_chunks();
    ALTER TABLE rag_counters ADD COLUMN generation bigint NOT NULL DEFAULT 0;
"""

# Run by every write, in its transaction: the deletions no replica can still need
PRUNE_DELETED = f"DELETE FROM rag_deleted_chunks WHERE at < now() - interval '{DELETED_RETENTION_DAYS} days'"

# The rows of transactions not applied yet: at or above the watermark ($1) and not among those applied ($2)
_UNAPPLIED = "xid >= $1::text::xid8 AND NOT (xid::text::bigint = ANY($2::bigint[]))"
_SNAPSHOT = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin, extract(epoch FROM now()) AS now"


def _documents_in(directory: Path) -> int:
    """The documents of the index in `directory` (a snapshot's, before it is put in place)."""
    index = KeywordIndex(directory)
    try:
        return index.count
    finally:
        index.close()


def _stale(state: FollowState, now: float) -> bool:
    """Whether the index last caught up too long ago to trust the deletions still noted (a day's margin)."""
    return now - state.at > (DELETED_RETENTION_DAYS - 1) * 86_400


@dataclass
class FollowState:
    store: str  # the database's store id (rag_meta), so that an index never follows another database
    xmin: int  # every transaction below it has been applied
    applied: list[int]  # transactions at or above `xmin` applied already
    at: float  # the database's clock when this state was taken (epoch seconds)
    generation: int  # the write counter as of that snapshot
    unpurged: bool = False  # deletions applied since the last rebuild: their terms are still in the segments


class FollowedKeywordIndex:
    """A `KeywordIndex` kept up to date with one PostgreSQL store's chunk table."""

    def __init__(self, directory: Path, store_id: str) -> None:
        self.directory = directory
        self.store_id = store_id
        self.index = KeywordIndex(directory)
        self._state = self._read_state()
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, pool: asyncpg.Pool, directory: Path, store_id: str) -> FollowedKeywordIndex:
        """Open the replica's index, rebuilt from the table when it is missing, stale or another database's."""
        follower = await anyio.to_thread.run_sync(cls, directory, store_id)
        await anyio.to_thread.run_sync(snapshots.remove_leftovers, directory)
        async with pool.acquire() as conn:
            now = float(await conn.fetchval("SELECT extract(epoch FROM now())"))
        if follower._state is None or _stale(follower._state, now):
            if await follower.restore(pool):
                # ready to answer: what was written since the snapshot, applied now rather than by the first search
                async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
                    await follower.catch_up(conn)
            else:
                await follower.rebuild(pool)
        return follower

    # --- the state file ---------------------------------------------------------------------------

    def _read_state(self) -> FollowState | None:
        try:
            state = FollowState(**json.loads((self.directory / STATE).read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            return None
        return state if state.store == self.store_id else None

    def _write_state(self, state: FollowState) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{STATE}.", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(asdict(state), handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.directory / STATE)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        fsync_path(self.directory)

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        with open(self.directory / LOCK, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # --- following --------------------------------------------------------------------------------

    async def catch_up(self, conn: asyncpg.Connection) -> None:
        """Apply what the snapshot of `conn`'s transaction holds that the index does not (call it inside a
        REPEATABLE READ transaction: the check and the reads then see one snapshot)."""
        generation = int(await conn.fetchval("SELECT generation FROM rag_counters WHERE id = 1"))
        if self._state is not None and generation <= self._state.generation:
            return  # nothing written since, or the index is already past this snapshot
        async with self._locked():
            await self._catch_up_locked(conn, generation)

    async def _catch_up_locked(self, conn: asyncpg.Connection, generation: int) -> None:
        on_disk = self._read_state()  # another process sharing the directory may have caught up
        if on_disk is not None and (self._state is None or on_disk.generation > self._state.generation):
            self._state = on_disk
            await anyio.to_thread.run_sync(self.index.reload)
        state = self._state
        if state is None or generation <= state.generation:
            return
        snapshot = await conn.fetchrow(_SNAPSHOT)
        if _stale(state, float(snapshot["now"])):  # deletions it has not seen may be pruned already
            await self._rebuild_in(conn)
            return
        applied = set(state.applied)
        # Rows in batches: the first search after a large load through another replica reads the whole load, and
        # its texts need not all be in memory at once. A crash midway replays the batches, which changes nothing.
        added = await conn.cursor(
            f"SELECT key, text, org_id, xid::text::bigint AS xid FROM rag_chunks WHERE {_UNAPPLIED}",
            str(state.xmin),
            state.applied,
        )
        while batch := await added.fetch(REBUILD_BATCH):
            applied |= {row["xid"] for row in batch}
            entries: list[Entry] = [(row["key"], row["text"], row["org_id"]) for row in batch]
            await anyio.to_thread.run_sync(self.index.apply, entries, ())
        removed = await conn.fetch(
            f"SELECT key, xid::text::bigint AS xid FROM rag_deleted_chunks WHERE {_UNAPPLIED}",
            str(state.xmin),
            state.applied,
        )
        applied |= {row["xid"] for row in removed}
        xmin = max(state.xmin, int(snapshot["xmin"]))
        new_state = FollowState(
            self.store_id,
            xmin,
            sorted(x for x in applied if x >= xmin),
            float(snapshot["now"]),
            generation,
            state.unpurged or bool(removed),
        )

        def apply() -> None:
            self.index.apply([], (row["key"] for row in removed))
            self._write_state(new_state)

        await anyio.to_thread.run_sync(apply)
        self._state = new_state

    async def purge(self, pool: asyncpg.Pool) -> None:
        """Rewrite the index when it applied deletions since it was last built, so that no deleted chunk's terms
        stay in a segment (Tantivy drops deleted entries only when it merges their segment, and whether it merges
        is its own choice)."""
        state = self._read_state() or self._state
        if state is not None and state.unpurged:
            await self.rebuild(pool)

    async def rebuild(self, pool: asyncpg.Pool) -> None:
        """Index every chunk row of one snapshot, then follow from that snapshot."""
        async with (
            self._locked(),
            pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            await self._rebuild_in(conn)

    async def _rebuild_in(self, conn: asyncpg.Connection) -> None:
        """Rebuild from the snapshot of `conn`'s REPEATABLE READ transaction; the caller holds both locks."""
        snapshot = await conn.fetchrow(_SNAPSHOT)
        generation = int(await conn.fetchval("SELECT generation FROM rag_counters WHERE id = 1"))
        cursor = await conn.cursor("SELECT key, text, org_id FROM rag_chunks")

        def rows() -> Iterator[Entry]:  # runs in the indexing thread; each batch is fetched on the event loop
            while batch := anyio.from_thread.run(cursor.fetch, REBUILD_BATCH):
                yield from ((row["key"], row["text"], row["org_id"]) for row in batch)

        state = FollowState(self.store_id, int(snapshot["xmin"]), [], float(snapshot["now"]), generation)

        def index_all() -> int:
            indexed = self.index.rebuild(rows())
            self._write_state(state)
            return indexed

        indexed = await anyio.to_thread.run_sync(index_all)
        self._state = state
        logger.info("keyword index at %s built from %d chunks", self.directory, indexed)

    # --- snapshots (pg_keyword_snapshots.py) ----------------------------------------------------------

    async def publish_if_due(self, pool: asyncpg.Pool, every_seconds: float) -> int | None:
        """Publish this replica's index when the newest snapshot is older than `every_seconds` and writes moved
        the store since (or there is none); returns the new snapshot's id, or None."""
        async with pool.acquire() as conn:
            generation = int(await conn.fetchval("SELECT generation FROM rag_counters WHERE id = 1"))
            if not await snapshots.due(conn, every_seconds, generation):
                return None
        return await self.publish(pool)

    async def publish(self, pool: asyncpg.Pool) -> int | None:
        """Publish the index as it last committed, with the state it matches; not while it holds deletions
        that a purge has not rewritten away."""

        async def link(target: Path) -> tuple[FollowState | None, int]:
            async with self._locked():
                # the state on disk: written after the index commits it describes (by this process or another
                # sharing the directory), so the files linked now hold at least what it says
                state = self._read_state()
                if state is None or state.unpurged:
                    return None, 0
                return state, await anyio.to_thread.run_sync(self.index.link_committed, target)

        return await snapshots.publish(pool, link, self.directory)

    async def restore(self, pool: asyncpg.Pool) -> bool:
        """Replace the index with the newest usable snapshot; False when there is none (or it is damaged, stale,
        another database's, or holds unpurged deletions), and the index is left as it was."""
        with tempfile.TemporaryDirectory(prefix=".restore-", dir=self.directory) as tmp:
            target = Path(tmp)
            async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
                try:
                    fetched = await snapshots.fetch_newest(conn, target)
                except (ValueError, tarfile.TarError, OSError) as exc:
                    logger.warning("keyword index snapshot not used (%s); the index is built from the table", exc)
                    return False
                now = float(await conn.fetchval("SELECT extract(epoch FROM now())"))
            if fetched is None:
                return False
            try:
                state = FollowState(**fetched[0])
            except TypeError:
                return False
            if state.store != self.store_id or state.unpurged or _stale(state, now):
                return False
            try:
                documents = await anyio.to_thread.run_sync(_documents_in, target)
            except Exception as exc:  # whatever Tantivy makes of files it cannot read
                logger.warning("keyword index snapshot not used: it does not open (%s)", exc)
                return False
            if documents != fetched[1]:
                logger.warning("keyword index snapshot not used: it does not hold the documents its row counts")
                return False
            async with self._locked():
                on_disk = self._read_state()
                if on_disk is not None and not _stale(on_disk, now):  # another process of this host was first
                    self._state = on_disk
                    await anyio.to_thread.run_sync(self.index.reload)
                    return True
                await anyio.to_thread.run_sync(self._install, target, state)
        logger.info("keyword index at %s restored from a snapshot of %d chunks", self.directory, fetched[1])
        return True

    def _install(self, restored: Path, state: FollowState) -> None:
        """Put a verified snapshot's files in place of the index's (holding both locks): the state file goes
        first and comes back last, so a crash in between leaves an index that is restored or rebuilt again."""
        self.index.close()
        (self.directory / STATE).unlink(missing_ok=True)
        fsync_path(self.directory)
        for path in self.directory.iterdir():
            if path.is_file() and not path.name.startswith(".tantivy-") and path.name != LOCK:
                path.unlink()
        for path in restored.iterdir():
            if path.name.startswith(".tantivy-"):  # the lock files of the check that opened it
                continue
            os.replace(path, self.directory / path.name)
        fsync_path(self.directory)
        self.index = KeywordIndex(self.directory)
        self._write_state(state)
        self._state = state

    @contextlib.asynccontextmanager
    async def _locked(self) -> AsyncIterator[None]:
        """This process's lock, then the directory's (other processes of the host), taken in a thread."""
        async with self._lock:
            lock = self._file_lock()
            await anyio.to_thread.run_sync(lock.__enter__)
            try:
                yield
            finally:
                lock.__exit__(None, None, None)

    def close(self) -> None:
        self.index.close()

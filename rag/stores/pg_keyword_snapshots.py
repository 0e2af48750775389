"""Snapshots of a replica's keyword index kept in PostgreSQL, so that a new replica starts from one instead of
indexing the whole chunk table (21.6 s at a million chunks; the snapshot's download, a fraction of that).

A replica publishes its index now and then (PG_KEYWORD_SNAPSHOT_SECONDS): the files of its last commit,
hard-linked while no writer runs (`KeywordIndex.link_committed`), as one tar stream cut into parts of
`rag_keyword_snapshot_parts`, in one transaction with the row in `rag_keyword_snapshots` that holds the follow
state they match (`pg_keywords.FollowState`: the transactions applied) and their SHA-256. A replica without a
usable index of its own downloads the newest snapshot, checks the digest and the document count, puts the files in
place with the state written last, and then catches up from that state as after any pause: the rows and deletions
of the transactions it has not applied. PostgreSQL stays the one place anything is stored, shared by every replica
already; nothing else (a shared volume, an object store) needs to exist.

What a snapshot must never do is keep a deleted chunk's words after a purge. Tantivy only marks a deleted document
until its segment is merged, so a snapshot taken after deletions were applied (`unpurged`), or before deletions it
has not applied, holds their terms: `discard_holding_deleted` (run by every purge) drops those snapshots, and the
purge's vacuum then frees their bytes. A replica never publishes an index with unpurged deletions; it publishes
again after its purge rebuilt it. A snapshot older than the deletions' retention is never used, and is dropped.

Every snapshot byte is read as hostile: only plain files with plain names are extracted, into a new directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import asyncpg

logger = logging.getLogger(__name__)

SCHEMA = """
    CREATE TABLE rag_keyword_snapshots (
        id bigserial PRIMARY KEY, taken timestamptz NOT NULL DEFAULT now(), state jsonb NOT NULL,
        documents bigint NOT NULL, bytes bigint NOT NULL DEFAULT 0, sha256 text NOT NULL DEFAULT '');
    CREATE TABLE rag_keyword_snapshot_parts (
        snapshot bigint NOT NULL REFERENCES rag_keyword_snapshots (id) ON DELETE CASCADE, part int NOT NULL,
        data bytea NOT NULL, PRIMARY KEY (snapshot, part));
    -- Tantivy's files are compressed already: stored out of line as they are, not compressed a second time
    ALTER TABLE rag_keyword_snapshot_parts ALTER COLUMN data SET STORAGE EXTERNAL;
"""
TABLES = ["rag_keyword_snapshots", "rag_keyword_snapshot_parts"]

PUBLISH_LOCK = 0x52414704  # pg_try_advisory_lock key: one replica publishes at a time ("RAG" 4)
PART_BYTES = 8 << 20
# Tantivy's file names: hexadecimal segment ids with an extension, meta.json, .managed.json
_FILE_NAME = re.compile(r"^(\.managed\.json|meta\.json|[0-9a-f]{32}(\.[0-9]+)?\.[a-z]+)$")
_MAX_FILES = 100_000

# Snapshots that may hold a deleted chunk's terms: taken with deletions applied but not purged, or before a
# deletion they have not applied (at or after their watermark); and any too old to be caught up from.
_HOLDING_DELETED = """
    DELETE FROM rag_keyword_snapshots s
    WHERE (s.state->>'unpurged')::boolean
       OR s.taken < now() - make_interval(days => $1)
       OR EXISTS (SELECT 1 FROM rag_deleted_chunks d WHERE d.xid >= (s.state->>'xmin')::xid8)
"""


async def discard_holding_deleted(conn: asyncpg.Connection, usable_days: int) -> int:
    """Drop the snapshots that may hold a deleted chunk's terms, or are too old to use; returns how many."""
    status = await conn.execute(_HOLDING_DELETED, usable_days)
    return int(status.split()[-1])


async def _newest(conn: asyncpg.Connection) -> asyncpg.Record | None:
    """The newest snapshot's age (seconds) and the store generation it was taken at, or None when there is none."""
    return await conn.fetchrow(
        "SELECT extract(epoch FROM now() - taken) AS age, (state->>'generation')::bigint AS generation "
        "FROM rag_keyword_snapshots ORDER BY id DESC LIMIT 1"
    )


async def due(conn: asyncpg.Connection, every_seconds: float, generation: int) -> bool:
    """Whether a new snapshot is wanted: none yet, or the newest is older than `every_seconds` and writes have
    moved the store (its `generation`) past it."""
    newest = await _newest(conn)
    return newest is None or (float(newest["age"]) >= every_seconds and generation > int(newest["generation"]))


async def publish(pool: asyncpg.Pool, link: Callable[[Path], Awaitable[tuple[Any, int]]], scratch: Path) -> int | None:
    """Publish a snapshot: `link(directory)` hard-links the index's committed files into `directory` and returns
    (its follow state, its document count), or (None, 0) when it must not be published now. Returns the new
    snapshot's id, or None when another replica is publishing, or there was nothing newer to publish."""
    async with pool.acquire() as conn:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", PUBLISH_LOCK):
            return None
        try:
            with tempfile.TemporaryDirectory(prefix=".snapshot-", dir=scratch) as tmp:
                state, documents = await link(Path(tmp))
                newest = await _newest(conn)
                if state is None or (newest is not None and int(newest["generation"]) >= state.generation):
                    return None  # nothing to publish, or a snapshot as new as this one is there
                async with conn.transaction():
                    snapshot = int(
                        await conn.fetchval(
                            "INSERT INTO rag_keyword_snapshots (state, documents) VALUES ($1::jsonb, $2) RETURNING id",
                            json.dumps(asdict(state)),
                            documents,
                        )
                    )
                    size, digest = await anyio.to_thread.run_sync(_upload, conn, snapshot, Path(tmp))
                    await conn.execute(
                        "UPDATE rag_keyword_snapshots SET bytes = $2, sha256 = $3 WHERE id = $1", snapshot, size, digest
                    )
                    # one snapshot is enough: the newest; the older ones' bytes go at the next vacuum
                    await conn.execute("DELETE FROM rag_keyword_snapshots WHERE id < $1", snapshot)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", PUBLISH_LOCK)
    logger.info("keyword index snapshot %d published: %d documents, %d bytes", snapshot, documents, size)
    return snapshot


def _upload(conn: asyncpg.Connection, snapshot: int, directory: Path) -> tuple[int, str]:
    """In a worker thread: the directory's files as one tar stream, in parts; returns its size and SHA-256."""
    parts = _PartWriter(conn, snapshot)
    with tarfile.open(fileobj=parts, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(directory.iterdir()):
            tar.add(path, arcname=path.name, recursive=False)
    parts.flush()
    return parts.size, parts.digest.hexdigest()


class _PartWriter(io.RawIOBase):
    """A writable stream that stores what it is given as parts of one snapshot, PART_BYTES at a time."""

    def __init__(self, conn: asyncpg.Connection, snapshot: int) -> None:
        self._conn = conn
        self._snapshot = snapshot
        self._buffer = bytearray()
        self._parts = 0
        self.size = 0
        self.digest = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._buffer += view
        self.digest.update(view)
        self.size += len(view)
        if len(self._buffer) >= PART_BYTES:
            self.flush()
        return len(view)

    def flush(self) -> None:
        if not self._buffer:
            return
        anyio.from_thread.run(
            self._conn.execute,
            "INSERT INTO rag_keyword_snapshot_parts (snapshot, part, data) VALUES ($1, $2, $3)",
            self._snapshot,
            self._parts,
            bytes(self._buffer),
        )
        self._parts += 1
        self._buffer.clear()


def remove_leftovers(directory: Path, older_than_seconds: float = 3600.0) -> None:
    """Remove the scratch directories of publishes and restores that a crash interrupted (untouched for an hour:
    another process of the host may be using a newer one)."""
    for path in directory.iterdir():
        if path.name.startswith((".snapshot-", ".restore-")) and path.is_dir():
            with contextlib.suppress(OSError):
                if time.time() - path.stat().st_mtime > older_than_seconds:
                    shutil.rmtree(path)


async def fetch_newest(conn: asyncpg.Connection, target: Path) -> tuple[dict[str, Any], int] | None:
    """Download the newest snapshot into the empty directory `target` (inside `conn`'s REPEATABLE READ
    transaction, so that its parts are the ones its row describes); returns (its follow state, its document
    count), or None when there is none. Raises ValueError when its bytes are not what its row says."""
    row = await conn.fetchrow(
        "SELECT id, state, documents, bytes, sha256 FROM rag_keyword_snapshots ORDER BY id DESC LIMIT 1"
    )
    if row is None or not row["sha256"]:
        return None
    reader = _PartReader(conn, int(row["id"]))
    await anyio.to_thread.run_sync(_extract, reader, target)
    if reader.size != row["bytes"] or reader.digest.hexdigest() != row["sha256"]:
        raise ValueError(f"keyword snapshot {row['id']}: its parts do not match its digest")
    return json.loads(row["state"]), int(row["documents"])


def _extract(stream: io.RawIOBase, target: Path) -> None:
    """In a worker thread: the tar stream's plain files into `target`, by plain names only."""
    extracted = 0
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if not member.isfile() or not _FILE_NAME.match(member.name) or extracted >= _MAX_FILES:
                raise ValueError(f"keyword snapshot holds an unexpected entry: {member.name!r}")
            source = tar.extractfile(member)
            assert source is not None  # a regular file
            with open(target / member.name, "xb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())  # durable before the state that names them is written
            extracted += 1
    while stream.read(1 << 20):  # drain what follows the archive's end, so that the digest covers it
        pass


class _PartReader(io.RawIOBase):
    """A readable stream over one snapshot's parts, fetched one at a time in order."""

    def __init__(self, conn: asyncpg.Connection, snapshot: int) -> None:
        self._conn = conn
        self._snapshot = snapshot
        self._next = 0
        self._buffer = memoryview(b"")
        self.size = 0
        self.digest = hashlib.sha256()
        self._ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, out: Any) -> int:
        if not self._buffer and not self._ended:
            data = anyio.from_thread.run(
                self._conn.fetchval,
                "SELECT data FROM rag_keyword_snapshot_parts WHERE snapshot = $1 AND part = $2",
                self._snapshot,
                self._next,
            )
            if data is None:
                self._ended = True
            else:
                self._next += 1
                self.size += len(data)
                self.digest.update(data)
                self._buffer = memoryview(data)
        taken = min(len(out), len(self._buffer))
        out[:taken] = self._buffer[:taken]
        self._buffer = self._buffer[taken:]
        return taken

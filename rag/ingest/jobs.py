"""Ingestion jobs as rows in SQLite (`DATA_DIR/jobs.sqlite3`): what each job holds, where it stands, who owns it.

A job is a list of items (uploaded files, or documents of a large JSON add) whose bytes wait under
`DATA_DIR/uploads/<job id>/` until the job ends. A runner claims a queued job with a lease it renews at every
progress step; a job whose lease ran out (its process died) is claimed again, so a crash or a restart resumes it.
An item is marked done only after its document is committed to the vector store, and a resumed job skips done items:
what a job acknowledged stays acknowledged, and the rest is redone (an upsert by document id replaces, never
duplicates). Every change bumps the job's `version`, which is what the event stream watches.

Blocking calls: run them in a thread (the runner and the routes do).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rag.access import AccessList, Reader
from rag.ingest.parsers import FileKind
from rag.stores.base import AccessByDocument
from rag.types import Metadata

JobState = Literal["queued", "running", "done", "failed", "cancelled"]
ItemState = Literal["queued", "parsing", "embedding", "done", "failed", "cancelled"]
FINISHED: frozenset[str] = frozenset({"done", "failed", "cancelled"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, seq INTEGER NOT NULL, state TEXT NOT NULL, org_id TEXT, user_id TEXT,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, version INTEGER NOT NULL DEFAULT 0,
    owner TEXT, lease_until REAL, attempts INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, seq);
CREATE TABLE IF NOT EXISTS job_items (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE, n INTEGER NOT NULL, name TEXT NOT NULL,
    kind TEXT NOT NULL, media_type TEXT NOT NULL, size INTEGER NOT NULL, sha256 TEXT NOT NULL,
    document_id TEXT NOT NULL, metadata TEXT NOT NULL, state TEXT NOT NULL, chunks_done INTEGER NOT NULL DEFAULT 0,
    chunks_total INTEGER, error TEXT, interruptions INTEGER NOT NULL DEFAULT 0, access TEXT,
    PRIMARY KEY (job_id, n));
"""
# Stores made before items counted their interruptions gain the column (SQLite has no ADD COLUMN IF NOT EXISTS).
_MIGRATIONS = {
    "interruptions": "ALTER TABLE job_items ADD COLUMN interruptions INTEGER NOT NULL DEFAULT 0",
    # an item's access list as JSON ('null': the whole organisation); SQL NULL: none given, a replaced document
    # keeps its own
    "access": "ALTER TABLE job_items ADD COLUMN access TEXT",
}
# The reader a narrowed caller's job runs for (JSON {"user", "groups"}): it may not replace what it may not read.
_JOB_MIGRATIONS = {"reader": "ALTER TABLE jobs ADD COLUMN reader TEXT"}
_IN_PROGRESS = "('parsing', 'embedding')"


@dataclass(frozen=True, slots=True)
class NewItem:
    """An item as submitted: its bytes are already on disk at `JobStore.payload_path(job, n)`."""

    name: str
    kind: FileKind
    media_type: str
    size: int
    sha256: str
    document_id: str
    metadata: Metadata
    access: AccessByDocument = field(default_factory=dict)  # {document_id: list or None}, or {}: none given

    @property
    def access_json(self) -> str | None:
        if self.document_id not in self.access:
            return None
        listed = self.access[self.document_id]
        return json.dumps(None if listed is None else listed.as_dict())


@dataclass(frozen=True, slots=True, kw_only=True)
class JobItem(NewItem):
    """An item as stored: what was submitted, its place in the job, and how far it got."""

    n: int
    state: ItemState
    chunks_done: int
    chunks_total: int | None
    error: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.media_type,
            "size": self.size,
            "sha256": self.sha256,
            "document_id": self.document_id,
            "state": self.state,
            "chunks_done": self.chunks_done,
            "chunks_total": self.chunks_total,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    state: JobState
    org_id: str | None
    user_id: str | None
    reader: Reader | None
    created_at: float
    updated_at: float
    version: int
    attempts: int
    items: list[JobItem] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def visible_to(self, org_id: str | None, user_id: str | None) -> bool:
        """A credential bound to an organisation (and a user) sees that organisation's (and user's) jobs only; a
        trusted key, which may act for any tenant, sees every job."""
        return (org_id is None or org_id == self.org_id) and (user_id is None or user_id == self.user_id)

    def as_dict(self) -> dict[str, Any]:
        known = [i.chunks_total for i in self.items if i.chunks_total is not None]
        return {
            "id": self.id,
            "state": self.state,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "attempts": self.attempts,
            "files": [item.as_dict() for item in self.items],
            "chunks_done": sum(i.chunks_done for i in self.items),
            # Known once every item is parsed; until then the sum of those parsed so far is a floor, not a total.
            "chunks_total": sum(known) if len(known) == len(self.items) else None,
            "errors": [{"file": i.name, "message": i.error} for i in self.items if i.error],
        }


class JobStore:
    def __init__(self, path: Path, uploads_dir: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.uploads_dir = uploads_dir
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # an acknowledged submission survives a power cut
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA secure_delete=ON")  # deleted names are zeroed, not left in free pages (rag/purge.py)
        self._db.executescript(_SCHEMA)
        for table, migrations in (("job_items", _MIGRATIONS), ("jobs", _JOB_MIGRATIONS)):
            columns = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            for column, sql in migrations.items():
                if column not in columns:
                    self._db.execute(sql)

    def payload_path(self, job_id: str, n: int) -> Path:
        return self.uploads_dir / job_id / str(n)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (BEGIN IMMEDIATE: another process's runner waits, never deadlocks)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _write(self, sql_steps: list[tuple[str, tuple[Any, ...]]]) -> None:
        with self._transaction() as db:
            for sql, args in sql_steps:
                db.execute(sql, args)

    def create(
        self, job_id: str, items: list[NewItem], org_id: str | None, user_id: str | None, reader: Reader | None = None
    ) -> Job:
        now = time.time()
        reader_json = None if reader is None else json.dumps({"user": reader.user, "groups": sorted(reader.groups)})
        steps: list[tuple[str, tuple[Any, ...]]] = [
            (
                "INSERT INTO jobs (id, seq, state, org_id, user_id, reader, created_at, updated_at) "
                "VALUES (?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs), 'queued', ?, ?, ?, ?, ?)",
                (job_id, org_id, user_id, reader_json, now, now),
            )
        ]
        for n, item in enumerate(items):
            steps.append(
                (
                    "INSERT INTO job_items (job_id, n, name, kind, media_type, size, sha256, document_id, metadata, "
                    "access, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued')",
                    (
                        job_id,
                        n,
                        item.name,
                        item.kind,
                        item.media_type,
                        item.size,
                        item.sha256,
                        item.document_id,
                        json.dumps(item.metadata, ensure_ascii=False),
                        item.access_json,
                    ),
                )
            )
        self._write(steps)
        job = self.get(job_id)
        assert job is not None
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            items = self._db.execute("SELECT * FROM job_items WHERE job_id = ? ORDER BY n", (job_id,)).fetchall()
        return _job(row, items)

    def recent(self, org_id: str | None, user_id: str | None, limit: int) -> list[Job]:
        """The newest jobs a credential may see."""
        with self._lock:
            ids = [
                r[0]
                for r in self._db.execute(
                    "SELECT id FROM jobs WHERE (? IS NULL OR org_id = ?) AND (? IS NULL OR user_id = ?) "
                    "ORDER BY seq DESC LIMIT ?",
                    (org_id, org_id, user_id, user_id, limit),
                )
            ]
        return [job for job in map(self.get, ids) if job is not None]

    def claim(self, owner: str, lease_seconds: float, max_interruptions: int = 3) -> Job | None:
        """Take the oldest queued job, or a running one whose runner stopped renewing its lease.

        A lapsed lease means the service stopped (a crash, a kill, the OOM killer) while the items it was working
        on were in progress: each such interruption is counted, and an item interrupted `max_interruptions` times
        is failed instead of taken up again. A poison file ends its job's tries; it never makes the service
        crash-loop. (A graceful shutdown hands its job back with `release` and counts nothing.)"""
        now = time.time()
        with self._transaction() as db:
            row = db.execute(
                "SELECT id, state FROM jobs WHERE state = 'queued' OR (state = 'running' AND lease_until < ?) "
                "ORDER BY seq LIMIT 1",
                (now,),
            ).fetchone()
            if row is not None and row["state"] == "running":
                db.execute(
                    f"UPDATE job_items SET interruptions = interruptions + 1 "
                    f"WHERE job_id = ? AND state IN {_IN_PROGRESS}",
                    (row[0],),
                )
                db.execute(
                    f"UPDATE job_items SET state = 'failed', error = ? "
                    f"WHERE job_id = ? AND state IN {_IN_PROGRESS} AND interruptions >= ?",
                    (poison_message(max_interruptions), row[0], max_interruptions),
                )
            if row is not None:
                db.execute(
                    "UPDATE jobs SET state = 'running', owner = ?, lease_until = ?, attempts = attempts + 1, "
                    "updated_at = ?, version = version + 1 WHERE id = ?",
                    (owner, now + lease_seconds, now, row[0]),
                )
        return None if row is None else self.get(row[0])

    def update_item(self, job_id: str, n: int, owner: str, lease_seconds: float, **changes: str | int | None) -> bool:
        """Record an item's progress and renew the lease. False when the job is no longer this runner's: it was
        cancelled, or its lease lapsed and another runner took it over."""
        now = time.time()
        columns = ", ".join(f"{name} = ?" for name in changes)
        with self._transaction() as db:
            held = db.execute(
                "UPDATE jobs SET lease_until = ?, updated_at = ?, version = version + 1 "
                "WHERE id = ? AND owner = ? AND state = 'running'",
                (now + lease_seconds, now, job_id, owner),
            ).rowcount
            if held and changes:
                db.execute(f"UPDATE job_items SET {columns} WHERE job_id = ? AND n = ?", (*changes.values(), job_id, n))
        return held == 1

    def mark_item(self, job_id: str, n: int, **changes: str | int | None) -> None:
        """Record an item's state whoever holds the job: its document is committed, so it is done regardless."""
        columns = ", ".join(f"{name} = ?" for name in changes)
        self._write(
            [
                (f"UPDATE job_items SET {columns} WHERE job_id = ? AND n = ?", (*changes.values(), job_id, n)),
                ("UPDATE jobs SET version = version + 1, updated_at = ? WHERE id = ?", (time.time(), job_id)),
            ]
        )

    def finish(self, job_id: str, owner: str) -> Job | None:
        """End a running job: done when every item is, failed when any failed."""
        self._write(
            [
                (
                    "UPDATE jobs SET state = CASE WHEN EXISTS (SELECT 1 FROM job_items WHERE job_id = jobs.id AND "
                    "state = 'failed') THEN 'failed' ELSE 'done' END, owner = NULL, lease_until = NULL, "
                    "updated_at = ?, version = version + 1 WHERE id = ? AND owner = ? AND state = 'running'",
                    (time.time(), job_id, owner),
                )
            ]
        )
        return self.get(job_id)

    def release(self, job_id: str, owner: str) -> None:
        """Hand a running job back to the queue (the service is shutting down): the next start resumes it."""
        self._write(
            [
                (
                    "UPDATE jobs SET state = 'queued', owner = NULL, lease_until = NULL, version = version + 1, "
                    "updated_at = ? WHERE id = ? AND owner = ? AND state = 'running'",
                    (time.time(), job_id, owner),
                ),
                (f"UPDATE job_items SET state = 'queued' WHERE job_id = ? AND state IN {_IN_PROGRESS}", (job_id,)),
            ]
        )

    def cancel(self, job_id: str) -> Job | None:
        """Stop a job that has not finished; items already done stay stored."""
        now = time.time()
        self._write(
            [
                (
                    "UPDATE job_items SET state = 'cancelled' WHERE job_id = ? AND state NOT IN ('done', 'failed') "
                    "AND (SELECT state FROM jobs WHERE id = ?) IN ('queued', 'running')",
                    (job_id, job_id),
                ),
                (
                    "UPDATE jobs SET state = 'cancelled', owner = NULL, lease_until = NULL, updated_at = ?, "
                    "version = version + 1 WHERE id = ? AND state IN ('queued', 'running')",
                    (now, job_id),
                ),
            ]
        )
        return self.get(job_id)

    def finished_before(self, cutoff: float) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM jobs WHERE state IN ('done', 'failed', 'cancelled') AND updated_at < ?", (cutoff,)
            ).fetchall()
        return [r[0] for r in rows]

    def forget(self, job_ids: list[str]) -> None:
        self._write([("DELETE FROM jobs WHERE id = ?", (job_id,)) for job_id in job_ids])


def poison_message(times: int) -> str:
    return (
        f"the service stopped {times} times while processing this file (a crash, a kill or running out of "
        "memory); it is not tried again"
    )


def _reader_fields(stored: dict[str, Any]) -> dict[str, Any]:
    return {"user": stored["user"], "groups": frozenset(stored["groups"])}


def _item_access(document_id: str, stored: str | None) -> AccessByDocument:
    if stored is None:
        return {}
    return {document_id: AccessList.parse(json.loads(stored))}


def _job(row: sqlite3.Row, items: list[sqlite3.Row]) -> Job:
    return Job(
        id=row["id"],
        state=row["state"],
        org_id=row["org_id"],
        user_id=row["user_id"],
        reader=None if row["reader"] is None else Reader(**_reader_fields(json.loads(row["reader"]))),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        version=row["version"],
        attempts=row["attempts"],
        items=[
            JobItem(
                n=i["n"],
                name=i["name"],
                kind=i["kind"],
                media_type=i["media_type"],
                size=i["size"],
                sha256=i["sha256"],
                document_id=i["document_id"],
                metadata=json.loads(i["metadata"]),
                access=_item_access(i["document_id"], i["access"]),
                state=i["state"],
                chunks_done=i["chunks_done"],
                chunks_total=i["chunks_total"],
                error=i["error"],
            )
            for i in items
        ],
    )

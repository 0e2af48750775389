"""The registry of web sources: what each is, where its sync stands, which pages it holds, what is left to fetch.

    rag_sources        one row per source: its URL and limits, who registered it (organisation, user, access list),
                       its schedule, the lease of the replica syncing it, and its current or last sync's counts
    rag_source_pages   per source, each page it holds: the document it became, the validators (ETag,
                       Last-Modified) and content hash that make a re-sync cost what changed, its links, and the
                       sync that last saw it (pages no sync saw are gone from the site)
    rag_source_queue   the running sync's frontier: each URL found, its depth, and whether it was done (a sync
                       killed midway goes on from here)

It lives beside the stores: `sources.sqlite3` in DATA_DIR, or tables in the PostgreSQL database the replicas share,
so every replica sees one schedule; a source is synced by the replica holding its lease.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from config import Settings
from rag.access import AccessList
from rag.database import Database, open_database

SyncState = Literal["queued", "running", "done", "failed"]
SCHEMA = [
    """CREATE TABLE IF NOT EXISTS rag_sources (
        id text PRIMARY KEY, org_id text, user_id text, url text NOT NULL, max_pages integer NOT NULL,
        max_depth integer NOT NULL, interval_seconds double precision NOT NULL, access text,
        created_at double precision NOT NULL, next_sync_at double precision NOT NULL, owner text,
        lease_until double precision, sync_no bigint NOT NULL DEFAULT 0, sync_state text NOT NULL,
        sync_started_at double precision, sync_finished_at double precision, fetched bigint NOT NULL DEFAULT 0,
        unchanged bigint NOT NULL DEFAULT 0, added bigint NOT NULL DEFAULT 0, replaced bigint NOT NULL DEFAULT 0,
        deleted bigint NOT NULL DEFAULT 0, failed bigint NOT NULL DEFAULT 0, error text)""",
    """CREATE TABLE IF NOT EXISTS rag_source_pages (
        source_id text NOT NULL, url text NOT NULL, document_id text NOT NULL, etag text, last_modified text,
        sha256 text NOT NULL, links text NOT NULL, title text, seen_in bigint NOT NULL,
        PRIMARY KEY (source_id, url))""",
    """CREATE TABLE IF NOT EXISTS rag_source_queue (
        source_id text NOT NULL, url text NOT NULL, n bigint NOT NULL, depth integer NOT NULL,
        state text NOT NULL, error text, PRIMARY KEY (source_id, url))""",
]
_COLUMNS = (
    "id, org_id, user_id, url, max_pages, max_depth, interval_seconds, access, created_at, next_sync_at, "
    "sync_no, sync_state, sync_started_at, sync_finished_at, fetched, unchanged, added, replaced, deleted, failed, "
    "error"
)
COUNTS = ("fetched", "unchanged", "added", "replaced", "deleted", "failed")


@dataclass(frozen=True, slots=True)
class Source:
    id: str
    org_id: str | None
    user_id: str | None
    url: str
    max_pages: int
    max_depth: int
    interval_seconds: float
    access: AccessList | None  # the pages' access list (None: the whole organisation)
    created_at: float
    next_sync_at: float
    sync_no: int = 0
    sync_state: SyncState = "queued"
    sync_started_at: float | None = None
    sync_finished_at: float | None = None
    fetched: int = 0
    unchanged: int = 0
    added: int = 0
    replaced: int = 0
    deleted: int = 0
    failed: int = 0
    error: str | None = None

    def as_dict(self, failures: list[dict[str, str]] | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "max_pages": self.max_pages,
            "max_depth": self.max_depth,
            "interval_seconds": self.interval_seconds,
            "access": None if self.access is None else self.access.as_dict(),
            "created_at": self.created_at,
            "next_sync_at": self.next_sync_at,
            "sync": {
                "number": self.sync_no,
                "state": self.sync_state,
                "started_at": self.sync_started_at,
                "finished_at": self.sync_finished_at,
                "pages": {name: getattr(self, name) for name in COUNTS},
                "error": self.error,
                **({"failures": failures} if failures is not None else {}),
            },
        }


@dataclass(frozen=True, slots=True)
class Page:
    url: str
    document_id: str
    etag: str | None
    last_modified: str | None
    sha256: str
    links: list[str]
    title: str | None


def _source(row: tuple[Any, ...]) -> Source:
    values = list(row)
    values[7] = None if values[7] is None else AccessList.parse(json.loads(values[7]))
    return Source(*values)


class SourceRegistry:
    def __init__(self, db: Database) -> None:
        self.db = db

    @classmethod
    async def open(cls, settings: Settings) -> SourceRegistry:
        """The registry beside the configured store: in the PostgreSQL database the replicas share, else
        `sources.sqlite3` in DATA_DIR."""
        return cls(await open_database(settings, "sources.sqlite3", SCHEMA))

    async def aclose(self) -> None:
        await self.db.aclose()

    # --- sources ------------------------------------------------------------------------------------

    async def add(
        self,
        url: str,
        org_id: str | None,
        user_id: str | None,
        max_pages: int,
        max_depth: int,
        interval_seconds: float,
        access: AccessList | None,
    ) -> Source:
        now = time.time()
        source = Source(
            uuid.uuid4().hex[:16], org_id, user_id, url, max_pages, max_depth, interval_seconds, access, now, now
        )
        await self.db.execute(
            "INSERT INTO rag_sources (id, org_id, user_id, url, max_pages, max_depth, interval_seconds, access, "
            "created_at, next_sync_at, sync_state) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'queued')",
            source.id,
            org_id,
            user_id,
            url,
            max_pages,
            max_depth,
            interval_seconds,
            None if access is None else json.dumps(access.as_dict()),
            now,
            now,
        )
        return source

    async def get(self, source_id: str) -> Source | None:
        rows = await self.db.fetch(f"SELECT {_COLUMNS} FROM rag_sources WHERE id = $1", source_id)
        return _source(rows[0]) if rows else None

    async def of_org(self, org_id: str | None) -> list[Source]:
        sql = f"SELECT {_COLUMNS} FROM rag_sources WHERE org_id {'IS NULL' if org_id is None else '= $1'}"
        rows = await self.db.fetch(f"{sql} ORDER BY created_at", *(() if org_id is None else (org_id,)))
        return [_source(row) for row in rows]

    async def failures(self, source_id: str, limit: int = 50) -> list[dict[str, str]]:
        rows = await self.db.fetch(
            "SELECT url, error FROM rag_source_queue WHERE source_id = $1 AND state = 'failed' ORDER BY n LIMIT $2",
            source_id,
            limit,
        )
        return [{"url": url, "error": error} for url, error in rows]

    async def failure_of(self, source_id: str, url: str) -> str | None:
        """Why `url` failed in the running sync (None: it did not)."""
        rows = await self.db.fetch(
            "SELECT error FROM rag_source_queue WHERE source_id = $1 AND url = $2 AND state = 'failed'", source_id, url
        )
        return rows[0][0] if rows else None

    async def request_sync(self, source_id: str) -> None:
        """Sync it as soon as a replica is free (a running sync goes on; a new one follows it when it is due)."""
        await self.db.execute("UPDATE rag_sources SET next_sync_at = 0 WHERE id = $1", source_id)

    async def remove(self, source_id: str) -> list[str]:
        """Forget the source; the ids of the documents its pages became (for the caller to delete)."""
        async with self.db.transaction() as tx:
            rows = await tx.fetch("SELECT document_id FROM rag_source_pages WHERE source_id = $1", source_id)
            for table in ("rag_source_queue", "rag_source_pages"):
                await tx.execute(f"DELETE FROM {table} WHERE source_id = $1", source_id)
            await tx.execute("DELETE FROM rag_sources WHERE id = $1", source_id)
        return [row[0] for row in rows]

    # --- the schedule -----------------------------------------------------------------------------

    async def claim(self, owner: str, lease_seconds: float) -> Source | None:
        """The next source due (or whose syncing replica's lease ran out), now leased to `owner`."""
        now = time.time()
        rows = await self.db.fetch(
            "SELECT id FROM rag_sources WHERE (next_sync_at <= $1 OR sync_state = 'running') "
            "AND (lease_until IS NULL OR lease_until < $1) ORDER BY next_sync_at LIMIT 5",
            now,
        )
        for (source_id,) in rows:
            claimed = await self.db.fetch(
                "UPDATE rag_sources SET owner = $1, lease_until = $2 WHERE id = $3 "
                "AND (lease_until IS NULL OR lease_until < $4) RETURNING id",
                owner,
                now + lease_seconds,
                source_id,
                now,
            )
            if claimed:
                return await self.get(source_id)
        return None

    async def renew(self, source_id: str, owner: str, lease_seconds: float) -> bool:
        """Hold the lease on; False when it was lost (the source removed, or another replica took it over)."""
        rows = await self.db.fetch(
            "UPDATE rag_sources SET lease_until = $1 WHERE id = $2 AND owner = $3 RETURNING id",
            time.time() + lease_seconds,
            source_id,
            owner,
        )
        return bool(rows)

    async def release(self, source_id: str, owner: str) -> None:
        await self.db.execute(
            "UPDATE rag_sources SET owner = NULL, lease_until = NULL WHERE id = $1 AND owner = $2", source_id, owner
        )

    # --- one sync ---------------------------------------------------------------------------------

    async def begin(self, source: Source) -> int:
        """Start a new sync of `source` (its frontier: the source's URL), or go on with the one a killed replica
        left running; its number."""
        if source.sync_state == "running":
            return source.sync_no
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM rag_source_queue WHERE source_id = $1", source.id)
            await tx.execute(
                "INSERT INTO rag_source_queue (source_id, url, n, depth, state) VALUES ($1, $2, 0, 0, 'pending')",
                source.id,
                source.url,
            )
            await tx.execute(
                "UPDATE rag_sources SET sync_no = sync_no + 1, sync_state = 'running', sync_started_at = $1, "
                "sync_finished_at = NULL, fetched = 0, unchanged = 0, added = 0, replaced = 0, deleted = 0, "
                "failed = 0, error = NULL WHERE id = $2",
                time.time(),
                source.id,
            )
        return source.sync_no + 1

    async def pending(self, source_id: str, limit: int = 16) -> list[tuple[str, int]]:
        rows = await self.db.fetch(
            "SELECT url, depth FROM rag_source_queue WHERE source_id = $1 AND state = 'pending' ORDER BY n LIMIT $2",
            source_id,
            limit,
        )
        return [(url, int(depth)) for url, depth in rows]

    async def enqueue(self, source_id: str, urls: list[str], depth: int, max_pages: int) -> None:
        """Add URLs not yet found in this sync, while the frontier holds fewer than `max_pages`."""
        async with self.db.transaction() as tx:
            rows = await tx.fetch("SELECT count(*), max(n) FROM rag_source_queue WHERE source_id = $1", source_id)
            count, last = int(rows[0][0]), int(rows[0][1] or 0)
            for url in urls:
                if count >= max_pages:
                    break
                added = await tx.fetch(
                    "INSERT INTO rag_source_queue (source_id, url, n, depth, state) VALUES ($1, $2, $3, $4, "
                    "'pending') ON CONFLICT (source_id, url) DO NOTHING RETURNING n",
                    source_id,
                    url,
                    last + 1,
                    depth,
                )
                if added:
                    count, last = count + 1, last + 1

    async def done(self, source_id: str, url: str, counts: tuple[str, ...], error: str | None = None) -> None:
        """One URL of the frontier dealt with, adding one to each of `counts` (of COUNTS)."""
        async with self.db.transaction() as tx:
            await tx.execute(
                "UPDATE rag_source_queue SET state = $1, error = $2 WHERE source_id = $3 AND url = $4",
                "failed" if error else "done",
                error,
                source_id,
                url,
            )
            if counts:
                assert set(counts) <= set(COUNTS)
                added = ", ".join(f"{name} = {name} + 1" for name in counts)
                await tx.execute(f"UPDATE rag_sources SET {added} WHERE id = $1", source_id)

    async def finish(self, source: Source, error: str | None, deleted: int) -> None:
        now = time.time()
        await self.db.execute(
            "UPDATE rag_sources SET sync_state = $1, sync_finished_at = $2, next_sync_at = $3, error = $4, "
            "deleted = deleted + $5 WHERE id = $6",
            "failed" if error else "done",
            now,
            now + source.interval_seconds,
            error,
            deleted,
            source.id,
        )

    # --- pages ------------------------------------------------------------------------------------

    async def page(self, source_id: str, url: str) -> Page | None:
        rows = await self.db.fetch(
            "SELECT url, document_id, etag, last_modified, sha256, links, title FROM rag_source_pages "
            "WHERE source_id = $1 AND url = $2",
            source_id,
            url,
        )
        if not rows:
            return None
        url, document_id, etag, last_modified, sha256, links, title = rows[0]
        return Page(url, document_id, etag, last_modified, sha256, json.loads(links), title)

    async def keep(self, source_id: str, page: Page, sync_no: int) -> bool:
        """Record `page` as seen in sync `sync_no`; False when the source was removed meanwhile."""
        async with self.db.transaction() as tx:
            if not await tx.fetch("SELECT 1 FROM rag_sources WHERE id = $1", source_id):
                return False
            await tx.execute(
                "INSERT INTO rag_source_pages (source_id, url, document_id, etag, last_modified, sha256, links, "
                "title, seen_in) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (source_id, url) DO UPDATE "
                "SET document_id = excluded.document_id, etag = excluded.etag, last_modified = excluded.last_modified, "
                "sha256 = excluded.sha256, links = excluded.links, title = excluded.title, seen_in = excluded.seen_in",
                source_id,
                page.url,
                page.document_id,
                page.etag,
                page.last_modified,
                page.sha256,
                json.dumps(page.links),
                page.title,
                sync_no,
            )
        return True

    async def seen(self, source_id: str, url: str, sync_no: int) -> None:
        """An unchanged page, or one that failed this time: kept, as seen in this sync."""
        await self.db.execute(
            "UPDATE rag_source_pages SET seen_in = $1 WHERE source_id = $2 AND url = $3", sync_no, source_id, url
        )

    async def unseen(self, source_id: str, sync_no: int) -> list[tuple[str, str]]:
        """The pages this sync did not see (gone from the site): (url, document id)."""
        rows = await self.db.fetch(
            "SELECT url, document_id FROM rag_source_pages WHERE source_id = $1 AND seen_in < $2", source_id, sync_no
        )
        return [(url, document_id) for url, document_id in rows]

    async def forget(self, source_id: str, urls: list[str]) -> None:
        await self.db.executemany(
            "DELETE FROM rag_source_pages WHERE source_id = $1 AND url = $2", [(source_id, url) for url in urls]
        )

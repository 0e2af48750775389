"""The registry of embedding spaces: which exist, which one serves, how far each follower is, what was asked of it.

    rag_spaces         one row per space: its name, embedder (settings that build it), model and dimension, state,
                       a pending request ('activate' or 'drop'), progress, and the last error
    rag_space_ledger   per follower space, each document it holds as of which state of the active space: the
                       document's seq there and its access list (what `sync.py` compares to find what changed)

States: `building` (its first pass over the active space is under way), `ready` (caught up; it follows the active
space), `active` (the one every replica serves and writes), `retired` (switched away from; it follows the active space
still, so a switch back is one step, until it is dropped). The registry lives beside the stores: `spaces.sqlite3` in
DATA_DIR, or tables in the PostgreSQL database the replicas share.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from config import Settings
from rag.database import Database, open_database

DEFAULT_SPACE = "default"  # the name the service's first store is registered under
SpaceState = Literal["building", "ready", "active", "retired"]
Request = Literal["activate", "drop"]
DocumentState = tuple[int, str | None]  # a document's seq in the active space, and its access list as stored there

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS rag_spaces (
        name text PRIMARY KEY, embedder text NOT NULL, model text NOT NULL, dimension integer NOT NULL,
        state text NOT NULL, requested text, created_at double precision NOT NULL,
        updated_at double precision NOT NULL, documents_total bigint NOT NULL DEFAULT 0,
        documents_done bigint NOT NULL DEFAULT 0, chunks_embedded bigint NOT NULL DEFAULT 0, error text)""",
    """CREATE TABLE IF NOT EXISTS rag_space_ledger (
        space text NOT NULL, document_id text NOT NULL, seq bigint NOT NULL, access text,
        PRIMARY KEY (space, document_id))""",
]
_COLUMNS = (
    "name, embedder, model, dimension, state, requested, created_at, updated_at, documents_total, "
    "documents_done, chunks_embedded, error"
)


@dataclass(frozen=True, slots=True)
class Space:
    name: str
    embedder: dict[str, Any]  # settings (EMBEDDER, EMBEDDING_MODEL, ...) over the service's, to build its embedder
    model: str
    dimension: int
    state: SpaceState
    requested: Request | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    documents_total: int = 0
    documents_done: int = 0
    chunks_embedded: int = 0
    error: str | None = None

    @property
    def store_name(self) -> str | None:
        """The name its store goes by (`rag.stores.space_location`): None for the first store, where it always was."""
        return None if self.name == DEFAULT_SPACE else self.name

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "embedder": self.embedder,
            "embedding_model": self.model,
            "dimension": self.dimension,
            "state": self.state,
            "requested": self.requested,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "progress": {
                "documents_total": self.documents_total,
                "documents_done": self.documents_done,
                "chunks_embedded": self.chunks_embedded,
            },
            "error": self.error,
        }


def _space(row: tuple[Any, ...]) -> Space:
    name, embedder, model, dimension, state, requested, created, updated, total, done, chunks, error = row
    return Space(
        name,
        json.loads(embedder),
        model,
        int(dimension),
        state,
        requested,
        created,
        updated,
        total,
        done,
        chunks,
        error,
    )


class SpaceRegistry:
    def __init__(self, db: Database) -> None:
        self.db = db

    @classmethod
    async def open(cls, settings: Settings) -> SpaceRegistry:
        """The registry beside the configured store: in the PostgreSQL database the replicas share, else
        `spaces.sqlite3` in DATA_DIR."""
        return cls(await open_database(settings, "spaces.sqlite3", SCHEMA))

    async def spaces(self) -> list[Space]:
        rows = await self.db.fetch(f"SELECT {_COLUMNS} FROM rag_spaces ORDER BY created_at")
        return [_space(row) for row in rows]

    async def get(self, name: str) -> Space | None:
        rows = await self.db.fetch(f"SELECT {_COLUMNS} FROM rag_spaces WHERE name = $1", name)
        return _space(rows[0]) if rows else None

    async def active(self) -> Space | None:
        """The active space; None while the registry is empty (the service's first store serves, as ever)."""
        rows = await self.db.fetch(f"SELECT {_COLUMNS} FROM rag_spaces WHERE state = 'active'")
        return _space(rows[0]) if rows else None

    async def add(self, space: Space, first: Space) -> bool:
        """Register a new space (building); `first`, the space serving now, is registered as active if the registry
        was empty. False when a space of that name exists."""
        async with self.db.transaction() as tx:
            if await tx.fetch("SELECT 1 FROM rag_spaces WHERE name = $1", space.name):
                return False
            for each in (first, space) if not await tx.fetch("SELECT 1 FROM rag_spaces") else (space,):
                await tx.execute(
                    f"INSERT INTO rag_spaces ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                    each.name,
                    json.dumps(each.embedder),
                    each.model,
                    each.dimension,
                    each.state,
                    None,
                    each.created_at,
                    each.updated_at,
                    0,
                    0,
                    0,
                    None,
                )
        return True

    async def request(self, name: str, action: Request | None) -> None:
        await self.db.execute("UPDATE rag_spaces SET requested = $2 WHERE name = $1", name, action)

    async def report(
        self, name: str, total: int, done: int, embedded: int, state: SpaceState | None = None, error: str | None = None
    ) -> None:
        """A follower's progress: documents of the active space, of those how many it holds as they are there, the
        chunks it embedded so far; `state` moves it (building -> ready)."""
        await self.db.execute(
            "UPDATE rag_spaces SET documents_total = $2, documents_done = $3, chunks_embedded = $4, "
            "state = coalesce($5, state), error = $6, updated_at = $7 WHERE name = $1",
            name,
            total,
            done,
            embedded,
            state,
            error,
            time.time(),
        )

    async def ledger(self, name: str) -> dict[str, DocumentState]:
        rows = await self.db.fetch("SELECT document_id, seq, access FROM rag_space_ledger WHERE space = $1", name)
        return {doc: (int(seq), access) for doc, seq, access in rows}

    async def record(self, name: str, held: dict[str, DocumentState], gone: Iterable[str] = ()) -> None:
        """Note documents the follower now holds as they are in the active space, and those it no longer holds."""
        async with self.db.transaction() as tx:
            await tx.executemany(
                "DELETE FROM rag_space_ledger WHERE space = $1 AND document_id = $2", [(name, doc) for doc in gone]
            )
            await tx.executemany(
                "INSERT INTO rag_space_ledger (space, document_id, seq, access) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (space, document_id) DO UPDATE SET seq = excluded.seq, access = excluded.access",
                [(name, doc, seq, access) for doc, (seq, access) in held.items()],
            )

    async def switch(self, to: str, away: str, ledgers: dict[str, dict[str, DocumentState]]) -> None:
        """In one transaction: `to` becomes the active space, `away` a retired one, and each follower's ledger is
        replaced by the one given (stated against the new active space)."""
        async with self.db.transaction() as tx:
            await tx.execute(
                "UPDATE rag_spaces SET state = 'retired', updated_at = $2 WHERE name = $1", away, time.time()
            )
            await tx.execute(
                "UPDATE rag_spaces SET state = 'active', requested = NULL, error = NULL, updated_at = $2 "
                "WHERE name = $1",
                to,
                time.time(),
            )
            await tx.execute("DELETE FROM rag_space_ledger WHERE space = $1", to)
            for name, ledger in ledgers.items():
                await tx.execute("DELETE FROM rag_space_ledger WHERE space = $1", name)
                await tx.executemany(
                    "INSERT INTO rag_space_ledger (space, document_id, seq, access) VALUES ($1, $2, $3, $4)",
                    [(name, doc, seq, access) for doc, (seq, access) in ledger.items()],
                )

    async def remove(self, name: str) -> None:
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM rag_space_ledger WHERE space = $1", name)
            await tx.execute("DELETE FROM rag_spaces WHERE name = $1 AND state <> 'active'", name)

    async def aclose(self) -> None:
        await self.db.aclose()

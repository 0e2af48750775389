"""Reading the embedded store back whole, for an export: documents with their chunks, vectors and access lists.

One consistent state for the whole read: under the store's write lock (shared: searches still pass, writers wait a
moment) a read transaction begins on a catalog connection of its own and the snapshot of that same generation is
taken. The lock is then let go; the transaction keeps the catalog's rows as they were, and the snapshot's memory maps
keep its segments readable even if a compaction removes their files meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import anyio
import numpy as np

from rag.access import AccessList
from rag.stores.base import StoredDocument
from rag.stores.catalog import DOCUMENT_TENANT
from rag.stores.snapshot import Snapshot
from rag.types import Chunk

if TYPE_CHECKING:
    from rag.stores.numpy_store import NumpyVectorStore

PAGE_DOCUMENTS = 500  # documents per catalog query (SQLite's bound parameters stay far below its limit)


def vectors_of(snapshot: Snapshot, rows: np.ndarray, dimension: int) -> np.ndarray:
    """The vectors of snapshot rows (in the given order), gathered from their segments."""
    out = np.empty((rows.shape[0], dimension), dtype=np.float32)
    segment_of = np.searchsorted(snapshot.offsets, rows, side="right") - 1
    for s in np.unique(segment_of).tolist():
        picked = np.flatnonzero(segment_of == s)
        out[picked] = snapshot.segments[s].vectors[rows[picked] - snapshot.offsets[s]]
    return out


# (id, insertion order, added by, access list)
_Row = tuple[str, int, str | None, AccessList | None]


def _select(conn: sqlite3.Connection, condition: str, params: list[object]) -> list[_Row]:
    rows = conn.execute(
        "SELECT d.id, d.seq, a.user_id, l.users, l.groups FROM documents d "
        "LEFT JOIN access_lists l ON l.document_id = d.id LEFT JOIN document_adders a ON a.document_id = d.id "
        f"WHERE {condition} ORDER BY d.seq LIMIT {PAGE_DOCUMENTS}",
        params,
    )
    return [
        (doc_id, seq, adder, None if users is None else AccessList(tuple(json.loads(users)), tuple(json.loads(groups))))
        for doc_id, seq, adder, users, groups in rows
    ]


def _document_pages(
    conn: sqlite3.Connection, org_id: str | None, document_ids: list[str] | None
) -> Iterator[list[_Row]]:
    """The chosen documents a page at a time: all of them (or an organisation's) in insertion order, or those of
    `document_ids` that exist."""
    if document_ids is not None:
        ids = sorted(set(document_ids))
        for start in range(0, len(ids), PAGE_DOCUMENTS):
            part = ids[start : start + PAGE_DOCUMENTS]
            if page := _select(conn, f"d.id IN ({','.join('?' * len(part))})", list(part)):
                yield page
        return
    condition, params = (f"{DOCUMENT_TENANT} = ? AND ", [org_id]) if org_id is not None else ("", [])
    after = -1
    while page := _select(conn, f"{condition}d.seq > ?", [*params, after]):
        yield page
        after = page[-1][1]


def _chunks(conn: sqlite3.Connection, document_ids: list[str]) -> dict[str, tuple[list[int], list[Chunk]]]:
    """Each document's chunk keys and chunks, in the order they were stored."""
    found: dict[str, tuple[list[int], list[Chunk]]] = {doc: ([], []) for doc in document_ids}
    rows = conn.execute(
        "SELECT key, id, document_id, text, metadata FROM chunks "
        f"WHERE document_id IN ({','.join('?' * len(document_ids))}) ORDER BY key",
        document_ids,
    )
    for key, chunk_id, doc_id, text, metadata in rows:
        keys, chunks = found[doc_id]
        keys.append(key)
        chunks.append(Chunk(chunk_id, doc_id, text, json.loads(metadata)))
    return found


class StoreReading:
    """One consistent read of the store (see the module's docstring); `close` ends it."""

    def __init__(self, store: NumpyVectorStore) -> None:
        self.dimension = store.dimension
        self._conn = sqlite3.connect(store.catalog.path, isolation_level=None, check_same_thread=False, timeout=30)
        try:
            with store.shared_write_lock():
                self._conn.execute("BEGIN")
                (generation,) = self._conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
                self.snapshot = store.current_snapshot()
            if self.snapshot.generation != int(generation):
                raise RuntimeError("the store's snapshot and its catalog disagree")  # cannot happen under the lock
        except BaseException:
            self._conn.close()
            raise

    def batches(
        self, org_id: str | None, document_ids: list[str] | None, batch_chunks: int
    ) -> Iterator[list[StoredDocument]]:
        batch: list[StoredDocument] = []
        size = 0
        for page in _document_pages(self._conn, org_id, document_ids):
            chunks_of = _chunks(self._conn, [row[0] for row in page])
            keys = np.fromiter((key for row in page for key in chunks_of[row[0]][0]), dtype=np.int64)
            rows = self.snapshot.rows_of_keys(keys)
            if rows.shape[0] and int(rows.min()) < 0:
                raise RuntimeError("a chunk of the catalog has no vector in the snapshot")
            vectors = vectors_of(self.snapshot, rows, self.dimension)
            first = 0
            for doc_id, _, adder, access in page:
                chunks = chunks_of[doc_id][1]
                batch.append(StoredDocument(doc_id, chunks, vectors[first : first + len(chunks)], access, adder))
                first += len(chunks)
                size += len(chunks)
                if size >= batch_chunks:
                    yield batch
                    batch, size = [], 0
        if batch:
            yield batch

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("COMMIT")
        self._conn.close()


async def exported(
    store: NumpyVectorStore, org_id: str | None, document_ids: list[str] | None, batch_chunks: int
) -> AsyncIterator[list[StoredDocument]]:
    """`NumpyVectorStore.export_documents`: the reading's batches, each read in a worker thread."""
    reading = await anyio.to_thread.run_sync(StoreReading, store)
    try:
        batches = reading.batches(org_id, document_ids, batch_chunks)
        done: list[StoredDocument] = []
        while batch := await anyio.to_thread.run_sync(next, batches, done):
            yield batch
    finally:
        await anyio.to_thread.run_sync(reading.close)

"""The embedded store's catalog: one SQLite database that is the store's commit point.

It holds everything but the vectors: chunk texts and metadata (so they do not live in RAM as Python objects),
documents in insertion order, the list of vector segments on disk, tombstones (chunks deleted or replaced whose
vector rows are still in a segment until compaction drops them), and counters. The keyword leg's index is derived
from it (`keyword_index.py`).

Every change is one transaction, so an add (its segment row, its chunks, the tombstones of the chunks it replaces)
is committed whole or not at all. WAL mode lets searches read while a writer commits; `synchronous=FULL` makes a
commit durable when it returns, which is when the service acknowledges.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rag.access import AccessList, Reader
from rag.errors import StoreIncompatible
from rag.stores import access_catalog
from rag.stores.base import check_embedding
from rag.types import TENANT_KEY, Chunk, DocumentSummary

SCHEMA_VERSION = 2  # 1 was the whole-store generations of manifest.json

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY AUTOINCREMENT, file TEXT NOT NULL UNIQUE, first_key INTEGER NOT NULL,
    last_key INTEGER NOT NULL, rows INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    key INTEGER PRIMARY KEY, id TEXT NOT NULL, document_id TEXT NOT NULL, text TEXT NOT NULL,
    metadata TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_by_document ON chunks (document_id);
CREATE TABLE IF NOT EXISTS documents (
    id TEXT PRIMARY KEY, seq INTEGER NOT NULL UNIQUE, chunks INTEGER NOT NULL, metadata TEXT NOT NULL,
    preview TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS documents_by_tenant ON documents (json_extract(metadata, '$."orgId"'), seq);
CREATE TABLE IF NOT EXISTS tombstones (key INTEGER PRIMARY KEY);
"""

# Stores written before the keyword index moved to Tantivy kept an FTS5 index, filled by triggers: dropped at open
# (the Tantivy index is then built from the catalog), so writes stop paying for it.
_DROP_FTS5 = """
DROP TRIGGER IF EXISTS chunks_fts_insert;
DROP TRIGGER IF EXISTS chunks_fts_delete;
DROP TABLE IF EXISTS chunks_fts;
"""

DOCUMENT_TENANT = """json_extract(metadata, '$."orgId"')"""  # as in the index documents_by_tenant
_COUNTERS = ("generation", "next_key", "next_seq", "chunks", "documents")


@dataclass(frozen=True, slots=True)
class SegmentRow:
    id: int
    file: str
    first_key: int
    last_key: int
    rows: int


@dataclass(frozen=True, slots=True)
class CatalogState:
    """What a reader needs to build its view of the store, read in one transaction."""

    generation: int
    segments: list[SegmentRow]
    tombstones: list[int]
    chunks: int
    documents: int


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE for writers), never implicit.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA secure_delete=ON")  # deleted text is zeroed, not left in free pages (rag/purge.py)
    return conn


def _summary(
    doc_id: str, chunks: int, metadata: str, preview: str, users: str | None, groups: str | None
) -> DocumentSummary:
    access = (
        None if users is None or groups is None else AccessList(tuple(json.loads(users)), tuple(json.loads(groups)))
    )
    return DocumentSummary(doc_id, chunks, json.loads(metadata), preview, access)


def _json_path(key: str) -> str | None:
    """A JSON path for one top-level metadata key, or None when the key cannot be quoted safely."""
    if '"' in key or "\\" in key:
        return None
    return f'$."{key}"'


def check_identity(identity: dict[str, str], directory: Path, embedding_model: str, dimension: int) -> None:
    """StoreIncompatible unless the store in `directory` was written in this format, by this embedding model."""
    if identity.get("format_version") != str(SCHEMA_VERSION):
        raise StoreIncompatible(
            f"{directory / 'catalog.sqlite3'} has format version {identity.get('format_version')!r}; "
            f"this service reads {SCHEMA_VERSION}"
        )
    check_embedding(identity, f"the store in {directory}", "another DATA_DIR", embedding_model, dimension)


class Catalog:
    """One writer connection (callers serialise writes) and one reader connection per thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer = _connect(path)
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def close(self) -> None:
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        self._writer.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._writer
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # --- schema and identity ---------------------------------------------------------------------

    def create_or_check(self, embedding_model: str, dimension: int) -> dict[str, str] | None:
        """Create the schema on first use; return the stored identity (model, dimension, version) when it existed."""
        # One script in one transaction: idempotent, and safe when several workers start at once.
        self._writer.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}{access_catalog.SCHEMA}{_DROP_FTS5}COMMIT;")
        with self.transaction() as conn:
            existing = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            if existing:
                return existing
            identity = {"format_version": str(SCHEMA_VERSION), "embedding_model": embedding_model}
            identity["dimension"] = str(dimension)
            rows = [*identity.items(), *((name, "0") for name in _COUNTERS)]
            conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", rows)
            return None

    def meta(self, key: str) -> str | None:
        row = self._reader().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, conn: sqlite3.Connection, key: str, value: str) -> None:
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = ?", (key, value, value)
        )

    # --- reading ----------------------------------------------------------------------------------

    def generation(self) -> int:
        return int(self.meta("generation") or 0)

    def state(self) -> CatalogState:
        conn = self._reader()
        conn.execute("BEGIN")
        try:
            counters = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            segments = [
                SegmentRow(*row)
                for row in conn.execute("SELECT id, file, first_key, last_key, rows FROM segments ORDER BY first_key")
            ]
            tombstones = [key for (key,) in conn.execute("SELECT key FROM tombstones ORDER BY key")]
        finally:
            conn.execute("COMMIT")
        return CatalogState(
            int(counters.get("generation", 0)),
            segments,
            tombstones,
            int(counters.get("chunks", 0)),
            int(counters.get("documents", 0)),
        )

    def access_generation(self) -> int:
        return access_catalog.generation(self._reader())

    def restricted_keys(self, org_id: str | None) -> np.ndarray:
        return access_catalog.restricted_keys(self._reader(), org_id)

    def forbidden_keys(self, org_id: str | None, reader: Reader, restricted: np.ndarray) -> np.ndarray:
        """Those of the `restricted` keys (the organisation's, sorted) that `reader` may not read."""
        return np.setdiff1d(restricted, access_catalog.granted_keys(self._reader(), org_id, reader))

    def chunks(self, keys: Iterable[int]) -> dict[int, Chunk]:
        keys = list(keys)
        if not keys:
            return {}
        marks = ",".join("?" * len(keys))
        rows = self._reader().execute(
            f"SELECT key, id, document_id, text, metadata FROM chunks WHERE key IN ({marks})", keys
        )
        return {key: Chunk(cid, doc, text, json.loads(meta)) for key, cid, doc, text, meta in rows}

    def field_values(self, key: str, first_key: int, last_key: int) -> Iterator[tuple[int, Any]]:
        """(chunk key, value of metadata field `key`) for live chunks in a key range; missing fields are left out,
        objects and arrays come back as lists/dicts (unhashable: no scalar filter can equal them)."""
        path = _json_path(key)
        conn = self._reader()
        if path is None:  # an exotic key: parse the metadata in Python
            for chunk_key, meta in conn.execute(
                "SELECT key, metadata FROM chunks WHERE key BETWEEN ? AND ?", (first_key, last_key)
            ):
                values = json.loads(meta)
                if key in values:
                    yield chunk_key, values[key]
            return
        rows = conn.execute(
            "SELECT key, json_type(metadata, ?), json_extract(metadata, ?) FROM chunks "
            "WHERE key BETWEEN ? AND ? AND json_type(metadata, ?) IS NOT NULL",
            (path, path, first_key, last_key, path),
        )
        for chunk_key, kind, value in rows:
            if kind == "true":
                yield chunk_key, True
            elif kind == "false":
                yield chunk_key, False
            elif kind in ("object", "array"):
                yield chunk_key, json.loads(value)
            else:  # null, integer, real, text: SQLite hands back the Python value
                yield chunk_key, value

    def keyword_entries(self, batch: int = 10_000) -> Iterator[tuple[int, str, str | None]]:
        """(key, text, organisation) of every live chunk, in key order, read in batches: what the keyword index is
        rebuilt from."""
        conn, after = self._reader(), -1
        while True:
            rows = conn.execute(
                f"SELECT key, text, json_extract(metadata, '{_json_path(TENANT_KEY)}'), "
                f"json_type(metadata, '{_json_path(TENANT_KEY)}') FROM chunks WHERE key > ? ORDER BY key LIMIT ?",
                (after, batch),
            ).fetchall()
            if not rows:
                return
            for key, text, tenant, kind in rows:
                yield key, text, tenant if kind == "text" else None
            after = rows[-1][0]

    def list_documents(
        self, offset: int, limit: int, org_id: str | None = None, reader: Reader | None = None
    ) -> tuple[int | None, list[DocumentSummary]]:
        """One page in insertion order; with `org_id`, only that organisation's documents, with `reader` only those
        it may read, and then their total (None: every document, whose count the caller has)."""
        # SQLite integers are 64-bit; any page past the end is empty anyway
        offset, limit = min(offset, 2**62), min(limit, 2**62)
        conn = self._reader()
        conditions, params = [], []
        if org_id is not None:
            conditions.append(f"{DOCUMENT_TENANT} = ?")
            params.append(org_id)
        if reader is not None:
            condition, grantees = access_catalog.reader_condition(reader, "d.id")
            conditions.append(condition)
            params += grantees
        where = " AND ".join(conditions) or "1"
        total = None
        if conditions:
            (total,) = conn.execute(f"SELECT count(*) FROM documents d WHERE {where}", params).fetchone()
        rows = conn.execute(
            "SELECT d.id, d.chunks, d.metadata, d.preview, l.users, l.groups FROM documents d "
            f"LEFT JOIN access_lists l ON l.document_id = d.id WHERE {where} ORDER BY d.seq LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )
        return total, [_summary(*row) for row in rows]

    def get_document(self, document_id: str, org_id: str | None, reader: Reader | None) -> DocumentSummary | None:
        """One document, when it exists, belongs to `org_id` (when given) and `reader` may read it."""
        condition, grantees = access_catalog.reader_condition(reader, "d.id")
        row = (
            self._reader()
            .execute(
                "SELECT d.id, d.chunks, d.metadata, d.preview, l.users, l.groups FROM documents d "
                f"LEFT JOIN access_lists l ON l.document_id = d.id WHERE d.id = ? AND {condition} "
                f"AND (? IS NULL OR {DOCUMENT_TENANT} = ?)",
                (document_id, *grantees, org_id, org_id),
            )
            .fetchone()
        )
        return None if row is None else _summary(*row)

    def documents_added_by(self, user_id: str, org_id: str | None) -> list[str]:
        rows = self._reader().execute(
            "SELECT d.id FROM document_adders a JOIN documents d ON d.id = a.document_id "
            f"WHERE a.user_id = ? AND (? IS NULL OR {DOCUMENT_TENANT} = ?) ORDER BY d.seq",
            (user_id, org_id, org_id),
        )
        return [doc for (doc,) in rows]

    def chunks_of(self, org_id: str | None) -> int:
        """The chunks an organisation's documents hold (None: the whole store's)."""
        if org_id is None:
            row = self._reader().execute("SELECT coalesce(sum(chunks), 0) FROM documents").fetchone()
        else:
            sql = f"SELECT coalesce(sum(chunks), 0) FROM documents WHERE {DOCUMENT_TENANT} = ?"
            row = self._reader().execute(sql, (org_id,)).fetchone()
        return int(row[0])

    def document_ids(self, org_id: str | None) -> list[str]:
        if org_id is None:
            rows = self._reader().execute("SELECT id FROM documents ORDER BY seq")
        else:
            rows = self._reader().execute(
                f"SELECT id FROM documents WHERE {DOCUMENT_TENANT} = ? ORDER BY seq", (org_id,)
            )
        return [doc for (doc,) in rows]

    def document_states(self) -> dict[str, tuple[int, str | None]]:
        """Each document's seq (every add moves it) and access list as stored (None: its whole organisation): what
        changes when the document does; the space builder compares them (rag/spaces/sync.py)."""
        rows = self._reader().execute(
            "SELECT d.id, d.seq, l.users || ' ' || l.groups FROM documents d "
            "LEFT JOIN access_lists l ON l.document_id = d.id"
        )
        return {doc: (seq, access) for doc, seq, access in rows}

    def document_tenant(self, conn: sqlite3.Connection, document_id: str) -> tuple[Any, str | None] | None:
        """A stored document's `orgId` as SQLite reads it, with its JSON type (None: no such field); None when the
        document is not stored."""
        row = conn.execute(
            f"SELECT {DOCUMENT_TENANT}, json_type(metadata, '$.\"{TENANT_KEY}\"') FROM documents WHERE id = ?",
            (document_id,),
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def foreign_documents(self, conn: sqlite3.Connection, document_ids: list[str], org_id: str) -> list[str]:
        """Those of `document_ids` that are stored and belong to another organisation than `org_id`."""
        foreign = []
        for doc_id in document_ids:
            found = self.document_tenant(conn, doc_id)
            if found is not None and found[0] != org_id:
                foreign.append(doc_id)
        return foreign

    def document_keys(self, conn: sqlite3.Connection, document_ids: list[str]) -> list[int]:
        keys: list[int] = []
        for start in range(0, len(document_ids), 500):
            part = document_ids[start : start + 500]
            marks = ",".join("?" * len(part))
            keys += [k for (k,) in conn.execute(f"SELECT key FROM chunks WHERE document_id IN ({marks})", part)]
        return keys

    # --- writing (each inside `transaction()`, called under the store's write lock) -----------------------

    def counters(self, conn: sqlite3.Connection) -> dict[str, int]:
        marks = ",".join("?" * len(_COUNTERS))
        return {k: int(v) for k, v in conn.execute(f"SELECT key, value FROM meta WHERE key IN ({marks})", _COUNTERS)}

    def bump(self, conn: sqlite3.Connection, **changes: int) -> None:
        """Add to counters; the generation always moves, so readers in every process notice the commit."""
        changes["generation"] = changes.get("generation", 0) + 1
        for name, delta in changes.items():
            conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key = ?", (delta, name))

    def remove_documents(self, conn: sqlite3.Connection, document_ids: list[str]) -> tuple[list[int], int]:
        """Tombstone the chunks of these documents and delete them; returns (their chunk keys, documents removed)."""
        keys = self.document_keys(conn, document_ids)
        conn.executemany("INSERT OR IGNORE INTO tombstones (key) VALUES (?)", ((k,) for k in keys))
        conn.executemany("DELETE FROM chunks WHERE key = ?", ((k,) for k in keys))
        removed_docs = 0
        for doc_id in document_ids:
            removed_docs += conn.execute("DELETE FROM documents WHERE id = ?", (doc_id,)).rowcount
        return keys, removed_docs

    def insert_chunks(self, conn: sqlite3.Connection, first_key: int, chunks: list[Chunk], first_seq: int) -> int:
        """Insert chunks with consecutive keys, and their documents in order; returns how many documents."""
        conn.executemany(
            "INSERT INTO chunks (key, id, document_id, text, metadata) VALUES (?, ?, ?, ?, ?)",
            (
                (first_key + i, c.id, c.document_id, c.text, json.dumps(c.metadata, ensure_ascii=False))
                for i, c in enumerate(chunks)
            ),
        )
        documents: dict[str, list[Chunk]] = {}
        for chunk in chunks:
            documents.setdefault(chunk.document_id, []).append(chunk)
        conn.executemany(
            "INSERT INTO documents (id, seq, chunks, metadata, preview) VALUES (?, ?, ?, ?, ?)",
            (
                (
                    doc_id,
                    first_seq + n,
                    len(parts),
                    json.dumps(parts[0].metadata, ensure_ascii=False),
                    parts[0].text[:200],
                )
                for n, (doc_id, parts) in enumerate(documents.items())
            ),
        )
        return len(documents)

    def insert_segment(self, conn: sqlite3.Connection, file: str, first_key: int, last_key: int, rows: int) -> None:
        conn.execute(
            "INSERT INTO segments (file, first_key, last_key, rows) VALUES (?, ?, ?, ?)",
            (file, first_key, last_key, rows),
        )

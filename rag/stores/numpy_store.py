"""The embedded store (the default): NumPy vector segments on disk plus a SQLite catalog, append-only.

Under its directory:
    catalog.sqlite3      chunk texts and metadata, documents, the list of segments, tombstones
    seg-<name>.npy       vectors of one segment (float32, memory-mapped); seg-<name>.keys.npy their chunk keys;
                         seg-<name>.bits.npy their binary codes (large segments only, see `quantized.py`)
    keywords/            the keyword leg's Tantivy index, derived from the catalog (see `keyword_index.py`)

An add writes only its own new segment (fsynced), then commits it in one catalog transaction together with its
chunks and the tombstones of the chunks it replaces: the commit is the moment the add exists, and a crash before it
leaves orphan files that the next start removes. The keyword index commits the add's texts just before, and the
removal of replaced or deleted chunks just after, the catalog; a search's snapshot hides whatever it holds beyond.
A delete writes tombstones only. A background compaction merges adjacent segments and drops tombstoned rows (see
`segments.plan_merge`); it writes its new segment outside every lock and takes the write lock only to swap, so
neither searches nor adds wait for it.

Each segment holds a tenant's rows together (see `segments.py`), so a tenant's dense search is a product over a
slice per segment; a hybrid search runs its keyword leg in a small thread pool beside the dense product. Among many
rows, the dense leg reads their binary codes first and re-scores the nearest (`quantized.py`).

Several processes (uvicorn workers) may share the directory: writes take an `flock`, every commit moves a
generation counter in the catalog, and a search first catches up when the generation moved. Searches read an
immutable snapshot; each write or catch-up builds a new one and swaps the reference.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import numpy as np

from rag.access import AccessList, Reader
from rag.errors import DocumentNotFound, StoreCorrupt, TenantForbidden
from rag.stores import access_catalog, numpy_spaces
from rag.stores.base import AccessByDocument, SearchRequest, StoredDocument
from rag.stores.catalog import Catalog, check_identity
from rag.stores.compaction import commit_merge, write_next_merge
from rag.stores.keyword_index import KeywordIndex
from rag.stores.legacy import migrate_generation_store
from rag.stores.numpy_export import exported
from rag.stores.numpy_search import SnapshotSearch
from rag.stores.quantized import QuantizedSearch
from rag.stores.segments import (
    Segment,
    grouped_by_tenant,
    remove_segment,
    segment_name,
    write_segment,
)
from rag.stores.snapshot import Snapshot
from rag.types import Chunk, DocumentSummary, Hit, tenant_of

logger = logging.getLogger(__name__)

CATALOG = "catalog.sqlite3"
KEYWORDS = "keywords"
WRITE_LOCK = ".lock"
UNPURGED = "unpurged"  # catalog meta: "1" from a deletion until the purge that erases its text
COMPACTION_LOCK = ".compaction.lock"


class NumpyVectorStore:
    backend = "numpy"

    def __init__(
        self,
        directory: Path,
        embedding_model: str,
        dimension: int,
        auto_compact: bool = True,
        quantized: QuantizedSearch | None = None,
    ) -> None:
        self.quantized = quantized or QuantizedSearch()
        self.directory = directory
        self.auto_compact = auto_compact  # off only in tests that look at segments before compaction
        self.embedding_model = embedding_model
        self.dimension = dimension
        self._catalog: Catalog | None = None
        self._keywords: KeywordIndex | None = None
        self._snapshot = Snapshot.build(0, (), np.zeros(0, dtype=np.int64), 0, 0)
        self._write_lock = asyncio.Lock()
        self._state_lock = threading.Lock()
        self._compaction: asyncio.Task[None] | None = None
        self._closing = False
        self.compactions = 0
        self._search: SnapshotSearch | None = None
        self.follower = False  # written by the space builder: writes pass the RETIRED marker (numpy_spaces.py)

    @property
    def catalog(self) -> Catalog:
        assert self._catalog is not None, "the store is not open"
        return self._catalog

    @property
    def keywords(self) -> KeywordIndex:
        assert self._keywords is not None, "the store is not open"
        return self._keywords

    # --- opening -------------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        directory: Path,
        embedding_model: str,
        dimension: int,
        auto_compact: bool = True,
        quantized: QuantizedSearch | None = None,
    ) -> NumpyVectorStore:
        """Open the store in `directory` (created when missing); fail clearly on another model or dimension."""
        store = cls(directory, embedding_model, dimension, auto_compact, quantized)
        await anyio.to_thread.run_sync(store._open_sync)
        store._schedule_compaction()  # a crash may have left segments to merge
        return store

    def _open_sync(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._file_lock(WRITE_LOCK):
            self._catalog = Catalog(self.directory / CATALOG)
            identity = self.catalog.create_or_check(self.embedding_model, self.dimension)
            if identity is not None:
                check_identity(identity, self.directory, self.embedding_model, self.dimension)
            migrate_generation_store(self.directory, self.catalog, self.embedding_model, self.dimension)
            self._remove_orphans()
            self._open_keywords()
            self._search = SnapshotSearch(self.catalog, self.keywords, self.quantized)
            self._reload()
        snap = self._snapshot
        logger.info(
            "vector store at %s: %d chunks in %d segments (%d tombstoned rows)",
            self.directory,
            snap.chunks,
            len(snap.segments),
            snap.dead_rows.shape[0],
        )

    def _open_keywords(self) -> None:
        """Open the keyword index and bring it in line with the catalog (under the write lock): leftovers of a
        crashed write are deleted, and an index that still disagrees (lost, damaged, or from before it existed) is
        rebuilt from the catalog."""
        self._keywords = KeywordIndex(self.directory / KEYWORDS)
        state = self.catalog.state()
        if not self.keywords.reconcile(state.chunks, int(self.catalog.meta("next_key") or 0), state.tombstones):
            logger.info("building the keyword index of %s from its %d chunks", self.directory, state.chunks)
            self.keywords.rebuild(self.catalog.keyword_entries())

    def _remove_orphans(self) -> None:
        """Delete files no commit names: segments of adds or merges that crashed before committing. Runs under the
        write lock; a merge in progress elsewhere holds the compaction lock, and then its files are left alone."""
        with self._file_lock(COMPACTION_LOCK, blocking=False) as acquired:
            if not acquired:
                return
            named = {row.file for row in self.catalog.state().segments}
            for path in self.directory.iterdir():
                name = segment_name(path)
                if path.name.endswith(".tmp") or (name is not None and name not in named):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()

    @contextlib.contextmanager
    def _file_lock(self, name: str, shared: bool = False, blocking: bool = True) -> Iterator[bool]:
        with open(self.directory / name, "a+b") as handle:
            flags = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB)
            try:
                fcntl.flock(handle, flags)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # --- the snapshot ----------------------------------------------------------------------------

    def _reload(self) -> None:
        """Build the snapshot from the catalog; the caller holds a file lock, so no segment vanishes meanwhile."""
        with self._state_lock:
            state = self.catalog.state()
            if state.generation == self._snapshot.generation and self._snapshot.generation:
                return
            # By file name, never by id: a name is used once, while SQLite may give a freed id out again.
            known = {segment.name: segment for segment in self._snapshot.segments}
            try:
                segments = tuple(
                    known.get(row.file) or Segment.open(self.directory, row.id, row.file) for row in state.segments
                )
            except (OSError, ValueError) as exc:
                raise StoreCorrupt(f"cannot read the segments of {self.directory}: {exc}") from exc
            tombstones = np.asarray(state.tombstones, dtype=np.int64)
            self.keywords.reload()  # after the catalog's state: it then holds at least that state's chunks
            self._snapshot = Snapshot.build(state.generation, segments, tombstones, state.chunks, state.documents)

    def _catch_up(self) -> Snapshot:
        """The current snapshot, after loading what other processes committed (one tiny query when nothing did)."""
        if self.catalog.generation() != self._snapshot.generation:
            with self._file_lock(WRITE_LOCK, shared=True):
                self._reload()
        return self._snapshot

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """The write lock, for a write: refused once the store's space was switched away from."""
        with self._file_lock(WRITE_LOCK):
            if not self.follower:
                numpy_spaces.check_writable(self.directory)
            yield

    async def mark_retired(self, retired: bool) -> None:
        """Set or clear the marker `_writing` reads; the switch does it while it holds the write lock shared."""
        await anyio.to_thread.run_sync(numpy_spaces.mark_retired, self.directory, retired)

    async def is_retired(self) -> bool:
        return not self.follower and numpy_spaces.is_retired(self.directory)

    @contextlib.asynccontextmanager
    async def switch_barrier(self) -> AsyncIterator[None]:
        """Hold off every write, in every process, while searches and exports go on: the write lock, shared."""
        lock = self.shared_write_lock()
        await anyio.to_thread.run_sync(lock.__enter__)
        try:
            yield
        finally:
            lock.__exit__(None, None, None)

    @contextlib.contextmanager
    def shared_write_lock(self) -> Iterator[None]:
        """While held, no process commits a write to the store (searches still pass); for a consistent read."""
        with self._file_lock(WRITE_LOCK, shared=True):
            yield

    def current_snapshot(self) -> Snapshot:
        return self._catch_up()

    async def export_documents(
        self, org_id: str | None = None, document_ids: list[str] | None = None, batch_chunks: int = 4096
    ) -> AsyncIterator[list[StoredDocument]]:
        async for batch in exported(self, org_id, document_ids, batch_chunks):
            yield batch

    async def refresh(self) -> None:
        # The check is one SQLite read (about 3 us; a WAL reader does not wait for writers): cheaper on the event loop
        # than a hop to a worker thread, which cost CPU on every chat into an empty store. Loading what changed reads
        # files under the store's file lock, so that runs in a thread.
        if self.catalog.generation() != self._snapshot.generation:
            await anyio.to_thread.run_sync(self._catch_up)

    @property
    def count(self) -> int:
        return self._snapshot.chunks

    def layout(self) -> dict[str, int]:
        """Segments, vector rows and tombstoned rows of the current snapshot (for logs, tests and benchmarks)."""
        snap = self._snapshot
        return {
            "segments": len(snap.segments),
            "rows": snap.rows,
            "tombstoned": int(snap.dead_rows.shape[0]),
            "compactions": self.compactions,  # merges this process ran since it started
            "keyword_documents": self.keywords.count,  # the catalog's chunks, plus leftovers a snapshot hides
        }

    @property
    def document_count(self) -> int:
        return self._snapshot.documents

    # --- writing -------------------------------------------------------------------------------

    def _upsert_sync(
        self,
        chunks: list[Chunk],
        vectors: np.ndarray,
        org_id: str | None,
        access: AccessByDocument | None,
        reader: Reader | None,
        added_by: str | None,
    ) -> None:
        with self._writing():
            first_key = int(self.catalog.meta("next_key") or 0)  # stable: every writer holds this lock
            keys = np.arange(first_key, first_key + len(chunks), dtype=np.int64)
            order = grouped_by_tenant(keys, [tenant_of(chunk.metadata) for chunk in chunks])
            name = write_segment(self.directory, vectors[order], keys[order])
            try:
                self.keywords.add(first_key, chunks)  # before the catalog: whatever it commits is searchable
                with self.catalog.transaction() as conn:
                    counters = self.catalog.counters(conn)
                    if counters["next_key"] != first_key:
                        raise StoreCorrupt("the catalog's next key moved while the write lock was held")
                    document_ids = list(dict.fromkeys(chunk.document_id for chunk in chunks))
                    if org_id is not None and self.catalog.foreign_documents(conn, document_ids, org_id):
                        raise TenantForbidden("a document with one of these ids belongs to another organisation")
                    if reader is not None and any(
                        self.catalog.document_tenant(conn, doc) is not None
                        and not access_catalog.may_read(conn, doc, reader)
                        for doc in document_ids
                    ):
                        raise TenantForbidden("a document with one of these ids is stored and is not yours to replace")
                    access_catalog.write_for_add(conn, chunks, document_ids, access or {})
                    access_catalog.set_adder(conn, document_ids, added_by)
                    removed, removed_docs = self.catalog.remove_documents(conn, document_ids)
                    if removed:
                        self.catalog.set_meta(conn, UNPURGED, "1")
                    added_docs = self.catalog.insert_chunks(conn, first_key, chunks, counters["next_seq"])
                    self.catalog.insert_segment(conn, name, first_key, int(keys[-1]), len(chunks))
                    self.catalog.bump(
                        conn,
                        next_key=len(chunks),
                        next_seq=added_docs,
                        chunks=len(chunks) - len(removed),
                        documents=added_docs - removed_docs,
                    )
            except BaseException:
                remove_segment(self.directory, name)
                raise
            self._forget_keywords(removed)
            self._reload()

    def _forget_keywords(self, keys: list[int]) -> None:
        """Remove chunks the catalog has removed from the keyword index. The write is already committed, so a
        failure here must not report it failed: tombstones hide those chunks meanwhile, and the next open
        reconciles the index."""
        try:
            self.keywords.remove(keys)
        except Exception:
            logger.exception("could not remove %d chunks from the keyword index; the next start does", len(keys))

    async def upsert(
        self,
        chunks: list[Chunk],
        vectors: np.ndarray,
        org_id: str | None = None,
        access: AccessByDocument | None = None,
        reader: Reader | None = None,
        added_by: str | None = None,
    ) -> None:
        if vectors.shape != (len(chunks), self.dimension):
            raise ValueError(f"expected vectors of shape ({len(chunks)}, {self.dimension}), got {vectors.shape}")
        if not chunks:
            return
        async with self._write_lock:
            await anyio.to_thread.run_sync(self._upsert_sync, chunks, vectors, org_id, access, reader, added_by)
        self._schedule_compaction()

    def _visible(self, conn: sqlite3.Connection, document_id: str, org_id: str | None, reader: Reader | None) -> bool:
        """Whether the document exists for this caller: stored, of its organisation, readable by its reader."""
        found = self.catalog.document_tenant(conn, document_id)
        if found is None or (org_id is not None and found[0] != org_id):
            return False  # missing, or another tenant's: not for you
        return access_catalog.may_read(conn, document_id, reader)

    def _delete_sync(self, document_ids: list[str], org_id: str | None, reader: Reader | None, strict: bool) -> int:
        """Delete the documents in one write; `strict`: DocumentNotFound unless every one exists for the caller,
        else those that do not are passed over."""
        with self._writing():
            with self.catalog.transaction() as conn:
                visible = [doc for doc in document_ids if self._visible(conn, doc, org_id, reader)]
                if strict and len(visible) != len(document_ids):
                    missing = next(doc for doc in document_ids if doc not in visible)
                    raise DocumentNotFound(f"no document with id {missing!r}")
                if not visible:
                    return 0
                if access_catalog.remove(conn, visible):
                    access_catalog.bump_generation(conn)
                access_catalog.set_adder(conn, visible, None)
                removed, removed_docs = self.catalog.remove_documents(conn, visible)
                self.catalog.set_meta(conn, UNPURGED, "1")
                self.catalog.bump(conn, chunks=-len(removed), documents=-removed_docs)
            self._forget_keywords(removed)
            self._reload()
            return len(removed)

    async def delete(self, document_id: str, org_id: str | None = None, reader: Reader | None = None) -> int:
        async with self._write_lock:
            removed = await anyio.to_thread.run_sync(self._delete_sync, [document_id], org_id, reader, True)
        self._schedule_compaction()
        return removed

    async def delete_many(self, document_ids: list[str], org_id: str | None = None) -> int:
        """Delete those of the documents that exist (of `org_id`, when given) in one write; returns their chunks."""
        async with self._write_lock:
            removed = await anyio.to_thread.run_sync(self._delete_sync, document_ids, org_id, None, False)
        self._schedule_compaction()
        return removed

    async def documents_added_by(self, user_id: str, org_id: str | None = None) -> list[str]:
        return await anyio.to_thread.run_sync(self.catalog.documents_added_by, user_id, org_id)

    async def document_ids(self, org_id: str | None) -> list[str]:
        return await anyio.to_thread.run_sync(self.catalog.document_ids, org_id)

    async def chunks_of(self, org_id: str | None) -> int:
        return await anyio.to_thread.run_sync(self.catalog.chunks_of, org_id)

    async def write_generation(self) -> int:
        return await anyio.to_thread.run_sync(self.catalog.generation)

    async def document_states(self) -> dict[str, tuple[int, str | None]]:
        return await anyio.to_thread.run_sync(self.catalog.document_states)

    def _set_access_sync(self, document_id: str, access: AccessList | None, org_id: str | None) -> None:
        with self._writing():
            with self.catalog.transaction() as conn:
                if not self._visible(conn, document_id, org_id, None):
                    raise DocumentNotFound(f"no document with id {document_id!r}")
                found = self.catalog.document_tenant(conn, document_id)
                assert found is not None  # visible, in this transaction
                access_catalog.put(conn, document_id, found[0] if found[1] == "text" else None, access)
                access_catalog.bump_generation(conn)
                self.catalog.bump(conn)  # every process catches up before its next search
            self._reload()

    async def set_access(self, document_id: str, access: AccessList | None, org_id: str | None = None) -> None:
        async with self._write_lock:
            await anyio.to_thread.run_sync(self._set_access_sync, document_id, access, org_id)

    async def get_document(
        self, document_id: str, org_id: str | None = None, reader: Reader | None = None
    ) -> DocumentSummary:
        found = await anyio.to_thread.run_sync(self.catalog.get_document, document_id, org_id, reader)
        if found is None:
            raise DocumentNotFound(f"no document with id {document_id!r}")
        return found

    # --- purging --------------------------------------------------------------------------------

    def _purge_sync(self) -> None:
        with self._file_lock(WRITE_LOCK):
            if self.catalog.meta(UNPURGED) != "1":
                return  # another process purged meanwhile
            # Deleted chunks' terms stay in the keyword index's segments until Tantivy merges them, which it does
            # when it chooses: the index is derived data, so it is written again from the catalog's live chunks.
            indexed = self.keywords.rebuild(self.catalog.keyword_entries())
            with self.catalog.transaction() as conn:
                self.catalog.set_meta(conn, UNPURGED, "0")
            logger.info("purge: keyword index of %s rewritten (%d chunks)", self.directory, indexed)

    async def purge(self, deleted_here: bool = True) -> None:
        """Erase what deletions left in the store's files: SQLite already zeroed the rows (secure_delete), and the
        keyword index is rewritten without the deleted chunks; `rag/purge.py` then truncates the catalog's WAL.
        Vector segments hold no text; compaction drops deleted rows' vectors as it merges."""
        if self.catalog.meta(UNPURGED) != "1":
            return
        async with self._write_lock:
            await anyio.to_thread.run_sync(self._purge_sync)

    # --- compaction ----------------------------------------------------------------------------

    def _schedule_compaction(self) -> None:
        if self.auto_compact and not self._closing and (self._compaction is None or self._compaction.done()):
            self._compaction = asyncio.create_task(self._compact_in_background())

    async def compact(self) -> int:
        """Merge until the plan asks for nothing more; returns how many merges ran."""
        merges = 0
        while not self._closing and await anyio.to_thread.run_sync(self._merge_once):
            merges += 1
            self.compactions += 1
        return merges

    async def _compact_in_background(self) -> None:
        try:
            await self.compact()
        except Exception:
            logger.exception("compaction failed; the store is unchanged and the next write retries it")

    def _merge_once(self) -> bool:
        """Run one merge the plan asks for; False when there is none (or another process is compacting)."""
        with self._file_lock(COMPACTION_LOCK, blocking=False) as acquired:
            if not acquired:
                return False
            merge = write_next_merge(self.directory, self._catch_up(), self.catalog.field_values)
            if merge is None:
                return False
            with self._file_lock(WRITE_LOCK):
                commit_merge(self.directory, self.catalog, merge)
                self._reload()
            return True

    async def wait_for_compaction(self) -> None:
        """Let a running compaction finish (tests and benchmarks use it to observe a quiet store)."""
        while self._compaction is not None and not self._compaction.done():
            await asyncio.shield(self._compaction)

    # --- searching -----------------------------------------------------------------------------

    def _search_sync(self, request: SearchRequest) -> list[Hit]:
        assert self._search is not None, "the store is not open"
        return self._search.search(self._catch_up(), request)

    async def search(self, request: SearchRequest) -> list[Hit]:
        return await anyio.to_thread.run_sync(self._search_sync, request)

    # --- listing and closing -------------------------------------------------------------------

    def _list_sync(
        self, offset: int, limit: int, org_id: str | None, reader: Reader | None
    ) -> tuple[int, list[DocumentSummary]]:
        snap = self._catch_up()
        total, page = self.catalog.list_documents(offset, limit, org_id, reader)
        return (snap.documents if total is None else total), page

    async def list_documents(
        self, offset: int, limit: int, org_id: str | None = None, reader: Reader | None = None
    ) -> tuple[int, list[DocumentSummary]]:
        return await anyio.to_thread.run_sync(self._list_sync, offset, limit, org_id, reader)

    async def aclose(self) -> None:
        self._closing = True
        async with self._write_lock:  # an in-flight write finishes: it is acknowledged only once durable
            if self._compaction is not None:
                await asyncio.gather(self._compaction, return_exceptions=True)
            if self._search is not None:
                self._search.close()
            if self._keywords is not None:
                self._keywords.close()
                self._keywords = None
            if self._catalog is not None:
                self._catalog.close()
                self._catalog = None

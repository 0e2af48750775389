"""The embedded store (the default): NumPy vector segments on disk plus a SQLite catalog, append-only.

Under its directory:
    catalog.sqlite3      chunk texts and metadata, documents, the list of segments, tombstones
    seg-<name>.npy       vectors of one segment (float32, memory-mapped); seg-<name>.keys.npy their chunk keys
    keywords/            the keyword leg's Tantivy index, derived from the catalog (see `keyword_index.py`)

An add writes only its own new segment (fsynced), then commits it in one catalog transaction together with its
chunks and the tombstones of the chunks it replaces: the commit is the moment the add exists, and a crash before it
leaves orphan files that the next start removes. The keyword index commits the add's texts just before, and the
removal of replaced or deleted chunks just after, the catalog; a search's snapshot hides whatever it holds beyond.
A delete writes tombstones only. A background compaction merges adjacent segments and drops tombstoned rows (see
`segments.plan_merge`); it writes its new segment outside every lock and takes the write lock only to swap, so
neither searches nor adds wait for it.

Each segment holds a tenant's rows together (see `segments.py`), so a tenant's dense search is a product over a
slice per segment; a hybrid search runs its keyword leg in a small thread pool beside the dense product.

Several processes (uvicorn workers) may share the directory: writes take an `flock`, every commit moves a
generation counter in the catalog, and a search first catches up when the generation moved. Searches read an
immutable snapshot; each write or catch-up builds a new one and swaps the reference.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import anyio
import numpy as np

from rag.errors import DocumentNotFound, StoreCorrupt, StoreIncompatible, TenantForbidden
from rag.filters import Filters
from rag.stores.base import SearchRequest
from rag.stores.catalog import SCHEMA_VERSION, Catalog
from rag.stores.fusion import fuse
from rag.stores.keyword_index import KeywordIndex
from rag.stores.legacy import migrate_generation_store
from rag.stores.segments import (
    Segment,
    grouped_by_tenant,
    plan_merge,
    remove_segment,
    segment_name,
    write_merged_segment,
    write_segment,
)
from rag.types import Chunk, DocumentSummary, Hit, tenant_of

logger = logging.getLogger(__name__)

CATALOG = "catalog.sqlite3"
KEYWORDS = "keywords"
WRITE_LOCK = ".lock"
COMPACTION_LOCK = ".compaction.lock"
HYBRID_POOL = 100  # candidates taken from each leg before fusion (the pool the fusion was tuned with)
GATHER_BELOW = 0.5  # a filter keeping less than this share of rows scores only those rows
SPAN_SLACK = 2  # rows of a segment spanning at most this many times their number are scored over the span


# A ranked row: (row, similarity or BM25 score, legs that found it, BM25 score, fused score)
_Ranked = tuple[int, float, tuple[str, ...], float | None, float | None]


@dataclass(frozen=True, eq=False)
class _Snapshot:
    generation: int
    segments: tuple[Segment, ...]
    chunks: int
    documents: int
    offsets: np.ndarray  # row where each segment starts in the concatenated view, and the total at the end
    keys: np.ndarray  # every row's chunk key, in row order
    sorted_keys: np.ndarray  # every chunk key, ascending (segments hold disjoint, ordered key ranges)
    key_rows: np.ndarray  # the row of each of sorted_keys
    dead_rows: np.ndarray  # rows whose chunk is tombstoned, ascending
    dead: tuple[np.ndarray, ...]  # the same, per segment, as local positions

    @classmethod
    def build(
        cls, generation: int, segments: tuple[Segment, ...], tombstones: np.ndarray, chunks: int, documents: int
    ) -> _Snapshot:
        offsets = np.zeros(len(segments) + 1, dtype=np.int64)
        np.cumsum([s.rows for s in segments], out=offsets[1:])

        def joined(parts: list[np.ndarray]) -> np.ndarray:
            return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

        keys = joined([s.keys for s in segments])
        sorted_keys = joined([s.sorted_keys for s in segments])
        key_rows = joined([s.by_key + start for s, start in zip(segments, offsets.tolist(), strict=False)])
        positions = np.searchsorted(sorted_keys, tombstones)
        inside = positions < sorted_keys.shape[0]
        positions = positions[inside]
        dead_rows = np.sort(key_rows[positions[sorted_keys[positions] == tombstones[inside]]])
        bounds = np.searchsorted(dead_rows, offsets)
        dead = tuple(dead_rows[bounds[i] : bounds[i + 1]] - offsets[i] for i in range(len(segments)))
        return cls(generation, segments, chunks, documents, offsets, keys, sorted_keys, key_rows, dead_rows, dead)

    @property
    def rows(self) -> int:
        return int(self.offsets[-1])

    def rows_of_keys(self, keys: np.ndarray) -> np.ndarray:
        """Rows of the given chunk keys; -1 for a key this snapshot does not hold, or holds tombstoned."""
        if not self.sorted_keys.shape[0]:
            return np.full(keys.shape, -1, dtype=np.int64)
        positions = np.minimum(np.searchsorted(self.sorted_keys, keys), self.sorted_keys.shape[0] - 1)
        found = self.sorted_keys[positions] == keys
        rows = self.key_rows[positions]
        if self.dead_rows.shape[0]:
            at = np.minimum(np.searchsorted(self.dead_rows, rows), self.dead_rows.shape[0] - 1)
            found &= self.dead_rows[at] != rows
        return np.where(found, rows, -1)

    def scores_of(self, rows: np.ndarray, query: np.ndarray) -> np.ndarray:
        """Similarities of the given rows (ascending). Where a segment's rows lie close together, as a tenant's do,
        the product runs over their span in place, which costs less than gathering them into a copy first."""
        scores = np.empty(rows.shape[0], dtype=np.float32)
        bounds = np.searchsorted(rows, self.offsets)
        for s, segment in enumerate(self.segments):
            picked = rows[bounds[s] : bounds[s + 1]] - self.offsets[s]
            if not picked.shape[0]:
                continue
            low, high = int(picked[0]), int(picked[-1]) + 1
            if high - low <= SPAN_SLACK * picked.shape[0]:
                scores[bounds[s] : bounds[s + 1]] = (segment.vectors[low:high] @ query)[picked - low]
            else:
                scores[bounds[s] : bounds[s + 1]] = segment.vectors[picked] @ query
        return scores


class NumpyVectorStore:
    backend = "numpy"

    def __init__(self, directory: Path, embedding_model: str, dimension: int, auto_compact: bool = True) -> None:
        self.directory = directory
        self.auto_compact = auto_compact  # off only in tests that look at segments before compaction
        self.embedding_model = embedding_model
        self.dimension = dimension
        self._catalog: Catalog | None = None
        self._keywords: KeywordIndex | None = None
        self._snapshot = _Snapshot.build(0, (), np.zeros(0, dtype=np.int64), 0, 0)
        self._write_lock = asyncio.Lock()
        self._state_lock = threading.Lock()
        self._compaction: asyncio.Task[None] | None = None
        self._closing = False
        self.compactions = 0
        # A hybrid search runs its keyword leg here while its own thread runs the dense product, so a question
        # costs the longer leg rather than both. One worker per core: more would only queue on the cores.
        self._keyword_legs = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="keyword-leg")

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
        cls, directory: Path, embedding_model: str, dimension: int, auto_compact: bool = True
    ) -> NumpyVectorStore:
        """Open the store in `directory` (created when missing); fail clearly on another model or dimension."""
        store = cls(directory, embedding_model, dimension, auto_compact)
        await anyio.to_thread.run_sync(store._open_sync)
        store._schedule_compaction()  # a crash may have left segments to merge
        return store

    def _open_sync(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._file_lock(WRITE_LOCK):
            self._catalog = Catalog(self.directory / CATALOG)
            identity = self.catalog.create_or_check(self.embedding_model, self.dimension)
            if identity is not None:
                self._check_identity(identity)
            migrate_generation_store(self.directory, self.catalog, self.embedding_model, self.dimension)
            self._remove_orphans()
            self._open_keywords()
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

    def _check_identity(self, identity: dict[str, str]) -> None:
        if identity.get("format_version") != str(SCHEMA_VERSION):
            raise StoreIncompatible(
                f"{self.directory / CATALOG} has format version {identity.get('format_version')!r}; "
                f"this service reads {SCHEMA_VERSION}"
            )
        if identity.get("embedding_model") != self.embedding_model or identity.get("dimension") != str(self.dimension):
            raise StoreIncompatible(
                f"the store in {self.directory} was built with embedding model {identity.get('embedding_model')!r} "
                f"(dimension {identity.get('dimension')}), but this service embeds with {self.embedding_model!r} "
                f"(dimension {self.dimension}). Set DATA_DIR to another directory, or set EMBEDDING_MODEL back and "
                "re-ingest before switching."
            )

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
            self._snapshot = _Snapshot.build(state.generation, segments, tombstones, state.chunks, state.documents)

    def _catch_up(self) -> _Snapshot:
        """The current snapshot, after loading what other processes committed (one tiny query when nothing did)."""
        if self.catalog.generation() != self._snapshot.generation:
            with self._file_lock(WRITE_LOCK, shared=True):
                self._reload()
        return self._snapshot

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

    def _upsert_sync(self, chunks: list[Chunk], vectors: np.ndarray, org_id: str | None) -> None:
        with self._file_lock(WRITE_LOCK):
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
                    removed, removed_docs = self.catalog.remove_documents(conn, document_ids)
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

    async def upsert(self, chunks: list[Chunk], vectors: np.ndarray, org_id: str | None = None) -> None:
        if vectors.shape != (len(chunks), self.dimension):
            raise ValueError(f"expected vectors of shape ({len(chunks)}, {self.dimension}), got {vectors.shape}")
        if not chunks:
            return
        async with self._write_lock:
            await anyio.to_thread.run_sync(self._upsert_sync, chunks, vectors, org_id)
        self._schedule_compaction()

    def _delete_sync(self, document_id: str, org_id: str | None) -> int:
        with self._file_lock(WRITE_LOCK):
            with self.catalog.transaction() as conn:
                if org_id is not None and self.catalog.foreign_documents(conn, [document_id], org_id):
                    raise DocumentNotFound(f"no document with id {document_id!r}")  # another tenant's: not for you
                removed, removed_docs = self.catalog.remove_documents(conn, [document_id])
                if not removed_docs:
                    raise DocumentNotFound(f"no document with id {document_id!r}")
                self.catalog.bump(conn, chunks=-len(removed), documents=-removed_docs)
            self._forget_keywords(removed)
            self._reload()
            return len(removed)

    async def delete(self, document_id: str, org_id: str | None = None) -> int:
        async with self._write_lock:
            removed = await anyio.to_thread.run_sync(self._delete_sync, document_id, org_id)
        self._schedule_compaction()
        return removed

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
            snap = self._catch_up()
            live = [segment.rows - dead.shape[0] for segment, dead in zip(snap.segments, snap.dead, strict=True)]
            plan = plan_merge(live, [dead.shape[0] for dead in snap.dead])
            if plan is None:
                return False
            inputs = snap.segments[plan[0] : plan[1]]
            kept_rows, kept_keys, tenants, dropped = [], [], [], []
            first_row = 0
            for segment, dead in zip(inputs, snap.dead[plan[0] : plan[1]], strict=True):
                keep = np.ones(segment.rows, dtype=bool)
                keep[dead] = False
                kept = np.flatnonzero(keep)
                kept_rows.append(kept + first_row)
                kept_keys.append(segment.keys[kept])
                tenants.append(segment.tenants(self.catalog.field_values)[kept])
                dropped.append(segment.keys[dead])
                first_row += segment.rows
            keys = np.concatenate(kept_keys)
            order = grouped_by_tenant(keys, np.concatenate(tenants))  # the merged rows grouped by tenant again
            name = None
            if keys.shape[0]:
                sources = [segment.vectors for segment in inputs]
                name = write_merged_segment(self.directory, sources, np.concatenate(kept_rows)[order], keys[order])
            with self._file_lock(WRITE_LOCK):
                try:
                    with self.catalog.transaction() as conn:
                        ids = [segment.id for segment in inputs]
                        marks = ",".join("?" * len(ids))
                        if conn.execute(f"DELETE FROM segments WHERE id IN ({marks})", ids).rowcount != len(ids):
                            raise StoreCorrupt("segments being merged vanished from the catalog")
                        if name is not None:
                            self.catalog.insert_segment(conn, name, int(keys.min()), int(keys.max()), keys.shape[0])
                        dropped_keys = np.concatenate(dropped).tolist()
                        conn.executemany("DELETE FROM tombstones WHERE key = ?", ((k,) for k in dropped_keys))
                        self.catalog.bump(conn)
                except BaseException:
                    if name is not None:
                        remove_segment(self.directory, name)
                    raise
                for segment in inputs:
                    remove_segment(self.directory, segment.name)  # mapped pages stay valid until unmapped
                self._reload()
            return True

    async def wait_for_compaction(self) -> None:
        """Let a running compaction finish (tests and benchmarks use it to observe a quiet store)."""
        while self._compaction is not None and not self._compaction.done():
            await asyncio.shield(self._compaction)

    # --- searching -----------------------------------------------------------------------------

    def _eligible(self, snap: _Snapshot, filters: Filters | None) -> np.ndarray | None:
        """Rows that may be returned (live, and passing the filters) as a mask; None means every live row."""
        if not filters:
            return None
        mask = np.empty(snap.rows, dtype=bool)
        for segment, start in zip(snap.segments, snap.offsets.tolist(), strict=False):
            mask[start : start + segment.rows] = segment.mask(filters, self.catalog.field_values)
        mask[snap.dead_rows] = False
        return mask

    def _dense(
        self, snap: _Snapshot, query: np.ndarray, eligible: np.ndarray | None
    ) -> tuple[np.ndarray | None, np.ndarray]:
        """(rows, cosine similarities) of the rows a search may return; rows None means every row, in order."""
        query = np.ascontiguousarray(query, dtype=np.float32)
        if eligible is not None:
            rows = np.flatnonzero(eligible)
            if rows.shape[0] < GATHER_BELOW * snap.rows:  # score only the rows the filter keeps
                return rows, snap.scores_of(rows, query)
        scores = np.empty(snap.rows, dtype=np.float32)
        for segment, start in zip(snap.segments, snap.offsets.tolist(), strict=False):
            np.matmul(segment.vectors, query, out=scores[start : start + segment.rows])
        if eligible is not None:
            return rows, scores[rows]
        scores[snap.dead_rows] = -np.inf
        return None, scores

    @staticmethod
    def _best(rows: np.ndarray | None, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The `k` best (rows, scores), best first."""
        k = min(k, scores.shape[0])
        best = np.argpartition(-scores, k - 1)[:k] if k else np.zeros(0, dtype=np.int64)
        best = best[np.argsort(-scores[best], kind="stable")]
        best = best[np.isfinite(scores[best])]
        return (best if rows is None else rows[best]), scores[best]

    def _keyword(
        self, snap: _Snapshot, text: str, k: int, filters: Filters | None, eligible: np.ndarray | None
    ) -> dict[int, float]:
        """Row -> BM25 score of the best `k` eligible rows. The index may hold chunks this snapshot does not (added
        since, tombstoned, leftovers of a crash) and filters other than the tenant apply after it ranks, so the
        candidate list grows until it holds k eligible rows or every match was seen."""
        if snap.rows == 0:
            return {}
        limit = max(k, 10)
        tenant = tenant_of(filters or {})  # a tenant named by a string is matched inside the index
        if tenant is None and eligible is not None:  # other filters apply after: ask for enough at once
            share = max(float(eligible.mean()), 1e-4)
            limit = max(limit, int(k / share * 1.5))
        while True:
            found = self.keywords.search(text, limit, tenant)
            keys = np.asarray([key for key, _ in found], dtype=np.int64)
            rows = snap.rows_of_keys(keys)
            ok = rows >= 0
            if eligible is not None:
                ok &= eligible[np.maximum(rows, 0)]
            if ok.sum() >= k or len(found) < limit:
                picked = np.flatnonzero(ok)[:k]
                return {int(rows[i]): found[i][1] for i in picked}
            limit *= 4

    def _search_sync(self, request: SearchRequest) -> list[Hit]:
        snap = self._catch_up()
        if snap.chunks == 0 or request.top_k < 1:
            return []
        eligible = self._eligible(snap, request.filters)
        if eligible is not None and not eligible.any():
            return []
        if request.mode == "keyword":
            keyword = self._keyword(snap, request.text, request.top_k, request.filters, eligible)
            by_bm25 = sorted(keyword.items(), key=lambda item: item[1], reverse=True)
            return self._hits(snap, [(row, score, ("keyword",), score, None) for row, score in by_bm25])
        if request.vector is None:
            raise ValueError(f"{request.mode} search needs a query vector")
        pool = request.top_k if request.mode == "dense" else max(request.top_k, HYBRID_POOL)
        keyword_leg = (  # started first: it needs nothing from the dense leg, whose product releases the GIL
            self._keyword_legs.submit(self._keyword, snap, request.text, pool, request.filters, eligible)
            if request.mode == "hybrid"
            else None
        )
        rows, scores = self._dense(snap, request.vector, eligible)
        rows, scores = self._best(rows, scores, pool)
        floor = request.threshold
        if request.mode == "dense":
            keep = scores >= floor if floor is not None else np.ones(scores.shape, dtype=bool)
            return self._hits(
                snap,
                [(int(r), float(s), ("dense",), None, None) for r, s in zip(rows[keep], scores[keep], strict=True)],
            )
        if floor is not None:
            if scores.shape[0] == 0 or scores[0] < floor:
                return []  # hybrid: no chunk is similar enough, the question is off-topic
            rows, scores = rows[scores >= floor], scores[scores >= floor]  # the dense leg's candidates pass its bar
        dense = {int(r): float(s) for r, s in zip(rows.tolist(), scores.tolist(), strict=True)}
        assert keyword_leg is not None
        keyword = keyword_leg.result()
        only_keyword = [row for row in keyword if row not in dense]
        similarity = dict(dense)
        if only_keyword:  # their similarity is known too: score them, so both legs rank every candidate
            needed = np.sort(np.asarray(only_keyword, dtype=np.int64))
            found = snap.scores_of(needed, request.vector.astype(np.float32))
            similarity |= dict(zip(needed.tolist(), found.tolist(), strict=True))
        ranked: list[_Ranked] = []
        for row, fused in fuse(similarity, keyword)[: request.top_k]:
            legs = tuple(leg for leg, pool_of in (("dense", dense), ("keyword", keyword)) if row in pool_of)
            ranked.append((row, similarity[row], legs, keyword.get(row), fused))
        return self._hits(snap, ranked)

    def _hits(self, snap: _Snapshot, ranked: list[_Ranked]) -> list[Hit]:
        keys = [int(snap.keys[row]) for row, *_ in ranked]
        chunks = self.catalog.chunks(keys)
        hits = []
        for key, (_, score, found_by, keyword_score, fused_score) in zip(keys, ranked, strict=True):
            chunk = chunks.get(key)
            if chunk is not None:  # None: deleted by another process after this snapshot
                hits.append(Hit(chunk, score, found_by, keyword_score, fused_score))
        return hits

    async def search(self, request: SearchRequest) -> list[Hit]:
        return await anyio.to_thread.run_sync(self._search_sync, request)

    # --- listing and closing -------------------------------------------------------------------

    def _list_sync(self, offset: int, limit: int, org_id: str | None) -> tuple[int, list[DocumentSummary]]:
        snap = self._catch_up()
        total, page = self.catalog.list_documents(offset, limit, org_id)
        return (snap.documents if total is None else total), page

    async def list_documents(
        self, offset: int, limit: int, org_id: str | None = None
    ) -> tuple[int, list[DocumentSummary]]:
        return await anyio.to_thread.run_sync(self._list_sync, offset, limit, org_id)

    async def aclose(self) -> None:
        self._closing = True
        async with self._write_lock:  # an in-flight write finishes: it is acknowledged only once durable
            if self._compaction is not None:
                await asyncio.gather(self._compaction, return_exceptions=True)
            self._keyword_legs.shutdown(wait=True)
            if self._keywords is not None:
                self._keywords.close()
                self._keywords = None
            if self._catalog is not None:
                self._catalog.close()
                self._catalog = None

"""How the embedded store searches one snapshot: filters and the access rule as a mask of eligible rows, the dense
leg (a NumPy product; among many rows, a scan of binary codes re-scored at full precision), the keyword leg
(Tantivy) beside it in a small thread pool, and their fusion.

A narrowed reader (`rag/access.py`) removes the rows of the documents it may not read from the mask before any leg
ranks: its forbidden chunk keys come from the catalog once per change of any access list (cached by the catalog's
access generation) and their rows once per snapshot, so a user asking again pays for neither.
"""

from __future__ import annotations

import contextvars
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from llm.tracing import tracer
from rag.access import Reader
from rag.filters import Filters
from rag.stores.base import SearchRequest
from rag.stores.catalog import Catalog
from rag.stores.fusion import fuse
from rag.stores.keyword_index import KeywordIndex
from rag.stores.quantized import FAR, QuantizedSearch, best_candidates, binary_codes, nearest, scan
from rag.stores.reader_cache import LruCache
from rag.stores.snapshot import Snapshot
from rag.types import Hit, tenant_of

HYBRID_POOL = 100  # candidates taken from each leg before fusion (the pool the fusion was tuned with)
GATHER_BELOW = 0.5  # a filter keeping less than this share of rows scores only those rows
# A narrowed reader with at most this many rows has its keyword leg match their keys inside the index (a term set
# query, whose cost grows with the keys); above it, the tenant's ranking is filtered, asked for as many as the
# reader's share needs.
KEYS_INSIDE_INDEX = 256

# A ranked row: (row, similarity or BM25 score, legs that found it, BM25 score, fused score)
Ranked = tuple[int, float, tuple[str, ...], float | None, float | None]


class SnapshotSearch:
    def __init__(self, catalog: Catalog, keywords: KeywordIndex, quantized: QuantizedSearch) -> None:
        self.catalog = catalog
        self.keywords = keywords
        self.quantized = quantized
        # A narrowed reader's forbidden chunk keys, by (access generation, organisation, grantees), and their rows,
        # by the snapshot's generation too.
        self._restricted_keys: LruCache[np.ndarray] = LruCache(64)  # by (access generation, organisation)
        self._forbidden_keys: LruCache[np.ndarray] = LruCache()
        self._forbidden_rows: LruCache[np.ndarray] = LruCache()
        # A hybrid search runs its keyword leg here while its own thread runs the dense product, so a question
        # costs the longer leg rather than both. One worker per core: more would only queue on the cores.
        self._keyword_legs = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="keyword-leg")

    def close(self) -> None:
        self._keyword_legs.shutdown(wait=True)

    def _eligible(self, snap: Snapshot, filters: Filters | None) -> np.ndarray | None:
        """Rows that may be returned (live, and passing the filters) as a mask; None means every live row."""
        if not filters:
            return None
        mask = np.empty(snap.rows, dtype=bool)
        for segment, start in zip(snap.segments, snap.offsets.tolist(), strict=False):
            mask[start : start + segment.rows] = segment.mask(filters, self.catalog.field_values)
        mask[snap.dead_rows] = False
        return mask

    def _readable(
        self, snap: Snapshot, filters: Filters | None, reader: Reader | None, eligible: np.ndarray | None
    ) -> tuple[np.ndarray | None, bool]:
        """`eligible` less the rows of documents `reader` may not read: the access rule applied inside the search,
        before any ranking, so a reader allowed few documents still gets top k of them; and whether it took any
        away (a reader in an organisation without restricted documents searches as its key does)."""
        if reader is None:
            return eligible, False
        org = tenant_of(filters or {})
        generation = self.catalog.access_generation()  # read after the snapshot: never older than its rows
        restricted = self._restricted_keys.get((generation, org), lambda: self.catalog.restricted_keys(org))
        if not restricted.shape[0]:
            return eligible, False  # nothing here has a list: the reader sees what the key sees
        cache_key = (generation, org, reader.grantees)
        keys = self._forbidden_keys.get(cache_key, lambda: self.catalog.forbidden_keys(org, reader, restricted))
        if not keys.shape[0]:
            return eligible, False
        rows = self._forbidden_rows.get((snap.generation, *cache_key), lambda: self._live_rows(snap, keys))
        if not rows.shape[0]:
            return eligible, False
        if eligible is None:
            eligible = np.ones(snap.rows, dtype=bool)
            eligible[snap.dead_rows] = False
        eligible[rows] = False
        return eligible, True

    @staticmethod
    def _live_rows(snap: Snapshot, keys: np.ndarray) -> np.ndarray:
        rows = snap.rows_of_keys(keys)
        return rows[rows >= 0]

    def _dense(
        self, snap: Snapshot, query: np.ndarray, eligible: np.ndarray | None
    ) -> tuple[np.ndarray | None, np.ndarray]:
        """(rows, cosine similarities) of the rows a search may return, or of the nearest candidates among them
        when there are many (`quantized.py`); rows None means every row, in order."""
        query = np.ascontiguousarray(query, dtype=np.float32)
        if eligible is not None:
            if np.count_nonzero(eligible) > self.quantized.above:  # counted, not listed: the codes' scan needs no list
                return self._quantized(snap, query, eligible)
            rows = np.flatnonzero(eligible)
            if rows.shape[0] < GATHER_BELOW * snap.rows:  # score only the rows the filter keeps
                return rows, snap.scores_of(rows, query)
        elif snap.rows - snap.dead_rows.shape[0] > self.quantized.above:
            return self._quantized(snap, query, None)
        scores = np.empty(snap.rows, dtype=np.float32)
        for segment, start in zip(snap.segments, snap.offsets.tolist(), strict=False):
            np.matmul(segment.vectors, query, out=scores[start : start + segment.rows])
        if eligible is not None:
            return rows, scores[rows]
        scores[snap.dead_rows] = -np.inf
        return None, scores

    def _quantized(
        self, snap: Snapshot, query: np.ndarray, eligible: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The eligible rows nearest by their binary codes (`quantized.best_candidates`), re-scored at full
        precision. Within a segment only the span from its first to its last eligible row is read: a tenant's rows
        are one span."""
        query_code = binary_codes(query)
        # (segment, its first row in the snapshot, the first row read, the last + 1, and either its tombstoned
        # rows or, with a mask, which rows read are eligible)
        spans = []
        for segment, start, dead in zip(snap.segments, snap.offsets.tolist(), snap.dead, strict=False):
            if eligible is None:
                spans.append((segment, start, 0, segment.rows, dead))
                continue
            local = eligible[start : start + segment.rows]
            if local.any():
                low, high = int(local.argmax()), segment.rows - int(local[::-1].argmax())
                spans.append((segment, start, low, high, local[low:high]))
        if not spans:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        # every span's distances side by side in one array: one selection over all of them
        firsts = np.cumsum([0, *(high - low for _, _, low, high, _ in spans)])
        distances = np.empty(int(firsts[-1]), dtype=np.int32)
        parts = [
            (segment.codes[low:high], distances[first : first + high - low])
            for (segment, _, low, high, _), first in zip(spans, firsts.tolist(), strict=False)
        ]
        scan(parts, query_code, self._keyword_legs)  # the keyword leg's pool: a dense question leaves it idle
        for (_, _, _, _, keep), (_, found) in zip(spans, parts, strict=True):
            if eligible is None:
                found[keep] = FAR  # the segment's tombstoned rows
            else:
                found[~keep] = FAR
        picked = np.sort(nearest(distances, self.quantized.shortlist(distances.shape[0])))
        bounds = np.searchsorted(picked, firsts)
        rows, codes = [], []
        for i, (segment, start, low, high, _) in enumerate(spans):
            local = picked[bounds[i] : bounds[i + 1]] - firsts[i]
            rows.append(local + (low + start))
            codes.append(segment.codes[low:high][local])
        best = best_candidates(np.concatenate(rows), np.concatenate(codes), query, self.quantized)
        return best, snap.scores_of(best, query)

    @staticmethod
    def _best(rows: np.ndarray | None, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The `k` best (rows, scores), best first."""
        k = min(k, scores.shape[0])
        best = np.argpartition(-scores, k - 1)[:k] if k else np.zeros(0, dtype=np.int64)
        best = best[np.argsort(-scores[best], kind="stable")]
        best = best[np.isfinite(scores[best])]
        return (best if rows is None else rows[best]), scores[best]

    def _keyword(
        self,
        snap: Snapshot,
        text: str,
        k: int,
        filters: Filters | None,
        eligible: np.ndarray | None,
        narrowed: bool = False,
    ) -> dict[int, float]:
        """Row -> BM25 score of the best `k` eligible rows. The index may hold chunks this snapshot does not (added
        since, tombstoned, leftovers of a crash) and filters other than the tenant apply after it ranks, so the
        candidate list grows until it holds k eligible rows or every match was seen."""
        if snap.rows == 0:
            return {}
        limit = max(k, 10)
        tenant = tenant_of(filters or {})  # a tenant named by a string is matched inside the index
        inside: np.ndarray | None = None
        if narrowed and eligible is not None:
            readable = int(np.count_nonzero(eligible))
            if readable <= KEYS_INSIDE_INDEX:  # a narrowed reader's few rows: matched by key inside the index,
                inside = snap.keys[np.flatnonzero(eligible)]  # so its top k are all eligible
            else:  # the tenant's ranking, filtered after: ask for as many as the reader's share needs
                among = self.keywords.tenant_count(tenant) if tenant is not None else snap.rows
                share = min(max(readable / max(among, 1), 1e-4), 1.0)
                limit = max(limit, int(k / share * 1.5))
        elif tenant is None and eligible is not None:  # other filters apply after: ask for enough at once
            share = max(float(eligible.mean()), 1e-4)
            limit = max(limit, int(k / share * 1.5))
        while True:
            found = self.keywords.search(text, limit, tenant, inside)
            keys = np.asarray([key for key, _ in found], dtype=np.int64)
            rows = snap.rows_of_keys(keys)
            ok = rows >= 0
            if eligible is not None:
                ok &= eligible[np.maximum(rows, 0)]
            if ok.sum() >= k or len(found) < limit:
                picked = np.flatnonzero(ok)[:k]
                return {int(rows[i]): found[i][1] for i in picked}
            limit *= 4

    def search(self, snap: Snapshot, request: SearchRequest) -> list[Hit]:
        """The best `request.top_k` chunks of `snap` (texts read from the catalog as they are now)."""
        if snap.chunks == 0 or request.top_k < 1:
            return []
        eligible, narrowed = self._readable(
            snap, request.filters, request.reader, self._eligible(snap, request.filters)
        )
        if eligible is not None and not eligible.any():
            return []
        if request.mode == "keyword":
            keyword = self._keyword_leg(snap, request.text, request.top_k, request.filters, eligible, narrowed)
            by_bm25 = sorted(keyword.items(), key=lambda item: item[1], reverse=True)
            return self._hits(snap, [(row, score, ("keyword",), score, None) for row, score in by_bm25])
        if request.vector is None:
            raise ValueError(f"{request.mode} search needs a query vector")
        pool = request.top_k if request.mode == "dense" else max(request.top_k, HYBRID_POOL)
        keyword_leg = (  # started first: it needs nothing from the dense leg, whose product releases the GIL
            self._keyword_legs.submit(
                # in this thread's context, so that its span is the search's child
                contextvars.copy_context().run,
                self._keyword_leg,
                snap,
                request.text,
                pool,
                request.filters,
                eligible,
                narrowed,
            )
            if request.mode == "hybrid"
            else None
        )
        with tracer.start_as_current_span("search.dense") as span:
            rows, scores = self._dense(snap, request.vector, eligible)
            rows, scores = self._best(rows, scores, pool)
            span.set_attribute("rag.candidates", len(rows))
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
        ranked: list[Ranked] = []
        with tracer.start_as_current_span("search.fuse") as span:
            span.set_attributes({"rag.candidates": len(similarity), "rag.keyword_only": len(only_keyword)})
            for row, fused in fuse(similarity, keyword, dense_weight=request.dense_weight)[: request.top_k]:
                legs = tuple(leg for leg, pool_of in (("dense", dense), ("keyword", keyword)) if row in pool_of)
                ranked.append((row, similarity[row], legs, keyword.get(row), fused))
        return self._hits(snap, ranked)

    def _keyword_leg(
        self,
        snap: Snapshot,
        text: str,
        k: int,
        filters: Filters | None,
        eligible: np.ndarray | None,
        narrowed: bool,
    ) -> dict[int, float]:
        with tracer.start_as_current_span("search.keyword") as span:
            found = self._keyword(snap, text, k, filters, eligible, narrowed)
            span.set_attribute("rag.candidates", len(found))
            return found

    def _hits(self, snap: Snapshot, ranked: list[Ranked]) -> list[Hit]:
        keys = [int(snap.keys[row]) for row, *_ in ranked]
        chunks = self.catalog.chunks(keys)
        hits = []
        for key, (_, score, found_by, keyword_score, fused_score) in zip(keys, ranked, strict=True):
            chunk = chunks.get(key)
            if chunk is not None:  # None: deleted by another process after this snapshot
                hits.append(Hit(chunk, score, found_by, keyword_score, fused_score))
        return hits

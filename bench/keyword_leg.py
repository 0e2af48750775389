"""The keyword leg's cost as the corpus grows, on realistic text, on both backends: the figures #21 starts from.

    .venv/bin/python bench/keyword_leg.py --embedded 100000 1000000 --postgres 100000
    .venv/bin/python bench/keyword_leg.py --embedded --postgres 1000000 --bulk

The corpus is `bench/scifact_corpus.py`'s: every chunk is three SciFact sentences drawn at random (seeded), so it
has real words at real frequencies, belongs to one of 50 tenants, and has a realistic vector (the normalised sum of
its sentences' embeddings). The questions are SciFact's 300 test claims (`--questions N`: the first N), embedded.
Through the storage protocol, top 5:

- keyword, hybrid, and hybrid within one tenant of 50: p50 and p95 over the questions;
- the reference: the bare dense product, a float32 matrix product over the same vectors held in RAM plus
  `argpartition`, p50, measured in the same run; every figure is printed with its ratio to it;
- embedded only: an add of 256 chunks to the built store, persisted (p50 and p95 of 30 adds), what each add to a
  large store costs now that it also commits to the keyword index;
- PostgreSQL only: the ingestion rate into the indexed tables while the corpus is built, adds of 256 chunks from 4
  concurrent writers, embedding excluded (over the whole build, and over its last tenth); a new replica's start-up,
  which builds its keyword index from the table; with `--ingestion-breakdown`, the same adds without the HNSW
  index, and the time to build that index over the whole table at once; with `--bulk`, the corpus is built
  through the store's bulk load (the adds, then both search indexes built once), and the rate counts both; then
  80 adds of 256 into the built store, with the indexes maintained.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.scifact_corpus import Corpus
from bench.store import DIMENSION, bare_dense_ms, geometric, saved_seconds
from rag.stores import SearchRequest, VectorStore

if TYPE_CHECKING:
    from rag.stores.postgres_store import PostgresVectorStore

WRITERS = 4
BATCH = 256
BULK_INDEX_MEMORY = "4GB"  # the HNSW graph of a million 384-dimension chunks, built in memory


def adds_of(size: int) -> list[int]:
    """The sizes of the adds that store `size` chunks: BATCH each, the last one shorter."""
    return [BATCH] * (size // BATCH) + ([size % BATCH] if size % BATCH else [])


def percentile(timings: list[float], q: float) -> float:
    ordered = sorted(timings)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


async def timed(search: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await search()
    return time.perf_counter() - started


async def measure(store: VectorStore, matrix: np.ndarray, label: str, corpus: Corpus, count: int) -> None:
    texts, queries = corpus.questions[:count], corpus.question_vectors[:count]
    reference = bare_dense_ms(matrix, queries)
    cases: dict[str, tuple[str, dict | None]] = {
        "keyword": ("keyword", None),
        "hybrid": ("hybrid", None),
        "hybrid, 1 tenant of 50": ("hybrid", {"orgId": "org7"}),
    }
    print(f"  {label}: bare dense product p50 {reference:.2f} ms")
    for name, (mode, filters) in cases.items():
        await store.search(SearchRequest(texts[0], queries[0], 5, filters, None, mode))  # type: ignore[arg-type]
        timings = []
        for text, query in zip(texts, queries, strict=True):
            request = SearchRequest(text, query, 5, filters, None, mode)  # type: ignore[arg-type]
            timings.append(await timed(lambda request=request: store.search(request)))
        p50, p95 = percentile(timings, 0.5), percentile(timings, 0.95)
        print(f"    {name:<24} p50 {p50:9.2f} ms ({p50 / reference:6.2f}x)   p95 {p95:9.2f} ms")


async def measure_adds(store: VectorStore, corpus: Corpus, size: int, directory: Path, adds: int = 30) -> None:
    """A 256-chunk add to the built store, persisted, beside np.save + fsync of the same vectors (the reference
    `bench/store.py` uses)."""
    timings, saves = [], []
    for n in range(adds):
        chunks, vectors = corpus.chunks(size + n * BATCH, BATCH), corpus.vectors(size + n * BATCH, BATCH)
        timings.append(await timed(lambda chunks=chunks, vectors=vectors: store.upsert(chunks, vectors)))
        saves.append(saved_seconds(directory, vectors))
    p50, p95, save = percentile(timings, 0.5), percentile(timings, 0.95), percentile(saves, 0.5)
    print(
        f"    add of {BATCH} chunks, persisted  p50 {p50:9.2f} ms ({p50 / save:6.1f}x)   p95 {p95:9.2f} ms   "
        f"np.save+fsync p50 {save:.2f} ms"
    )


async def build(
    store: VectorStore,
    corpus: Corpus,
    size: int,
    parts: list[int],
    writers: int,
    first: int = 0,
    matrix: np.ndarray | None = None,
) -> np.ndarray:
    """Store `size` chunks (corpus chunks from `first`) in adds of the given sizes, `writers` at a time; returns their
    vectors (`matrix`, or the corpus's). Prints the rate over the whole build and over its last tenth (the
    rate a store of that size sustains)."""
    if matrix is None:
        matrix = corpus.vectors(first, size)
    starts = np.cumsum([first, *parts[:-1]]).tolist()
    queue = list(zip(starts, parts, strict=True))
    progress = {"done": 0, "at_nine_tenths": 0, "nine_tenths": 0.0}
    started = time.perf_counter()

    async def writer() -> None:
        while queue:
            start, n = queue.pop(0)
            await store.upsert(corpus.chunks(start, n), matrix[start - first : start - first + n])
            progress["done"] += n
            if not progress["nine_tenths"] and progress["done"] >= 0.9 * size:
                progress["nine_tenths"], progress["at_nine_tenths"] = time.perf_counter(), progress["done"]

    await asyncio.gather(*(writer() for _ in range(writers)))
    finished = time.perf_counter()
    last = (size - progress["at_nine_tenths"]) / max(finished - progress["nine_tenths"], 1e-9)
    print(
        f"  built {size:,} chunks in {finished - started:.0f} s: {size / (finished - started):,.0f} chunks/s, "
        f"the last tenth {last:,.0f} chunks/s ({writers} writers)"
    )
    return matrix


async def ingestion_without_hnsw(store: PostgresVectorStore, corpus: Corpus, dsn: str, size: int) -> None:
    """Where PostgreSQL's ingestion time goes: the same adds with the HNSW index dropped, then the time to build
    the index over the whole table at once (the bulk path: load, then index)."""
    import asyncpg

    from rag.stores.postgres_store import search_indexes

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP INDEX rag_chunks_embedding")
        extra = 20 * WRITERS * BATCH
        await build(store, corpus, extra, [BATCH] * (extra // BATCH), WRITERS, first=size)
        started = time.perf_counter()
        await conn.execute(search_indexes(store.ef_construction)["rag_chunks_embedding"])
        built = time.perf_counter() - started
        rows = await conn.fetchval("SELECT count(*) FROM rag_chunks")
        print(f"  without the HNSW index (above); building it over {rows:,} rows at once: {built:.0f} s")
    finally:
        await conn.close()


async def embedded(size: int, corpus: Corpus, count: int) -> None:
    from rag.stores.numpy_store import NumpyVectorStore

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        store = await NumpyVectorStore.open(Path(tmp), "bench", DIMENSION, auto_compact=False)
        print(f"\nembedded, {size:,} chunks")
        matrix = await build(store, corpus, size, geometric(size), 1)  # the layout compaction keeps
        await measure(store, matrix, "embedded", corpus, count)
        await measure_adds(store, corpus, size, Path(tmp))
        await store.aclose()


async def postgres(size: int, corpus: Corpus, count: int, breakdown: bool, bulk: bool) -> None:
    from bench.pg_server import sized_server
    from rag.stores.postgres_store import PostgresVectorStore

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        server = sized_server(Path(tmp) / "pg")
        try:
            store = await PostgresVectorStore.open(server.get_uri(), "bench", DIMENSION, Path(tmp) / "keywords")
            print(f"\nPostgreSQL, {size:,} chunks")
            adds = adds_of(size)
            if bulk:
                matrix = corpus.vectors(0, size)  # made first: embedding is not timed
                started = time.perf_counter()
                async with store.bulk_load(index_memory=BULK_INDEX_MEMORY):
                    await build(store, corpus, size, adds, WRITERS, matrix=matrix)
                    loaded = time.perf_counter()
                finished = time.perf_counter()
                print(
                    f"  bulk load: adds {loaded - started:.0f} s, then the indexes built in {finished - loaded:.0f} s "
                    f"(maintenance_work_mem {BULK_INDEX_MEMORY}): {size / (finished - started):,.0f} chunks/s "
                    "into the indexed tables"
                )
            else:
                matrix = await build(store, corpus, size, adds, WRITERS)
            await measure(store, matrix, "PostgreSQL", corpus, count)
            if bulk:  # what adds cost once the store is built: every insert goes into both indexes again
                extra = 20 * WRITERS * BATCH
                print("  adds into the built store, indexes maintained:")
                await build(store, corpus, extra, [BATCH] * (extra // BATCH), WRITERS, first=size)
            started = time.perf_counter()
            replica = await PostgresVectorStore.open(server.get_uri(), "bench", DIMENSION, Path(tmp) / "new-replica")
            elapsed = time.perf_counter() - started
            print(f"  a new replica's start, its keyword index built from the table: {elapsed:.1f} s")
            await replica.aclose()
            if breakdown:
                await ingestion_without_hnsw(store, corpus, server.get_uri(), size)
            await store.aclose()
        finally:
            server.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embedded", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--postgres", type=int, nargs="*", default=[100_000])
    parser.add_argument("--questions", type=int, default=300, help="the first N test claims (300: all)")
    parser.add_argument(
        "--ingestion-breakdown",
        action="store_true",
        help="PostgreSQL: also time adds without the HNSW index, and building it at once (drops it: minutes at 1M)",
    )
    parser.add_argument(
        "--bulk",
        action="store_true",
        help="PostgreSQL: build the corpus through the store's bulk load (indexes built once, at its end)",
    )
    args = parser.parse_args()
    corpus = asyncio.run(Corpus.load())
    for size in args.embedded:
        asyncio.run(embedded(size, corpus, args.questions))
    for size in args.postgres:
        asyncio.run(postgres(size, corpus, args.questions, args.ingestion_breakdown, args.bulk))


if __name__ == "__main__":
    main()

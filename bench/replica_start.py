"""A new PostgreSQL replica's start: its keyword index built from the chunk table (the reference: what every
replica did before) against one started from a replica's published snapshot (rag/stores/pg_keyword_snapshots.py),
then caught up on what was written after the snapshot.

    BENCH_TMP=/tmp/benchtmp .venv/bin/python bench/replica_start.py --size 1000000 --since 10000
    BENCH_TMP=/tmp/benchtmp .venv/bin/python bench/replica_start.py --size 10000000 --max-wal-size 2GB  # 40 GB of disk

The chunks are `bench/scifact_corpus.py`'s (three real SciFact sentences each, 50 tenants, realistic vectors),
stored through the store's adds by 4 writers. The two search indexes (HNSW and the tenant B-tree) are dropped
first and the bulk-load lock held while the bench runs, as during a bulk load: a replica's start reads neither,
and building a graph over every vector would only lengthen the bench. Printed:

- the reference: a replica starting on an empty keyword directory with no snapshot, which indexes every row;
- a snapshot published by that replica (its time and size), then `--since` more chunks written through the store;
- a replica starting on an empty keyword directory, which downloads the snapshot, checks it, installs it and
  catches up on the `--since` chunks before it answers; and its ratio to the reference;
- that the two replicas give the same keyword top 10 for SciFact's 300 claims (checked, not timed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg

from bench.keyword_leg import WRITERS, adds_of, build
from bench.scifact_corpus import Corpus
from bench.store import DIMENSION
from rag.stores import SearchRequest
from rag.stores.pg_schema import BULK_LOCK, search_indexes
from rag.stores.postgres_store import PostgresVectorStore

BLOCK = 1_000_000  # chunks whose vectors are made and stored at a time (a million is 1.5 GB of float32)


def directory_bytes(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


async def keyword_tops(store: PostgresVectorStore, questions: list[str]) -> list[list[str]]:
    tops = []
    for question in questions:
        hits = await store.search(SearchRequest(question, None, 10, mode="keyword"))
        tops.append([hit.chunk.id for hit in hits])
    return tops


async def run(size: int, since: int, corpus: Corpus) -> None:
    from bench.pg_server import sized_server

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        server = sized_server(Path(tmp) / "pg")
        dsn = server.get_uri()
        try:
            writer = await PostgresVectorStore.open(dsn, "bench", DIMENSION, Path(tmp) / "writer")
            held = await asyncpg.connect(dsn)  # as a bulk load: no start builds the dropped indexes meanwhile
            await held.execute("SELECT pg_advisory_lock($1)", BULK_LOCK)
            for name in search_indexes(writer.ef_construction):
                await held.execute(f"DROP INDEX IF EXISTS {name}")
            print(f"\nPostgreSQL, {size:,} chunks (search indexes dropped), then {since:,} more")
            for first in range(0, size, BLOCK):
                n = min(BLOCK, size - first)
                await build(writer, corpus, n, adds_of(n), WRITERS, first=first, matrix=corpus.vectors(first, n))
            await held.execute("VACUUM (ANALYZE) rag_chunks")

            started = time.perf_counter()
            reference = await PostgresVectorStore.open(dsn, "bench", DIMENSION, Path(tmp) / "reference")
            from_table = time.perf_counter() - started
            print(f"  reference: a new replica's start, its keyword index built from the table: {from_table:.1f} s")
            started = time.perf_counter()
            snapshot = await reference._keywords.publish(reference._pool)
            published = time.perf_counter() - started
            size_bytes = int(await held.fetchval("SELECT bytes FROM rag_keyword_snapshots WHERE id = $1", snapshot))
            print(
                f"  snapshot {snapshot} published in {published:.1f} s: {size_bytes / 2**20:,.0f} MiB "
                f"(the index directory: {directory_bytes(Path(tmp) / 'reference') / 2**20:,.0f} MiB)"
            )
            if since:
                await build(writer, corpus, since, adds_of(since), WRITERS, first=size)

            started = time.perf_counter()
            replica = await PostgresVectorStore.open(dsn, "bench", DIMENSION, Path(tmp) / "replica")
            from_snapshot = time.perf_counter() - started
            print(
                f"  a new replica's start from the snapshot, {since:,} chunks caught up: {from_snapshot:.1f} s "
                f"({from_snapshot / from_table:.2f}x the reference)"
            )
            questions = corpus.questions
            expected = await keyword_tops(reference, questions)  # caught up here on the same writes
            same = sum(a == b for a, b in zip(expected, await keyword_tops(replica, questions), strict=True))
            print(f"  the same keyword top 10 on both replicas: {same} of {len(questions)} questions")
            print(
                f"  documents: reference {reference.layout()['keyword_documents']:,}, "
                f"replica {replica.layout()['keyword_documents']:,}, table {replica.count:,}"
            )
            for store in (replica, reference, writer):
                await store.aclose()
            await held.close()
        finally:
            server.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--since", type=int, default=10_000, help="chunks written after the snapshot")
    parser.add_argument(
        "--max-wal-size", default="8GB", help="PostgreSQL's WAL between checkpoints (less: less disk at ten million)"
    )
    args = parser.parse_args()
    from bench import pg_server

    pg_server.SETTINGS["max_wal_size"] = args.max_wal_size
    corpus = asyncio.run(Corpus.load())
    asyncio.run(run(args.size, args.since, corpus))


if __name__ == "__main__":
    main()

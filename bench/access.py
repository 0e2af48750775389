"""What access lists cost a search, on both backends, on realistic text and vectors: the figures of #32.

    .venv/bin/python bench/access.py --embedded 1000000 --postgres 1000000
    .venv/bin/python bench/access.py --embedded 20000 --postgres 20000 --questions 50   # a smoke run

The corpus is `bench/scifact_corpus.py`'s (three SciFact sentences a chunk, one chunk a document, 50 tenants,
realistic vectors; the questions are SciFact's test claims). Every document of tenant org7 is restricted: its list
names one of 3,000 users, one of 1,000 teams and one of 10 departments (so the store holds thousands of distinct
grantees), and org8's
documents have no list. Through the storage protocol, hybrid, top 5, p50 and p95 over the questions; each question
is asked by every caller of the organisation in turn (so the machine's drift weighs on each alike), and each figure
is set beside the organisation's key (no reader) in the same run:

- org7: its key; a user who may read 10% of it (a department), and one who may read 0.1% (a team), each with
  its recall: the share of the exact top 5 of its readable chunks (a NumPy product over them) that the dense search
  returns, and how often the hybrid search returns a full top 5;
- org8, which has no restricted document: its key, and a user (what lists elsewhere cost a search that needs none);
- the bare dense product over the whole store (float32 matrix in RAM + argpartition), the reference of the other
  benches, for scale.

A reader's first search after a change of any list reads its forbidden chunk keys (cached after it): `first` is
that search's time; the other figures are of the searches after it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.keyword_leg import BATCH, BULK_INDEX_MEMORY, WRITERS, adds_of, percentile
from bench.scifact_corpus import Corpus
from bench.store import DIMENSION, TENANTS, bare_dense_ms, geometric
from rag.access import AccessList, Reader
from rag.stores import SearchRequest, VectorStore
from rag.stores.base import AccessByDocument

RESTRICTED, OPEN = 7, 8  # tenant numbers
USERS, TEAMS, DEPARTMENTS = 3000, 1000, 10
READERS = {
    "reads 10%": Reader("reader-10", frozenset({"dept0"})),
    "reads 0.1%": Reader("reader-01", frozenset({"team0"})),
}


def access_of(i: int) -> AccessList | None:
    """Document d{i}'s list: restricted in org7 (by its place in the tenant), none elsewhere."""
    if i % TENANTS != RESTRICTED:
        return None
    j = i // TENANTS
    return AccessList(users=(f"user{j % USERS}",), groups=(f"team{j % TEAMS}", f"dept{j % DEPARTMENTS}"))


def readable_rows(size: int, reader: Reader) -> np.ndarray:
    rows = np.arange(RESTRICTED, size, TENANTS)
    return np.asarray([i for i in rows.tolist() if reader.may_read(access_of(i))], dtype=np.int64)


async def build(store: VectorStore, corpus: Corpus, matrix: np.ndarray, parts: list[int], writers: int) -> None:
    starts = np.cumsum([0, *parts[:-1]]).tolist()
    queue = list(zip(starts, parts, strict=True))
    started = time.perf_counter()

    async def writer() -> None:
        while queue:
            start, n = queue.pop(0)
            access: AccessByDocument = {f"d{i}": access_of(i) for i in range(start, start + n)}
            await store.upsert(corpus.chunks(start, n), matrix[start : start + n], access=access)

    await asyncio.gather(*(writer() for _ in range(writers)))
    elapsed = time.perf_counter() - started
    print(f"  built {matrix.shape[0]:,} chunks in {elapsed:.0f} s ({matrix.shape[0] / elapsed:,.0f} chunks/s)")


async def timings(
    store: VectorStore, corpus: Corpus, count: int, org: int, reader: Reader | None, start: int = 0
) -> list[float]:
    out = []
    asked = slice(start, start + count)
    for text, query in zip(corpus.questions[asked], corpus.question_vectors[asked], strict=True):
        request = SearchRequest(text, query, 5, {"orgId": f"org{org}"}, None, "hybrid", reader)
        started = time.perf_counter()
        await store.search(request)
        out.append(time.perf_counter() - started)
    return out


async def recall(store: VectorStore, corpus: Corpus, matrix: np.ndarray, count: int, reader: Reader) -> str:
    """Dense recall@5 against the exact top 5 of the reader's rows, and the share of full hybrid answers."""
    rows = readable_rows(matrix.shape[0], reader)
    found = expected = full = 0
    for text, query in zip(corpus.questions[:count], corpus.question_vectors[:count], strict=True):
        exact = rows[np.argsort(-(matrix[rows] @ query))[:5]]
        request = SearchRequest(text, query, 5, {"orgId": f"org{RESTRICTED}"}, None, "dense", reader)
        got = {int(hit.chunk.document_id[1:]) for hit in await store.search(request)}
        found += len(got & set(exact.tolist()))
        expected += len(exact)
        hybrid = SearchRequest(text, query, 5, {"orgId": f"org{RESTRICTED}"}, None, "hybrid", reader)
        full += len(await store.search(hybrid)) == min(5, rows.shape[0])
    return f"recall@5 {found / expected:.4f} over {rows.shape[0]:,} readable chunks, full top 5 in {full}/{count}"


async def measure(store: VectorStore, corpus: Corpus, matrix: np.ndarray, count: int, label: str) -> None:
    reference = bare_dense_ms(matrix, corpus.question_vectors[:count])
    print(f"  {label}: bare dense product over the whole store p50 {reference:.2f} ms")
    # Each question is asked by every caller of an organisation in turn, so that the machine's drift over the run
    # (a shared VM) weighs on each alike; the first search of each reader (its forbidden keys read) apart.
    callers: dict[int, dict[str, Reader | None]] = {
        RESTRICTED: {"its key": None, **{f"a user who {name}": reader for name, reader in READERS.items()}},
        OPEN: {"its key": None, "a user": Reader("someone", frozenset({"team3"}))},
    }
    for org, readers in callers.items():
        first = {name: (await timings(store, corpus, 1, org, reader))[0] for name, reader in readers.items()}
        paired: dict[str, list[float]] = {name: [] for name in readers}
        for n in range(count):
            for name, reader in readers.items():
                paired[name] += await timings(store, corpus, 1, org, reader, start=n)
        base = percentile(paired["its key"], 0.5)
        kind = "every document restricted" if org == RESTRICTED else "no document restricted"
        print(f"    org{org} ({kind}), hybrid top 5:")
        for name, reader in readers.items():
            p50, p95 = percentile(paired[name], 0.5), percentile(paired[name], 0.95)
            print(
                f"      {name:<22} p50 {p50:8.2f} ms ({p50 / base:5.2f}x)   p95 {p95:8.2f} ms"
                f"   first {first[name] * 1000:8.2f} ms"
            )
            if reader is not None and org == RESTRICTED:
                print(f"        {await recall(store, corpus, matrix, count, reader)}")


async def embedded(size: int, corpus: Corpus, count: int) -> None:
    from rag.stores.numpy_store import NumpyVectorStore

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        store = await NumpyVectorStore.open(Path(tmp), "bench", DIMENSION, auto_compact=False)
        print(f"\nembedded, {size:,} chunks")
        matrix = corpus.vectors(0, size)
        await build(store, corpus, matrix, geometric(size), 1)  # the layout compaction keeps
        await measure(store, corpus, matrix, count, "embedded")
        await store.aclose()


async def postgres(size: int, corpus: Corpus, count: int) -> None:
    from bench.pg_server import sized_server
    from rag.stores.postgres_store import PostgresVectorStore

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        server = sized_server(Path(tmp) / "pg")
        try:
            store = await PostgresVectorStore.open(server.get_uri(), "bench", DIMENSION, Path(tmp) / "keywords")
            print(f"\nPostgreSQL, {size:,} chunks (bulk load)")
            matrix = corpus.vectors(0, size)
            async with store.bulk_load(index_memory=BULK_INDEX_MEMORY):
                await build(store, corpus, matrix, adds_of(size), WRITERS)
            await measure(store, corpus, matrix, count, "PostgreSQL")
            await store.aclose()
        finally:
            server.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embedded", type=int, nargs="*", default=[1_000_000])
    parser.add_argument("--postgres", type=int, nargs="*", default=[1_000_000])
    parser.add_argument("--questions", type=int, default=300, help="the first N test claims (300: all)")
    args = parser.parse_args()
    corpus = asyncio.run(Corpus.load())
    print(f"adds of {BATCH}; org{RESTRICTED}'s lists name {USERS:,} users and {TEAMS + DEPARTMENTS:,} groups")
    for size in args.embedded:
        asyncio.run(embedded(size, corpus, args.questions))
    for size in args.postgres:
        asyncio.run(postgres(size, corpus, args.questions))


if __name__ == "__main__":
    main()

"""PostgreSQL's HNSW graph over a million realistic vectors: how long each `ef_construction` takes to build it, and
what recall each gives, beside the exact top 10.

    .venv/bin/python bench/hnsw_build.py                   # 1,000,000 chunks, ef_construction 64, 40, 128
    .venv/bin/python bench/hnsw_build.py --size 100000 --ef-construction 64 32

The chunks, their vectors and the questions are `bench/scifact_corpus.py`'s (as `bench/keyword_leg.py` uses): each
chunk's vector is the normalised sum of its three SciFact sentences' embeddings, which stands in for embedding a
million chunks; the script prints how close it stands to embedding the chunk itself (the cosine between the two over
a sample). Random vectors would not do: recall, and the build's time, depend on how the vectors cluster.

The reference is the exact top 10 of each question, a NumPy product over the same vectors. For each ef_construction
in turn, the store's bulk load builds both search indexes over the table (the first through the load's adds, 4
writers of 256, which gives the end-to-end rate; the others rebuild over the same rows), then the store's dense
search, top 10, is asked each question at several `PG_EF_SEARCH` values: recall@10 against the exact top 10, and
the p50 of a search.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.keyword_leg import BULK_INDEX_MEMORY, WRITERS, adds_of, build, percentile
from bench.scifact_corpus import Corpus
from config import Settings
from rag.embedders.factory import build_embedder
from rag.stores import SearchRequest
from rag.stores.postgres_store import PostgresVectorStore

EF_SEARCH = (40, 100, 200)
TOP = 10
FIDELITY_SAMPLE = 300


async def fidelity(corpus: Corpus, size: int) -> None:
    """How close the summed vectors stand to the chunks' own embeddings."""
    rows = np.random.default_rng(0).choice(size, FIDELITY_SAMPLE, replace=False)
    texts = [corpus.chunks(int(i), 1)[0].text for i in rows]
    embedder = await build_embedder(Settings())
    try:
        embedded = await embedder.embed_documents(texts)
    finally:
        await embedder.aclose()
    summed = np.concatenate([corpus.vectors(int(i), 1) for i in rows])
    cosines = np.sum(embedded * summed, axis=1)
    print(
        f"  summed sentence vectors against the chunks' own embeddings ({FIDELITY_SAMPLE} chunks): cosine mean "
        f"{cosines.mean():.3f}, 5th percentile {np.percentile(cosines, 5):.3f}"
    )


def exact_top(matrix: np.ndarray, queries: np.ndarray) -> list[set[str]]:
    """The reference: each question's exact top 10 chunk ids."""
    found = []
    for start in range(0, len(queries), 50):
        scores = queries[start : start + 50] @ matrix.T
        for row in scores:
            best = np.argpartition(-row, TOP)[:TOP]
            found.append({f"d{i}:0" for i in best})
    return found


async def recall(store: PostgresVectorStore, corpus: Corpus, exact: list[set[str]]) -> None:
    for ef_search in EF_SEARCH:
        store.ef_search = ef_search
        timings, hits = [], []
        for text, query, expected in zip(corpus.questions, corpus.question_vectors, exact, strict=True):
            started = time.perf_counter()
            found = await store.search(SearchRequest(text, query, TOP, None, None, "dense"))
            timings.append(time.perf_counter() - started)
            hits.append(len({hit.chunk.id for hit in found} & expected) / TOP)
        print(
            f"    PG_EF_SEARCH {ef_search:>3}: recall@{TOP} {np.mean(hits):.4f} against the exact top {TOP}, "
            f"search p50 {percentile(timings, 0.5):.2f} ms"
        )


async def run(size: int, ef_constructions: list[int]) -> None:
    from bench.pg_server import sized_server

    corpus = await Corpus.load()
    print(f"{size:,} chunks from {len(corpus.sentences):,} distinct sentences")
    await fidelity(corpus, size)
    matrix = corpus.vectors(0, size)
    started = time.perf_counter()
    exact = exact_top(matrix, corpus.question_vectors)
    print(f"  the reference, the exact top {TOP} by a NumPy product: {time.perf_counter() - started:.1f} s in all")

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        server = sized_server(Path(tmp) / "pg")
        try:
            store = await PostgresVectorStore.open(
                server.get_uri(), "bench", matrix.shape[1], Path(tmp) / "keywords", ef_construction=ef_constructions[0]
            )
            for n, ef_construction in enumerate(ef_constructions):
                store.ef_construction = ef_construction
                print(f"\n  ef_construction {ef_construction}")
                started = time.perf_counter()
                async with store.bulk_load(index_memory=BULK_INDEX_MEMORY):
                    if n == 0:
                        await build(store, corpus, size, adds_of(size), WRITERS, matrix=matrix)
                    loaded = time.perf_counter()
                finished = time.perf_counter()
                rate = f": {size / (finished - started):,.0f} chunks/s end to end" if n == 0 else ""
                print(f"  both indexes built in {finished - loaded:.0f} s (HNSW alone: logged above){rate}")
                await recall(store, corpus, exact)
            await store.aclose()
        finally:
            server.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--ef-construction", type=int, nargs="+", default=[64, 40, 128])
    args = parser.parse_args()
    logging.basicConfig(format="  %(message)s")
    logging.getLogger("rag.stores.postgres_store").setLevel(logging.INFO)
    asyncio.run(run(args.size, args.ef_construction))


if __name__ == "__main__":
    main()

"""Backup, export and import at scale, each beside its reference in the same run: the figures of #33.

    .venv/bin/python bench/backup.py --size 1000000 --pg-size 200000
    .venv/bin/python bench/backup.py --size 20000 --pg-size 5000 --queries 50    # a smoke run

The store is `bench/scifact_corpus.py`'s corpus (real SciFact sentences and realistic vectors, 50 tenants) plus
SciFact itself as tenant `scifact`, added through the service's chunker and embedder, so that a store answers
SciFact's test claims and its nDCG@10 can be compared before and after. Then:

1. Backup drill: a writer adds a one-chunk document after another while `python -m rag.backup` (a process of its
   own, as an operator runs it) backs the store up. Printed: the backup's time beside a bare copy of the same files
   (`shutil.copytree`), the writes' latency (p50, max) during the backup beside the same writer's before it, and
   the lock time the backup reports. The backup is then opened: every write acknowledged before the backup began is
   in it, every document whole, and SciFact's nDCG@10 (dense, top 10) is what the live store gives.
2. Export and import of the whole store: rates beside the rate the store was built at (its own adds of the same
   vectors), and the export beside the bare copy.
3. SciFact's tenant exported, imported into PostgreSQL, exported again and imported into a new embedded store: the
   same top 10 (ids, scores within 1e-5) for every claim; PostgreSQL's nDCG@10 beside it.
4. Import into PostgreSQL through the bulk path, beside the bulk load of the same chunks (`--pg-size` of them).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.keyword_leg import BULK_INDEX_MEMORY, WRITERS, adds_of, percentile
from bench.retrieval import DEFAULT_DATASET, ndcg_at_k, read_jsonl, read_qrels
from bench.scifact_corpus import Corpus
from bench.store import geometric
from config import PROJECT_DIR, Settings
from rag.archive.exporter import ArchiveWriter, export_archive
from rag.archive.format import Manifest
from rag.archive.importer import import_archive
from rag.embedders.factory import build_embedder
from rag.errors import DocumentNotFound
from rag.ingest.indexer import Indexer
from rag.stores import SearchRequest, VectorStore
from rag.stores.base import StoredDocument
from rag.stores.numpy_store import NumpyVectorStore
from rag.types import Chunk, Embedder

_IMPORT = importlib.import_module("rag.import")  # `import` is a keyword
IMPORT_WRITERS, DOCUMENTS_PER_ADD = _IMPORT.POSTGRES_WRITERS, _IMPORT.POSTGRES_DOCUMENTS_PER_ADD

SCIFACT_ORG = "scifact"


def rate(count: int, seconds: float) -> str:
    return f"{seconds:7.1f} s ({count / seconds:>9,.0f} chunks/s)"


async def build(store: VectorStore, corpus: Corpus, matrix: np.ndarray) -> float:
    started = time.perf_counter()
    start = 0
    for n in geometric(matrix.shape[0]):  # the layout compaction keeps
        await store.upsert(corpus.chunks(start, n), matrix[start : start + n])
        start += n
    return time.perf_counter() - started


async def add_scifact(store: VectorStore, embedder: Embedder, settings: Settings, limit: int | None) -> None:
    corpus = read_jsonl(DEFAULT_DATASET / "corpus.jsonl")[:limit]
    indexer = Indexer(embedder, store, settings.chunk_size, settings.chunk_overlap)
    started = time.perf_counter()
    for i in range(0, len(corpus), 256):
        batch = corpus[i : i + 256]
        await indexer.add(
            [f"{d.get('title', '')} {d['text']}".strip() for d in batch],
            [{"orgId": SCIFACT_ORG} for _ in batch],
            [d["_id"] for d in batch],
        )
    print(f"  SciFact: {len(corpus):,} documents embedded and added in {time.perf_counter() - started:.0f} s")


def bare_copy_seconds(source: Path, target: Path) -> float:
    """The reference: `cp -r` of the store's files. In another process: a file of a live SQLite database opened and
    closed in this one would drop this process's locks on it (POSIX locks are per process), as SQLite warns."""
    started = time.perf_counter()
    subprocess.run(["cp", "-r", str(source), str(target)], stderr=subprocess.DEVNULL, check=False)
    elapsed = time.perf_counter() - started
    shutil.rmtree(target)
    return elapsed


class SciFact:
    def __init__(self, embedder: Embedder, limit: int) -> None:
        queries = {q["_id"]: q["text"] for q in read_jsonl(DEFAULT_DATASET / "queries.jsonl")}
        self.qrels = read_qrels(DEFAULT_DATASET / "qrels_test.tsv")
        self.ids = [q for q in self.qrels if q in queries][:limit]
        self.texts = [queries[q] for q in self.ids]
        self.embedder = embedder
        self.vectors: np.ndarray | None = None

    async def top10(self, store: VectorStore) -> list[list[tuple[str, float]]]:
        if self.vectors is None:
            self.vectors = np.concatenate([await self.embedder.embed([text]) for text in self.texts])
        out = []
        for text, vector in zip(self.texts, self.vectors, strict=True):
            hits = await store.search(SearchRequest(text, vector, 10, {"orgId": SCIFACT_ORG}, None, "dense"))
            out.append([(hit.chunk.id, hit.score) for hit in hits])
        return out

    def ndcg(self, results: list[list[tuple[str, float]]]) -> float:
        scores = []
        for query_id, hits in zip(self.ids, results, strict=True):
            ranked = list(dict.fromkeys(chunk_id.rsplit(":", 1)[0] for chunk_id, _ in hits))
            scores.append(ndcg_at_k(ranked, self.qrels[query_id], 10))
        return float(np.mean(scores))


def compare(left: list[list[tuple[str, float]]], right: list[list[tuple[str, float]]]) -> str:
    same_ids = sum([c for c, _ in a] == [c for c, _ in b] for a, b in zip(left, right, strict=True))
    worst = max(
        (abs(x - y) for a, b in zip(left, right, strict=True) for (_, x), (_, y) in zip(a, b, strict=False)),
        default=0.0,
    )
    return f"same top 10 for {same_ids}/{len(left)} claims, largest score difference {worst:.2e}"


async def backup_drill(store: NumpyVectorStore, directory: Path, tmp: Path, scifact: SciFact, before: list) -> None:
    print("\n1. backup while a writer adds documents")
    bare = bare_copy_seconds(directory, tmp / "bare-copy")
    rng = np.random.default_rng(3)

    async def write(n: int) -> float:
        vector = rng.standard_normal((1, store.dimension)).astype(np.float32)
        vector /= np.linalg.norm(vector)
        began = time.perf_counter()
        await store.upsert(_chunk(n), vector)  # one chunk: one segment, one commit
        return time.perf_counter() - began

    idle = [await write(n) for n in range(200)]
    acknowledged: list[tuple[float, str]] = []
    during: list[float] = []
    env = {**os.environ, "DATA_DIR": str(directory.parent), "PYTHONPATH": str(PROJECT_DIR)}
    began = time.time()
    process = subprocess.Popen(  # noqa: ASYNC220 - polled between writes, never waited on
        [sys.executable, "-m", "rag.backup", str(tmp / "backup")], cwd=tmp, env=env, stderr=subprocess.PIPE, text=True
    )
    n = 1000
    while process.poll() is None:
        n += 1
        during.append(await write(n))
        acknowledged.append((time.time(), f"w{n}"))
    _, stderr = process.communicate()
    elapsed = time.time() - began
    if process.returncode != 0:
        raise SystemExit(f"backup failed: {stderr}")
    print("  " + stderr.strip().splitlines()[-1])
    print(f"  backup {elapsed:7.1f} s   bare copy of the same files {bare:7.1f} s   ({elapsed / bare:.2f}x)")
    print(
        f"  a write (one chunk) idle p50 {percentile(idle, 0.5):.1f} ms, max {max(idle) * 1000:.1f} ms; during the "
        f"backup p50 {percentile(during, 0.5):.1f} ms, max {max(during) * 1000:.1f} ms over {len(during)} writes"
    )
    restored = await NumpyVectorStore.open(tmp / "backup" / "store", store.embedding_model, store.dimension)
    try:
        expected = {doc for at, doc in acknowledged if at < began} | {f"w{n}" for n in range(200)}
        missing = [doc for doc in expected if not await _holds(restored, doc)]
        print(
            f"  the backup holds {restored.count:,} chunks; writes acknowledged before it began missing: {len(missing)}"
        )
        after = await scifact.top10(restored)
        print(
            f"  SciFact nDCG@10 live {scifact.ndcg(before):.4f}, from the backup {scifact.ndcg(after):.4f}; "
            + compare(before, after)
        )
    finally:
        await restored.aclose()
    shutil.rmtree(tmp / "backup")


def _chunk(n: int) -> list[Chunk]:
    return [Chunk(f"w{n}:0", f"w{n}", f"written during the drill, number {n}", {"orgId": "writers"})]


async def _holds(store: VectorStore, document_id: str) -> bool:
    try:
        await store.get_document(document_id)
    except DocumentNotFound:
        return False
    return True


async def run(args: argparse.Namespace) -> None:
    settings = Settings()
    corpus = await Corpus.load()
    embedder = await build_embedder(settings)
    scifact = SciFact(embedder, args.queries)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as name:
        tmp = Path(name)
        if args.postgres_import_only:
            await postgres_legs(args, tmp, corpus, embedder, scifact, None)
            return
        directory = tmp / "data" / "store"
        store = await NumpyVectorStore.open(directory, embedder.model_name, embedder.dimension, auto_compact=False)
        matrix = corpus.vectors(0, args.size)
        built = await build(store, corpus, matrix)
        print(f"embedded store: {args.size:,} chunks built by its own adds in {rate(args.size, built)}")
        if not args.export_only:
            await add_scifact(store, embedder, settings, args.scifact_documents)
            before = await scifact.top10(store)
            await backup_drill(store, directory, tmp, scifact, before)

        print("\n2. export and import of the whole store")
        bare = bare_copy_seconds(directory, tmp / "bare-copy")
        started = time.perf_counter()
        manifest = await export_archive(
            store, tmp / "all.tar", embedder.model_name, embedder.dimension, settings.chunk_size, 0
        )
        exported = time.perf_counter() - started
        print(
            f"  export  {rate(manifest.chunks, exported)}   bare copy of the store's files {bare:.1f} s "
            f"({exported / bare:.2f}x)"
        )
        fresh = await NumpyVectorStore.open(tmp / "imported", embedder.model_name, embedder.dimension)
        report = await import_archive(tmp / "all.tar", fresh, embedder)
        print(
            f"  import  {rate(report.chunks, report.seconds)} (checked whole first: {report.check_seconds:.1f} s)   "
            "the store's own adds "
            f"{rate(args.size, built)} ({(report.chunks / report.seconds) / (args.size / built):.2f}x their rate)"
        )
        await fresh.aclose()
        shutil.rmtree(tmp / "imported")
        (tmp / "all.tar").unlink()

        if args.export_only:
            await store.aclose()
            return
        print("\n3. SciFact: embedded -> PostgreSQL -> embedded")
        await export_archive(
            store, tmp / "scifact.tar", embedder.model_name, embedder.dimension, 1000, 200, SCIFACT_ORG
        )
        await store.aclose()
        await postgres_legs(args, tmp, corpus, embedder, scifact, before)


async def postgres_legs(
    args: argparse.Namespace, tmp: Path, corpus: Corpus, embedder: Embedder, scifact: SciFact, before: list | None
) -> None:
    from bench.pg_server import sized_server
    from rag.stores.postgres_store import PostgresVectorStore

    server = sized_server(tmp / "pg")
    try:
        for name in ("roundtrip", "bulk", "imported"):
            server.psql(f"CREATE DATABASE {name};")
        if before is not None:  # section 3
            pg = await PostgresVectorStore.open(
                server.get_uri("roundtrip"), embedder.model_name, embedder.dimension, tmp / "k1"
            )
            await import_archive(tmp / "scifact.tar", pg, embedder, bulk_mode=pg.bulk_load())
            on_pg = await scifact.top10(pg)
            await export_archive(
                pg, tmp / "scifact-2.tar", embedder.model_name, embedder.dimension, 1000, 200, SCIFACT_ORG
            )
            await pg.aclose()
            back = await NumpyVectorStore.open(tmp / "back", embedder.model_name, embedder.dimension)
            await import_archive(tmp / "scifact-2.tar", back, embedder)
            again = await scifact.top10(back)
            await back.aclose()
            print(f"  embedded -> PostgreSQL -> embedded: {compare(before, again)}")
            print(
                f"  nDCG@10 embedded {scifact.ndcg(before):.4f}, PostgreSQL (HNSW) {scifact.ndcg(on_pg):.4f}; "
                + compare(before, on_pg)
            )

        print(f"\n4. PostgreSQL: {args.pg_size:,} chunks, import through the bulk path beside the bulk load")
        size = args.pg_size
        matrix = corpus.vectors(0, size)
        bulk = await PostgresVectorStore.open(
            server.get_uri("bulk"), embedder.model_name, embedder.dimension, tmp / "k2"
        )
        started = time.perf_counter()
        async with bulk.bulk_load(index_memory=BULK_INDEX_MEMORY):
            queue = list(zip(np.cumsum([0, *adds_of(size)[:-1]]).tolist(), adds_of(size), strict=True))

            async def writer() -> None:
                while queue:
                    start, n = queue.pop(0)
                    await bulk.upsert(corpus.chunks(start, n), matrix[start : start + n])

            await asyncio.gather(*(writer() for _ in range(WRITERS)))
        loaded = time.perf_counter() - started
        await bulk.aclose()
        archive = tmp / "pg.tar"
        manifest = Manifest(
            embedder.model_name, embedder.dimension, 1000, 200, None, "numpy", datetime.now(UTC).isoformat()
        )
        writer_ = ArchiveWriter(archive, manifest)
        for start in range(0, size, 4096):
            n = min(4096, size - start)
            writer_.add(
                [
                    StoredDocument(c.document_id, [c], matrix[start + i : start + i + 1])
                    for i, c in enumerate(corpus.chunks(start, n))
                ]
            )
        writer_.finish()
        imported = await PostgresVectorStore.open(
            server.get_uri("imported"), embedder.model_name, embedder.dimension, tmp / "k3"
        )
        report = await import_archive(
            archive,
            imported,
            embedder,
            bulk_mode=imported.bulk_load(index_memory=BULK_INDEX_MEMORY),
            writers=IMPORT_WRITERS,
            documents_per_add=DOCUMENTS_PER_ADD,
        )
        await imported.aclose()
        storing = report.seconds - report.check_seconds
        print(f"  bulk load ({WRITERS} writers)  {rate(size, loaded)}")
        print(
            f"  import ({IMPORT_WRITERS} writers)      {rate(report.chunks, report.seconds)} "
            f"({(report.chunks / report.seconds) / (size / loaded):.2f}x the bulk load's rate); after the archive's "
            f"check ({report.check_seconds:.1f} s), storing {rate(report.chunks, storing)}"
            f" ({(report.chunks / storing) / (size / loaded):.2f}x)"
        )
    finally:
        server.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1_000_000, help="chunks of the embedded store")
    parser.add_argument("--pg-size", type=int, default=200_000, help="chunks imported into PostgreSQL")
    parser.add_argument("--queries", type=int, default=300, help="SciFact test claims asked (300: all)")
    parser.add_argument("--postgres-import-only", action="store_true", help="only section 4")
    parser.add_argument("--export-only", action="store_true", help="only section 2")
    parser.add_argument("--scifact-documents", type=int, default=None, help="the first N of SciFact (default: all)")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()

"""Re-embedding a knowledge base beside the one that serves: its cost and what it does to searches, with references.

    .venv/bin/python bench/reembed.py                 # SciFact, all 300 claims
    .venv/bin/python bench/reembed.py --documents 500 --queries 50    # a smoke run

A store of SciFact (through the service's chunker and embedder) is exported as if it had been embedded by another
model, then `python -m rag.import --reembed` (a process of its own, as an operator runs it) embeds every chunk again
into a new store while this process keeps searching the old one. Printed:
- the import's rate, alone, beside the embedder's own bare rate over the same chunk texts (`embed_documents`, same
  batches);
- the p50 and p95 of searches at a steady pace (question embedded, hybrid top 5) while a second such import runs,
  beside the same searches with no import; and that import's rate.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.keyword_leg import percentile
from bench.retrieval import DEFAULT_DATASET, read_jsonl
from config import PROJECT_DIR, Settings
from rag.archive.exporter import export_archive
from rag.archive.reader import open_archive
from rag.embedders.factory import build_embedder
from rag.ingest.indexer import Indexer
from rag.retriever import Retriever
from rag.stores.numpy_store import NumpyVectorStore

SEARCHES_PER_SECOND = 5  # a busy service's pace on two cores, not a flood that would take both from the import


async def run(args: argparse.Namespace) -> None:
    settings = Settings()
    embedder = await build_embedder(settings)
    corpus = read_jsonl(DEFAULT_DATASET / "corpus.jsonl")[: args.documents]
    claims = [q["text"] for q in read_jsonl(DEFAULT_DATASET / "queries.jsonl")][: args.queries]
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as name:
        tmp = Path(name)
        store = await NumpyVectorStore.open(tmp / "old" / "store", embedder.model_name, embedder.dimension)
        indexer = Indexer(embedder, store, settings.chunk_size, settings.chunk_overlap)
        for i in range(0, len(corpus), 256):
            batch = corpus[i : i + 256]
            await indexer.add(
                [f"{d.get('title', '')} {d['text']}".strip() for d in batch], None, [d["_id"] for d in batch]
            )
        archive = tmp / "earlier.tar"
        await export_archive(
            store, archive, "an-earlier-model", embedder.dimension, settings.chunk_size, settings.chunk_overlap
        )
        texts = [c.text for batch in open_archive(archive).documents() for d in batch for c in d.chunks]
        print(f"SciFact: {len(corpus):,} documents, {len(texts):,} chunks")

        started = time.perf_counter()
        for start in range(0, len(texts), 4096):  # the import's batches
            await embedder.embed_documents(texts[start : start + 4096])
        bare = time.perf_counter() - started
        print(f"  bare embed_documents            {bare:7.1f} s ({len(texts) / bare:7.1f} chunks/s)")

        retriever = Retriever(embedder, store, 5, None, "hybrid")

        async def paced_searches(until: Callable[[], bool]) -> list[float]:
            """SEARCHES_PER_SECOND questions a second (embedded, hybrid top 5) until `until()`, each timed."""
            out: list[float] = []
            n = 0
            while not until():
                began = time.perf_counter()
                await retriever.retrieve(claims[n % len(claims)])
                out.append(time.perf_counter() - began)
                n += 1
                await asyncio.sleep(max(0.0, 1 / SEARCHES_PER_SECOND - (time.perf_counter() - began)))
            return out

        def run_import(target: str) -> subprocess.Popen[bytes]:
            env = {**os.environ, "DATA_DIR": str(tmp / target), "PYTHONPATH": str(PROJECT_DIR)}
            return subprocess.Popen(
                [sys.executable, "-m", "rag.import", str(archive), "--reembed"],
                cwd=tmp,
                env=env,
                stderr=subprocess.PIPE,
            )

        def finished(process: subprocess.Popen[bytes], began: float) -> float:
            stderr = process.stderr.read().decode() if process.stderr else ""
            if process.returncode != 0:
                raise SystemExit(f"import failed: {stderr}")
            return time.perf_counter() - began

        began = time.perf_counter()
        alone = run_import("alone")
        await asyncio.to_thread(alone.wait)
        elapsed = finished(alone, began)
        print(
            f"  import --reembed alone          {elapsed:7.1f} s ({len(texts) / elapsed:7.1f} chunks/s, "
            f"{bare / elapsed:.2f}x the bare rate; the process's start-up and the archive check included)"
        )
        window = time.perf_counter() + 60
        idle = await paced_searches(lambda: time.perf_counter() > window)
        began = time.perf_counter()
        beside = run_import("beside")
        during = await paced_searches(lambda: beside.poll() is not None)
        elapsed = finished(beside, began)
        p50, p95 = percentile(idle, 0.5), percentile(idle, 0.95)
        d50, d95 = percentile(during, 0.5), percentile(during, 0.95)
        print(
            f"  import --reembed beside searches {elapsed:6.1f} s ({len(texts) / elapsed:7.1f} chunks/s, "
            f"{bare / elapsed:.2f}x the bare rate)"
        )
        print(
            f"  search, {SEARCHES_PER_SECOND}/s (embed + hybrid top 5): idle p50 {p50:.1f} ms p95 {p95:.1f} ms over "
            f"{len(idle)}; during the import p50 {d50:.1f} ms ({d50 / p50:.2f}x) p95 {d95:.1f} ms ({d95 / p95:.2f}x) "
            f"over {len(during)}"
        )
        await store.aclose()
    await embedder.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=None, help="the first N SciFact documents (default: all)")
    parser.add_argument("--queries", type=int, default=300, help="SciFact claims searched per round")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()

"""The embedded store's quantized dense search (rag/stores/quantized.py) beside the exact scan, in one run.

    .venv/bin/python bench/quantized_search.py [--size 1000000] [--bare-size 10000000]

Realistic vectors and real questions (`bench/scifact_corpus.py`: chunks of three SciFact sentences, each in one of
50 tenants; SciFact's 300 claims as the questions). Three parts:

1. The threshold (`EMBEDDED_QUANTIZED_ABOVE`): at each of `--threshold-sizes` rows held in RAM, the bare exact
   product (NumPy, then `argpartition` of the top 100, the hybrid pool) beside the bare quantized search (FAISS's
   Hamming distances over the codes, `argpartition`, the float32 product over the candidates), p50 of each.
2. The store at `--size` chunks (geometric segments, as compaction keeps them): one directory opened twice, with
   the quantized search and with exact scans only, asked in turns; dense and hybrid, unfiltered and one tenant of
   50: p50 and p95 of each beside the bare float32 product in RAM, recall@10 of the quantized dense leg against the
   exact one; an add of 256 chunks; then a fresh process opening the store and asking every question, its start-up
   and resident memory (anonymous and file-backed pages apart), once per way of searching.
3. Bare at `--bare-size` (0 skips it): the vectors streamed to a float32 file (memory-mapped, never all in RAM),
   their codes in RAM; the quantized search over every row and over one tenant's slice, re-scoring from the file,
   with recall@10 against the exact product (computed block by block) and the process's resident memory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.scifact_corpus import Corpus
from bench.store import TENANTS, geometric
from rag.stores import SearchRequest
from rag.stores.numpy_store import NumpyVectorStore
from rag.stores.quantized import QuantizedSearch, best_candidates, binary_codes, nearest, scan

POOL = 100  # what a hybrid search takes from the dense leg
EXACT_ONLY = QuantizedSearch(above=2**62)
POOL_OF_TWO = ThreadPoolExecutor(max_workers=2)


def pct(seconds: list[float], q: float) -> float:
    ordered = sorted(seconds)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


def p50(seconds: list[float]) -> float:
    return statistics.median(seconds) * 1000


def exact_top(matrix: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    scores = matrix @ query
    best = np.argpartition(-scores, k - 1)[:k]
    return best[np.argsort(-scores[best])]


def quantized_top(
    matrix: np.ndarray, codes: np.ndarray, query: np.ndarray, k: int, search: QuantizedSearch
) -> np.ndarray:
    """What the store's quantized dense leg does, on one array: Hamming shortlist, estimate, float32 re-score."""
    distances = np.empty(codes.shape[0], dtype=np.int32)
    scan([(codes, distances)], binary_codes(query), POOL_OF_TWO)  # two threads over a large scan, as the store
    shortlist = nearest(distances, search.shortlist(codes.shape[0]))
    picked = best_candidates(shortlist, codes[shortlist], query, search)
    scores = matrix[picked] @ query
    best = np.argpartition(-scores, k - 1)[:k]
    return picked[best[np.argsort(-scores[best])]]


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return len(set(found[:10].tolist()) & set(exact[:10].tolist())) / 10


def threshold(corpus: Corpus, sizes: list[int], search: QuantizedSearch) -> None:
    print(
        f"1. exact product against codes ({search.shortlist(0):,} by Hamming, {search.candidates:,} re-scored), bare,"
        f" in RAM (top {POOL}), p50 of 300 questions"
    )
    matrix = corpus.vectors(0, max(sizes))
    codes = binary_codes(matrix)
    for size in sizes:
        exact_s, quantized_s, recalls = [], [], []
        for query in corpus.question_vectors:
            started = time.perf_counter()
            exact = exact_top(matrix[:size], query, POOL)
            exact_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            found = quantized_top(matrix[:size], codes[:size], query, POOL, search)
            quantized_s.append(time.perf_counter() - started)
            recalls.append(recall(found, exact))
        e, q = p50(exact_s), p50(quantized_s)
        print(
            f"   {size:>9,} rows: exact {e:7.2f} ms   quantized {q:7.2f} ms   ({q / e:.2f}x)"
            f"   recall@10 {np.mean(recalls):.4f}"
        )


def rss() -> dict[str, float]:
    found = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                found[key] = int(value.split()[0]) / 1024
    return found


async def child(directory: Path, quantized: bool) -> None:
    """In a fresh process: open the store, ask every question (dense, then dense in one tenant), report."""
    corpus_queries = np.load(directory.parent / "questions.npy")
    before = rss()
    started = time.perf_counter()
    store = await NumpyVectorStore.open(
        directory, "bench", corpus_queries.shape[1], auto_compact=False, quantized=None if quantized else EXACT_ONLY
    )
    opened = time.perf_counter() - started
    for query in corpus_queries:
        await store.search(SearchRequest("", query, 10, mode="dense"))
        await store.search(SearchRequest("", query, 10, {"orgId": "org7"}, mode="dense"))
    after = rss()
    await store.aclose()
    print(json.dumps({"open_s": opened, **{key: after[key] - before.get(key, 0) for key in after}}))


async def through_store(corpus: Corpus, size: int, search: QuantizedSearch) -> None:
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        directory = Path(tmp) / "store"
        store = await NumpyVectorStore.open(directory, "bench", 384, auto_compact=False, quantized=search)
        started, row = time.perf_counter(), 0
        for part in geometric(size):
            await store.upsert(corpus.chunks(row, part), corpus.vectors(row, part))
            row += part
        layout = store.layout()
        print(
            f"2. the store at {size:,} chunks: built in {time.perf_counter() - started:.0f} s, {layout['segments']} "
            f"segments, {len(list(directory.glob('*.bits.npy')))} with a codes file"
        )
        exact_store = await NumpyVectorStore.open(directory, "bench", 384, auto_compact=False, quantized=EXACT_ONLY)
        matrix = corpus.vectors(0, size)
        bare = []
        for query in corpus.question_vectors:
            begun = time.perf_counter()
            exact_top(matrix, query, 10)
            bare.append(time.perf_counter() - begun)
        del matrix
        print(f"   reference: the bare float32 product in RAM, top 10: p50 {p50(bare):.2f} ms")
        cases = {
            "dense": ("dense", None),
            "dense, 1 tenant of 50": ("dense", {"orgId": "org7"}),
            "hybrid": ("hybrid", None),
            "hybrid, 1 tenant of 50": ("hybrid", {"orgId": "org7"}),
        }
        for name, (mode, filters) in cases.items():
            times: dict[str, list[float]] = {"quantized": [], "exact": []}
            recalls = []
            for text, query in zip(corpus.questions, corpus.question_vectors, strict=True):
                request = SearchRequest(text, query, 10, filters, None, mode)  # type: ignore[arg-type]
                ids = {}
                for way, searcher in (("quantized", store), ("exact", exact_store)):
                    begun = time.perf_counter()
                    hits = await searcher.search(request)
                    times[way].append(time.perf_counter() - begun)
                    ids[way] = [hit.chunk.id for hit in hits]
                recalls.append(len(set(ids["quantized"]) & set(ids["exact"])) / max(len(ids["exact"]), 1))
            q, e = times["quantized"], times["exact"]
            print(
                f"   {name:<24} quantized p50 {p50(q):6.2f} p95 {pct(q, 0.95):6.2f} ms   exact p50 {p50(e):6.2f}"
                f" p95 {pct(e, 0.95):6.2f} ms   ({p50(q) / p50(e):.2f}x; {p50(q) / p50(bare):.2f}x the bare product)"
                f"   top-10 overlap {np.mean(recalls):.4f}"
            )
        adds = []
        for n in range(5):
            begun = time.perf_counter()
            await store.upsert(corpus.chunks(size + 256 * n, 256), corpus.vectors(size + 256 * n, 256))
            adds.append(time.perf_counter() - begun)
        print(f"   add 256 chunks, persisted: p50 {p50(adds):.1f} ms")
        await exact_store.aclose()
        await store.aclose()
        np.save(Path(tmp) / "questions.npy", corpus.question_vectors.astype(np.float32))
        for way in ("quantized", "exact"):
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(directory), "--way", way],
                capture_output=True,
                text=True,
                check=True,
            )
            figures = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"   fresh process, {way:<9}: start-up {figures['open_s'] * 1000:6.0f} ms; after 600 searches resident "
                f"{figures['VmRSS']:6.0f} MiB ({figures['RssAnon']:.0f} anonymous, {figures['RssFile']:.0f} file pages)"
            )


def bare_at_scale(corpus: Corpus, size: int, search: QuantizedSearch) -> None:
    block = 500_000
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        path = Path(tmp) / "vectors.npy"
        started = time.perf_counter()
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(size, 384))
        codes = np.empty((size, 48), dtype=np.uint8)
        for first in range(0, size, block):
            count = min(block, size - first)
            vectors = corpus.vectors(first, count)
            out[first : first + count] = vectors
            codes[first : first + count] = binary_codes(vectors)
        out.flush()
        del out
        made = time.perf_counter() - started
        print(f"3. bare at {size:,} rows: vectors written to disk and codes made in {made:.0f} s")
        matrix = np.load(path, mmap_mode="r")
        queries = corpus.question_vectors.astype(np.float32)
        exact = np.empty((queries.shape[0], 10), dtype=np.int64)
        best_scores = np.full((queries.shape[0], 10), -np.inf, dtype=np.float32)
        for first in range(0, size, block):  # the exact top 10 of every question, block by block
            scores = np.asarray(matrix[first : first + block]) @ queries.T
            top = np.argpartition(-scores, 9, axis=0)[:10].T + first
            merged_scores = np.concatenate([best_scores, scores[top.T - first, np.arange(queries.shape[0])].T], 1)
            merged = np.concatenate([exact, top], 1)
            order = np.argsort(-merged_scores, axis=1)[:, :10]
            exact = np.take_along_axis(merged, order, 1)
            best_scores = np.take_along_axis(merged_scores, order, 1)
        del scores, matrix
        # a mapping of its own: the pages the exact pass touched are not counted as the searches'
        matrix = np.load(path, mmap_mode="r")
        before = rss()
        slice_rows = size // TENANTS
        for scope, low, high in (("every row", 0, size), (f"one tenant's slice ({slice_rows:,} rows)", 0, slice_rows)):
            times, recalls = [], []
            for i, query in enumerate(queries):
                begun = time.perf_counter()
                found = quantized_top(matrix[low:high], codes[low:high], query, 10, search)
                times.append(time.perf_counter() - begun)
                if high == size:
                    recalls.append(recall(found, exact[i]))
            shown = f"   recall@10 {np.mean(recalls):.4f}" if recalls else ""
            print(f"   {scope:<32} p50 {p50(times):7.2f} ms   p95 {pct(times, 0.95):7.2f} ms{shown}")
        after = rss()
        added = after["RssFile"] - before["RssFile"]
        print(
            f"   codes in RAM {codes.nbytes / 2**20:.0f} MiB; the searches added {added:.0f} MiB of file pages"
            f" (vectors on disk: {size * 384 * 4 / 2**30:.1f} GiB)"
        )


async def main_async(args: argparse.Namespace) -> None:
    corpus = await Corpus.load()
    search = QuantizedSearch(candidates=args.candidates)
    threshold(corpus, args.threshold_sizes, search)
    if args.size:
        await through_store(corpus, args.size, search)
    if args.bare_size:
        bare_at_scale(corpus, args.bare_size, search)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--bare-size", type=int, default=10_000_000)
    parser.add_argument("--candidates", type=int, default=QuantizedSearch().candidates, help="re-scored rows")
    parser.add_argument("--threshold-sizes", type=int, nargs="+", default=[10_000, 25_000, 50_000, 100_000, 200_000])
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--way", choices=("quantized", "exact"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        asyncio.run(child(args.child, args.way == "quantized"))
        return
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()

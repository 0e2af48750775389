"""Figures of the embedded store, each beside the bare NumPy work it wraps, measured in the same run.

    .venv/bin/python bench/store.py --sizes 100000 1000000

For each size, a store of random unit vectors (dimension 384, all-MiniLM-L6-v2's) is built in segments of
geometric sizes (the layout compaction keeps), each chunk in one of 50 tenants. Then:

- add: 256 chunks persisted (segment written and fsynced, catalog committed), embedding excluded; reference: the
  same 256 vectors saved with `np.save` and fsynced;
- search: top 5, dense, unfiltered and filtered on one tenant among 50, and hybrid; reference: a float32 matrix
  product over the same vectors held in RAM plus `argpartition` (the median of many searches each; ratio beside);
- start-up: opening the store in a fresh process, and that process's resident memory after the open and one
  search, per stored chunk, against the 1,536 bytes of its vector.
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
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rag.stores import SearchRequest
from rag.stores.numpy_store import NumpyVectorStore
from rag.types import Chunk

DIMENSION = 384
TENANTS = 50
WORDS = ["cell", "protein", "gene", "tumour", "dose", "trial", "mouse", "virus", "brain", "heart", "liver", "blood"]
WORDS += ["risk", "therapy", "model"]


def unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    rows = rng.standard_normal((n, DIMENSION), dtype=np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def chunks(start: int, n: int) -> list[Chunk]:
    return [
        Chunk(
            f"d{i}:0",
            f"d{i}",
            f"{WORDS[i % 15]} {WORDS[(i // 15) % 15]} {WORDS[(i // 225) % 15]} note {i}",
            {"orgId": f"org{i % TENANTS}"},
        )
        for i in range(start, start + n)
    ]


def geometric(size: int, smallest: int = 256) -> list[int]:
    parts, left = [], size
    while left > smallest:
        part = max(left // 2, smallest)
        parts.append(part)
        left -= part
    return [*parts, left] if left else parts


def saved_seconds(directory: Path, vectors: np.ndarray) -> float:
    """The reference for a persisted add: np.save of the same vectors into `directory`, then fsync."""
    started = time.perf_counter()
    with open(directory / "reference.npy", "wb") as handle:
        np.save(handle, vectors)
        handle.flush()
        os.fsync(handle.fileno())
    return time.perf_counter() - started


def median_ms(timings: list[float]) -> float:
    return statistics.median(timings) * 1000


def bare_dense_ms(matrix: np.ndarray, queries: np.ndarray) -> float:
    """The reference every search figure is set beside: a float32 matrix product over vectors held in RAM, then
    `argpartition` and the sort of the top 5, p50 over `queries` in ms."""
    timings = []
    for query in queries:
        started = time.perf_counter()
        scores = matrix @ query
        best = np.argpartition(-scores, 4)[:5]
        best[np.argsort(-scores[best])]
        timings.append(time.perf_counter() - started)
    return median_ms(timings)


def rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def child(directory: Path) -> None:
    """Run in a fresh process: open the store, search once, report time and memory."""
    before = rss_mb()
    started = time.perf_counter()
    store = await NumpyVectorStore.open(directory, "bench", DIMENSION, auto_compact=False)
    opened = time.perf_counter() - started
    query = unit_rows(np.random.default_rng(5), 1)[0]
    started = time.perf_counter()
    await store.search(SearchRequest("", query, 5, mode="dense"))
    first_search = time.perf_counter() - started
    print(json.dumps({"open_s": opened, "first_search_s": first_search, "rss_mb": rss_mb() - before}))
    await store.aclose()


async def run(size: int, repeats: int) -> None:
    rng = np.random.default_rng(size)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        directory = Path(tmp)
        store = await NumpyVectorStore.open(directory, "bench", DIMENSION, auto_compact=False)
        matrix = np.empty((size, DIMENSION), dtype=np.float32)
        started, row = time.perf_counter(), 0
        for part in geometric(size):
            matrix[row : row + part] = unit_rows(rng, part)
            await store.upsert(chunks(row, part), matrix[row : row + part])
            row += part
        built = time.perf_counter() - started
        print(f"{size:>9,} chunks: built in {built:.0f} s, {store.layout()['segments']} segments")

        add_times, save_times = [], []
        for n in range(repeats // 5):
            extra = unit_rows(rng, 256)
            started = time.perf_counter()
            await store.upsert(chunks(size + 256 * n, 256), extra)
            add_times.append(time.perf_counter() - started)
            save_times.append(saved_seconds(directory, extra))
        add, save = median_ms(add_times), median_ms(save_times)
        print(f"{'':10} add 256 chunks, persisted  {add:8.2f} ms   np.save+fsync {save:7.2f} ms   ({add / save:.1f}x)")

        queries = unit_rows(rng, repeats)
        reference = bare_dense_ms(matrix, queries)
        cases = {
            "dense": SearchRequest("", None, 5, mode="dense"),
            "dense, 1 tenant of 50": SearchRequest("", None, 5, {"orgId": "org7"}, mode="dense"),
            "hybrid": SearchRequest("tumour dose trial", None, 5, mode="hybrid"),
            "hybrid, 1 tenant of 50": SearchRequest("tumour dose trial", None, 5, {"orgId": "org7"}, mode="hybrid"),
        }
        for name, template in cases.items():
            await store.search(SearchRequest(template.text, queries[0], 5, template.filters, None, template.mode))
            timings = []
            for query in queries:
                request = SearchRequest(template.text, query, 5, template.filters, None, template.mode)
                started = time.perf_counter()
                await store.search(request)
                timings.append(time.perf_counter() - started)
            ms = median_ms(timings)
            ratio = ms / reference
            print(f"{'':10} search {name:<22} {ms:8.2f} ms   bare product {reference:7.2f} ms   ({ratio:.2f}x)")
        await store.aclose()
        del matrix

        stored = size + 256 * (repeats // 5)
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(directory)], capture_output=True, text=True, check=True
        )
        figures = json.loads(out.stdout.strip().splitlines()[-1])
        per_chunk = figures["rss_mb"] * 1024 * 1024 / stored
        print(
            f"{'':10} start-up {figures['open_s'] * 1000:8.0f} ms (first search {figures['first_search_s'] * 1000:.0f}"
            f" ms)   resident {figures['rss_mb']:.0f} MiB = {per_chunk:.0f} bytes per chunk"
            f" ({per_chunk / (DIMENSION * 4):.2f}x its vector)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        asyncio.run(child(args.child))
        return
    for size in args.sizes:
        asyncio.run(run(size, args.repeats))


if __name__ == "__main__":
    main()

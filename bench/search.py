"""Search latency of the NumPy store, without and with metadata filters, at several store sizes.

    .venv/bin/python bench/search.py --sizes 10000 100000

Random unit vectors of dimension 384 (all-MiniLM-L6-v2's); each chunk has an `orgId` among 50 and a `lang`.
Prints the mean of 50 searches (top 5) after one warm-up search, which also builds the filter indexes.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rag.stores.numpy_store import NumpyVectorStore
from rag.types import Chunk

DIMENSION = 384
FILTERS = {
    "no filter": None,
    "orgId = one of 50": {"orgId": "org7"},
    "orgId $in 2 of 50": {"orgId": {"$in": ["org1", "org2"]}},
    "orgId and lang $ne": {"orgId": "org3", "lang": {"$ne": "fr"}},
}


async def run(size: int, repeats: int) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(size, DIMENSION)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    chunks = [Chunk(f"d{i}:0", f"d{i}", "text", {"orgId": f"org{i % 50}", "lang": "en"}) for i in range(size)]
    with tempfile.TemporaryDirectory() as tmp:
        store = await NumpyVectorStore.open(Path(tmp), "bench", DIMENSION)
        started = time.perf_counter()
        await store.upsert(chunks, vectors)
        print(f"{size:>9} chunks: stored in {time.perf_counter() - started:.2f} s")
        for name, filters in FILTERS.items():
            await store.search(vectors[0], 5, filters)
            started = time.perf_counter()
            for i in range(repeats):
                await store.search(vectors[i % size], 5, filters)
            print(f"{'':>10} {name:<20} {(time.perf_counter() - started) / repeats * 1000:7.2f} ms per search")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    for size in args.sizes:
        asyncio.run(run(size, args.repeats))


if __name__ == "__main__":
    main()

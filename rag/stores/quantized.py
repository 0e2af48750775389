"""A dense search that reads one bit per dimension first and full precision only for the few rows that may win.

Every vector also has a binary code: the sign of each of its dimensions, packed eight to a byte (48 bytes for
MiniLM's 384 dimensions, 1/32 of its float32 row). A search measures the Hamming distance from the question's code
to every eligible row's code (FAISS's popcount kernel: about 5.5 ns a row on one core here), keeps a shortlist of
the nearest, orders it by a finer estimate (the question's float values against the rows' signs) and scores only
the best `candidates` of it with the float32 vectors (read from the memory-mapped segment files, so only their pages
are touched). The rows compared are the same as in an exact scan, filters and the access rule included; only the
ranking before re-scoring is approximate, and `bench/quantized_search.py` prints what it costs in recall@10 against
the exact float32 product.

This is the way Qdrant's binary quantization with rescoring and pgvector's `binary_quantize` expression indexes
search; a flat scan rather than a graph because these vectors are hard for one: HNSW (FAISS's and usearch's, i8 and
float32) stayed under recall@10 0.99 on the bench corpus even at efSearch 1024, while the re-scored shortlist of
the binary scan reaches it (docs/benchmarks.md).
"""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass

import faiss
import numpy as np

# One thread per call: a question's scan is short, and the service's searches already run side by side
faiss.omp_set_num_threads(1)

FAR = np.int32(1 << 20)  # the distance given to rows that may not be returned: beyond any code's
SAMPLED_SELECTION_ABOVE = 200_000  # distances above which `nearest` bounds its selection by a sample first
SAMPLE = 50_000  # distances in that sample
PARALLEL_ABOVE = 500_000  # rows a question's scan splits over two threads above (a thread hand-off costs ~50 us)


@dataclass(frozen=True)
class QuantizedSearch:
    """When a dense search reads codes first (`above` eligible rows) and how many rows it re-scores."""

    above: int = 50_000
    candidates: int = 1000

    def shortlist(self, scanned: int) -> int:
        """Rows taken by Hamming distance among `scanned`, to be ordered by `estimated_similarity` before
        `candidates` are re-scored: ten times as many (at 200,000 rows, 10,000 -> 1,000 kept recall@10 0.9993
        where 2,000 by Hamming alone kept 0.9897), and one in 500 of a larger scan (at 10,000,000 rows a
        shortlist of 10,000 kept 0.9883)."""
        return max(self.candidates * 10, scanned // 500)


def scan(parts: list[tuple[np.ndarray, np.ndarray]], query_code: np.ndarray, pool: Executor | None) -> None:
    """Fill each part's `out` with the Hamming distances of its `codes` (`hamming`). Over more than
    `PARALLEL_ABOVE` rows, with a pool, half the rows are scanned in the pool's thread: FAISS's kernel releases
    the GIL, and a question alone would otherwise leave the other core idle (two threads: 1.55x one's rate)."""
    total = sum(codes.shape[0] for codes, _ in parts)
    if pool is None or total <= PARALLEL_ABOVE:
        for codes, out in parts:
            hamming(codes, query_code, out)
        return
    mine: list[tuple[np.ndarray, np.ndarray]] = []
    theirs: list[tuple[np.ndarray, np.ndarray]] = []
    given = 0
    for codes, out in parts:  # the first half of the rows to the pool, split inside a part if need be
        share = min(codes.shape[0], max(total // 2 - given, 0))
        if share:
            theirs.append((codes[:share], out[:share]))
            given += share
        if share < codes.shape[0]:
            mine.append((codes[share:], out[share:]))
    other = pool.submit(lambda: [hamming(codes, query_code, out) for codes, out in theirs])
    try:
        for codes, out in mine:
            hamming(codes, query_code, out)
    finally:
        other.result()


def binary_codes(vectors: np.ndarray) -> np.ndarray:
    """Each row's sign bits, packed (uint8, dimension / 8 bytes a row)."""
    return np.packbits(np.asarray(vectors) > 0, axis=-1)


def fill_codes(vectors: np.ndarray, out: np.ndarray, block: int = 65_536) -> np.ndarray:
    """`binary_codes` of many rows written into `out` (an array or a memory-mapped file of `code_shape`) a block
    at a time, so no temporary of every row is made; returns `out`."""
    for first in range(0, vectors.shape[0], block):
        out[first : first + block] = binary_codes(vectors[first : first + block])
    return out


def code_shape(vectors: np.ndarray) -> tuple[int, int]:
    """The shape of `vectors`' codes: a row each, eight dimensions a byte."""
    return vectors.shape[0], (vectors.shape[1] + 7) // 8


def hamming(codes: np.ndarray, query_code: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The Hamming distance (int32) of every row of `codes` to `query_code`, into `out` when given (contiguous)."""
    codes = np.ascontiguousarray(codes)
    query_code = np.ascontiguousarray(query_code, dtype=np.uint8)
    distances = np.empty(codes.shape[0], dtype=np.int32) if out is None else out
    if distances.shape != (codes.shape[0],) or distances.dtype != np.int32 or not distances.flags.c_contiguous:
        raise ValueError("out must be a contiguous int32 array, one place per row")  # written through a raw pointer
    if codes.shape[0]:
        faiss.hammings(  # type: ignore[attr-defined]  # SWIG-generated: no stub names it
            faiss.swig_ptr(query_code),
            faiss.swig_ptr(codes),
            1,
            codes.shape[0],
            codes.shape[1],
            faiss.swig_ptr(distances),
        )
    return distances


# Each byte value's eight signs (-1 or +1), most significant bit first as `np.packbits` packs them
_SIGNS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(np.float32) * 2 - 1


def estimated_similarity(codes: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Each row's dot product with `query` estimated from its code: the question's own float values against the
    row's signs, summed through a table of every byte value's partial sum (as product quantization's asymmetric
    distance). Finer than the Hamming distance, which reads the question's signs only: it orders a shortlist."""
    width = codes.shape[1]
    padded = np.zeros(width * 8, dtype=np.float32)
    padded[: query.shape[0]] = query
    table = padded.reshape(width, 8) @ _SIGNS.T  # (byte position, byte value) -> partial sum
    positions = codes.astype(np.intp) + np.arange(0, width * 256, 256, dtype=np.intp)
    return table.ravel()[positions].sum(axis=1)


def best_candidates(rows: np.ndarray, codes: np.ndarray, query: np.ndarray, search: QuantizedSearch) -> np.ndarray:
    """Of a shortlist of rows (with their codes), the `search.candidates` to re-score, ascending: the best by their
    estimated similarity."""
    if rows.shape[0] > search.candidates:
        estimate = estimated_similarity(codes, query)
        rows = rows[np.argpartition(-estimate, search.candidates - 1)[: search.candidates]]
    return np.sort(rows)


def nearest(distances: np.ndarray, count: int) -> np.ndarray:
    """Positions of the `count` smallest distances that are not FAR (in no particular order).

    Over a long array, `argpartition` alone costs more than the scan (85 ms over 10,000,000 distances here): a
    sorted sample gives a bound under which somewhat more than `count` distances lie, one comparison finds them,
    and `argpartition` runs over those few. The result is the same set, ties aside."""
    size = distances.shape[0]
    if size <= count:
        picked = np.arange(size)
    elif size < SAMPLED_SELECTION_ABOVE:
        picked = np.argpartition(distances, count - 1)[:count]
    else:
        sample = np.sort(distances[:: size // SAMPLE])
        bound = sample[min(sample.shape[0] - 1, int(sample.shape[0] * count / size * 1.5) + 1)]
        within = np.flatnonzero(distances <= bound)
        if within.shape[0] < count:  # an unlucky sample: the bound was too low
            picked = np.argpartition(distances, count - 1)[:count]
        else:
            picked = within[np.argpartition(distances[within], count - 1)[:count]]
    return picked[distances[picked] < FAR]

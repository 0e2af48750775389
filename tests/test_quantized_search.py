"""The embedded store's quantized dense search (rag/stores/quantized.py): binary codes scanned, the nearest re-scored.

The conformance suite runs every rule of the store through it (its `numpy-quantized` backend); here, what is
particular to it: how close its ranking stays to the exact product on vectors with neighbourhoods, that a tenant's
search never takes a row of another tenant however near, and the codes file's life beside its segment.
"""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from config import Settings
from rag.stores import SearchRequest
from rag.stores import quantized as quantized_module
from rag.stores import segments as segments_module
from rag.stores.numpy_store import NumpyVectorStore
from rag.stores.quantized import QuantizedSearch, binary_codes, hamming, nearest, scan
from rag.types import Chunk

DIM = 384  # MiniLM's: binary codes of fewer dimensions rank too coarsely to re-score a tenth


def clustered(seed: int, n: int, topics: int = 30, subtopics: int = 600) -> np.ndarray:
    """Vectors with neighbourhoods, as embeddings have: a topic's direction, one of its subtopics' and noise, so
    that a row has a few close neighbours (its subtopic's), many fairly close (its topic's) and the rest far, and a
    ranking can be checked for recall. Random vectors would have no neighbours to find."""
    rng = np.random.default_rng(seed)
    shared = np.random.default_rng(0)
    centres = shared.normal(size=(topics, DIM)).astype(np.float32)
    under = shared.normal(size=(subtopics, DIM)).astype(np.float32)
    sub = rng.integers(0, subtopics, size=n)
    vectors = centres[sub % topics] + 0.8 * under[sub] + 0.8 * rng.normal(size=(n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def chunks(start: int, n: int, orgs: int = 1, first_org: int = 0) -> list[Chunk]:
    return [
        Chunk(f"d{i}:0", f"d{i}", f"note {i}", {"orgId": f"org{first_org + i % orgs}"}) for i in range(start, start + n)
    ]


async def test_hamming_distances_are_the_count_of_differing_signs() -> None:
    vectors = np.random.default_rng(1).normal(size=(50, DIM)).astype(np.float32)
    query = vectors[7] * np.where(np.arange(DIM) < 5, -1, 1)  # five signs flipped
    distances = hamming(binary_codes(vectors), binary_codes(query))
    expected = ((vectors > 0) != (query > 0)).sum(axis=1)
    assert distances.tolist() == expected.tolist() and distances[7] == 5


def test_the_nearest_of_a_long_array_are_the_smallest_distances() -> None:
    rng = np.random.default_rng(8)
    for size, count in ((300_000, 1_000), (1_000_000, 20_000), (250_000, 249_000)):
        distances = rng.binomial(DIM, 0.4, size=size).astype(np.int32)
        distances[rng.choice(size, size // 10, replace=False)] = quantized_module.FAR  # rows that may not be read
        picked = nearest(distances, count)
        expected = np.sort(distances)[:count]
        expected = expected[expected < quantized_module.FAR]
        assert np.array_equal(np.sort(distances[picked]), expected)
        assert np.unique(picked).shape == picked.shape


def test_a_scan_split_over_two_threads_fills_every_distance(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quantized_module, "PARALLEL_ABOVE", 0)
    codes = binary_codes(np.random.default_rng(6).normal(size=(1001, DIM)).astype(np.float32))
    query_code = codes[3]
    out = np.full(1001, -1, dtype=np.int32)
    sizes = [1, 500, 0, 300, 200]  # parts of every size, the half falling inside one
    bounds = np.cumsum([0, *sizes])
    parts = [(codes[a:b], out[a:b]) for a, b in itertools.pairwise(bounds.tolist())]
    with ThreadPoolExecutor(max_workers=1) as pool:
        scan(parts, query_code, pool)
    assert out.tolist() == hamming(codes, query_code).tolist()
    with pytest.raises(ValueError, match="contiguous int32"):
        hamming(codes, query_code, out=np.zeros(1001, dtype=np.int64))


async def test_the_ranking_stays_close_to_the_exact_product(tmp_path: Path) -> None:
    vectors = clustered(2, 6000)
    quantized = QuantizedSearch(above=0, candidates=600)
    store = await NumpyVectorStore.open(tmp_path, "toy", DIM, auto_compact=False, quantized=quantized)
    for start in range(0, 6000, 2000):
        await store.upsert(chunks(start, 2000), vectors[start : start + 2000])
    queries = clustered(3, 40)
    recalls = []
    for query in queries:
        exact = {f"d{i}:0" for i in np.argsort(-(vectors @ query))[:10]}
        hits = await store.search(SearchRequest("", query, 10, mode="dense"))
        found = [hit.chunk.id for hit in hits]
        assert len(found) == 10
        # the scores are the full-precision ones, best first
        assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)
        assert hits[0].score == pytest.approx(float(vectors[int(found[0][1:-2])] @ query), abs=1e-5)
        recalls.append(len(exact & set(found)) / 10)
    # one part in ten of the rows re-scored: the exact top 10 are nearly all among them
    assert np.mean(recalls) >= 0.97, recalls
    await store.aclose()


async def test_a_tenants_search_never_takes_another_tenants_row_however_near(tmp_path: Path) -> None:
    vectors = clustered(4, 3500)
    quantized = QuantizedSearch(above=0, candidates=100)  # far fewer than either tenant's rows
    store = await NumpyVectorStore.open(tmp_path, "toy", DIM, auto_compact=False, quantized=quantized)
    # a first segment without a row of org0, so that org0's rows start in a later one
    await store.upsert(chunks(3000, 500, first_org=1), vectors[3000:])
    await store.upsert(chunks(0, 3000, orgs=2), vectors[:3000])  # even rows org0, odd rows org1
    await store.delete("d2")  # tombstoned: never returned either
    for i in range(1, 41, 2):  # questions that are org1's own rows: the nearest row of all is org1's
        for mode in ("dense", "hybrid"):
            hits = await store.search(SearchRequest("note", vectors[i], 10, {"orgId": "org0"}, mode=mode))  # type: ignore[arg-type]
            assert len(hits) == 10
            assert {hit.chunk.metadata["orgId"] for hit in hits} == {"org0"}
            assert "d2:0" not in {hit.chunk.id for hit in hits}
        own = await store.search(SearchRequest("", vectors[i], 1, {"orgId": "org1"}, mode="dense"))
        assert own[0].chunk.id == f"d{i}:0"
    await store.aclose()


async def test_a_large_segment_keeps_its_codes_in_a_file_that_lives_and_dies_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(segments_module, "CODES_FILE_ROWS", 500)
    vectors = clustered(5, 900)
    quantized = QuantizedSearch(above=0, candidates=50)
    store = await NumpyVectorStore.open(tmp_path, "toy", DIM, auto_compact=False, quantized=quantized)
    await store.upsert(chunks(0, 300), vectors[:300])
    assert not list(tmp_path.glob("*.bits.npy"))  # a small add computes its codes when first searched
    await store.upsert(chunks(300, 600), vectors[300:])
    bits = list(tmp_path.glob("*.bits.npy"))
    assert len(bits) == 1 and np.array_equal(np.load(bits[0]), binary_codes(vectors[300:]))
    before = [hit.chunk.id for hit in await store.search(SearchRequest("", vectors[450], 5, mode="dense"))]
    assert before[0] == "d450:0"
    await store.compact()  # the two merge into one segment of 900 rows: its codes file replaces the old one
    after = list(tmp_path.glob("*.bits.npy"))
    assert len(after) == 1 and after != bits and np.load(after[0]).shape == (900, DIM // 8)
    assert [hit.chunk.id for hit in await store.search(SearchRequest("", vectors[450], 5, mode="dense"))] == before
    await store.aclose()

    # what a crash between writing a segment and committing it leaves: codes of no segment, removed at start
    orphan = tmp_path / "seg-0123456789abcdef.bits.npy"
    np.save(orphan, binary_codes(vectors[:10]))
    # and a codes file lost: the segment computes its codes again, and keeps them in a file again
    after[0].unlink()
    reopened = await NumpyVectorStore.open(tmp_path, "toy", DIM, auto_compact=False, quantized=quantized)
    assert not orphan.exists()
    assert [hit.chunk.id for hit in await reopened.search(SearchRequest("", vectors[450], 5, mode="dense"))] == before
    assert np.array_equal(np.load(after[0]), binary_codes(vectors))  # written again by the search that needed it
    await reopened.aclose()


def test_the_settings_defaults_are_the_stores() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    default = QuantizedSearch()
    assert (settings.embedded_quantized_above, settings.embedded_rescore_candidates) == (
        default.above,
        default.candidates,
    )

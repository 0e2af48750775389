"""A corpus of any size with real words and realistic vectors, for the benchmarks of large stores.

Chunk i is three sentences drawn at random (seeded by i) from SciFact's abstracts (`../shared/datasets/scifact`),
so it has real words at real frequencies and is the same in every script, backend and size, and belongs to one of
50 tenants. Its vector is the normalised sum of its three sentences' embeddings: embedding a million chunks takes
about an hour on two cores, while SciFact's 45,413 distinct sentences take under two minutes, once per embedding
model (cached in `.cache/bench/`). `bench/hnsw_build.py` prints how close that stands to embedding the chunk
itself. The questions are SciFact's 300 test claims, embedded as the service embeds a question.

Random vectors would make HNSW's figures wrong: they have no neighbourhoods, which is its worst case (at a million,
its graph took 473-484 s to build over random vectors and 387 s over these).
"""

from __future__ import annotations

import json
import random
import re
import time

import numpy as np

from bench.store import TENANTS
from config import PROJECT_DIR, Settings
from rag.embedders.base import normalise
from rag.embedders.factory import build_embedder
from rag.types import Chunk, Embedder

SCIFACT = PROJECT_DIR.parent / "shared" / "datasets" / "scifact"
CACHE = PROJECT_DIR / ".cache" / "bench"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_BLOCK = 100_000  # chunk vectors are summed a block at a time: a million at once would need three 1.5 GB temporaries


def sentences() -> list[str]:
    found: list[str] = []
    with open(SCIFACT / "corpus.jsonl", encoding="utf-8") as handle:
        for line in handle:
            text = json.loads(line).get("text", "")
            found += [s for s in _SENTENCE_END.split(text) if len(s) > 20]
    return found


def questions() -> list[str]:
    with open(SCIFACT / "queries.jsonl", encoding="utf-8") as handle:
        return [json.loads(line)["text"] for line in handle]


class Corpus:
    """The chunks, their vectors and the questions (`await Corpus.load()`)."""

    def __init__(self, sentences: list[str], sentence_vectors: np.ndarray, questions: list[str], queries: np.ndarray):
        self.sentences = sentences
        self.sentence_vectors = sentence_vectors
        self.questions = questions
        self.question_vectors = queries

    @classmethod
    async def load(cls) -> Corpus:
        """Embed the sentences (or read them from the cache) and the questions with the service's embedder."""
        embedder = await build_embedder(Settings())
        try:
            found = sentences()
            vectors = await _sentence_vectors(embedder, found)
            asked = questions()
            return cls(found, vectors, asked, await embedder.embed_documents(asked))
        finally:
            await embedder.aclose()

    def _picks(self, i: int) -> list[int]:
        return random.Random(i).sample(range(len(self.sentences)), 3)

    def chunks(self, start: int, n: int) -> list[Chunk]:
        out = []
        for i in range(start, start + n):
            text = " ".join(self.sentences[j] for j in self._picks(i))
            out.append(Chunk(f"d{i}:0", f"d{i}", text, {"orgId": f"org{i % TENANTS}"}))
        return out

    def vectors(self, start: int, n: int) -> np.ndarray:
        """Chunks start..start+n-1's vectors, float32, one a row."""
        out = np.empty((n, self.sentence_vectors.shape[1]), dtype=np.float32)
        for block in range(0, n, _BLOCK):
            count = min(_BLOCK, n - block)
            picks = np.array([self._picks(start + block + i) for i in range(count)], dtype=np.int64)
            summed = self.sentence_vectors[picks].sum(axis=1)
            out[block : block + count] = normalise(summed)
        return out


async def _sentence_vectors(embedder: Embedder, found: list[str]) -> np.ndarray:
    path = CACHE / f"scifact-sentences-{embedder.model_name.replace('/', '_')}-{len(found)}.npy"
    if path.exists():
        return np.load(path)
    started = time.perf_counter()
    vectors = np.concatenate(
        [await embedder.embed_documents(found[start : start + 2048]) for start in range(0, len(found), 2048)]
    ).astype(np.float32)
    print(f"  embedded the {len(vectors):,} sentences in {time.perf_counter() - started:.0f} s (cached in {CACHE})")
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors

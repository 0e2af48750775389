"""The storage protocol: what the retriever, the indexer and the routes may ask of any backend.

A backend stores chunks with their vectors, replaces a document's chunks when its id comes again, deletes, lists,
and searches by a dense leg (cosine similarity of normalised vectors), a keyword leg (BM25 over chunk text), or both
fused. `tests/test_store_conformance.py` is written once against this protocol and runs over every backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from rag.filters import Filters
from rag.types import Chunk, DocumentSummary, Hit

RetrievalMode = Literal["hybrid", "dense", "keyword"]


@dataclass(frozen=True, slots=True)
class SearchRequest:
    """One search. `vector` is the normalised query embedding (None in keyword mode), `text` the query itself.

    `threshold` is a cosine similarity. In dense mode each chunk below it is dropped. In hybrid mode it first
    decides whether the question gets any context at all: when no chunk reaches it, the search returns nothing (the
    question is off-topic); otherwise the dense leg's candidates are the chunks that reach it, the keyword leg's are
    the chunks that match the question's words, and the best of both, fused, are returned. Keyword mode has no
    similarity and ignores it.
    """

    text: str
    vector: np.ndarray | None
    top_k: int
    filters: Filters | None = None
    threshold: float | None = None
    mode: RetrievalMode = "dense"


class VectorStore(Protocol):
    backend: str

    @property
    def count(self) -> int:
        """Chunks stored, as of the last refresh."""
        ...

    @property
    def document_count(self) -> int: ...

    async def upsert(self, chunks: list[Chunk], vectors: np.ndarray, org_id: str | None = None) -> None:
        """Store `chunks` (row i of `vectors` is chunk i's), replacing every earlier chunk of the same documents.
        Returns once the write is durable. With `org_id`, replacing a document of another organisation raises
        TenantForbidden and writes nothing."""
        ...

    async def delete(self, document_id: str, org_id: str | None = None) -> int:
        """Remove a document's chunks; returns how many. Raises DocumentNotFound, also for a document of another
        organisation than `org_id`, when given."""
        ...

    async def search(self, request: SearchRequest) -> list[Hit]:
        """The best `top_k` chunks, best first."""
        ...

    async def list_documents(
        self, offset: int, limit: int, org_id: str | None = None
    ) -> tuple[int, list[DocumentSummary]]:
        """One page of documents in the order they were (last) added, and the total; with `org_id`, only the
        documents whose metadata names that organisation."""
        ...

    def layout(self) -> dict[str, int]:
        """Backend-specific figures for the health route (segments, tombstones, ...)."""
        ...

    async def refresh(self) -> None:
        """Catch up with writes committed by other processes."""
        ...

    async def aclose(self) -> None: ...

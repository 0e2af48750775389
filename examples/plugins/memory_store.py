"""A vector store of your own: a class with the `VectorStore` protocol's methods (`rag/stores/base.py`). The service
builds it with `await MemoryStore.open(embedding_model, dimension, **VECTOR_STORE_OPTIONS)` because it has an async
`open`; a class without one is built with `cls(**VECTOR_STORE_OPTIONS)`.

    VECTOR_STORE=examples.plugins.memory_store:MemoryStore

This one keeps everything in memory (lost at a restart): NumPy for the dense leg, word overlap for the keyword leg,
and the service's own filter semantics. A real one would call your database instead.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from rag.errors import DocumentNotFound, StoreIncompatible, TenantForbidden
from rag.filters import compile_filters
from rag.stores.base import SearchRequest
from rag.types import TENANT_KEY, Chunk, DocumentSummary, Hit

WORD = re.compile(r"\w+")


class MemoryStore:
    backend = "memory"

    def __init__(self, embedding_model: str, dimension: int) -> None:
        self.embedding_model = embedding_model
        self.dimension = dimension
        self._chunks: list[Chunk] = []
        self._vectors = np.zeros((0, dimension), dtype=np.float32)
        self._order: list[str] = []  # document ids, oldest first

    @classmethod
    async def open(cls, embedding_model: str, dimension: int, **options: Any) -> MemoryStore:
        if options:
            raise StoreIncompatible(f"MemoryStore takes no options, not {sorted(options)}")
        return cls(embedding_model, dimension)

    @property
    def count(self) -> int:
        return len(self._chunks)

    @property
    def document_count(self) -> int:
        return len(self._order)

    async def upsert(self, chunks: list[Chunk], vectors: np.ndarray, org_id: str | None = None) -> None:
        if vectors.shape[1] != self.dimension:
            raise StoreIncompatible(f"vectors of {vectors.shape[1]}, the store holds {self.dimension}")
        documents = {c.document_id for c in chunks}
        if org_id is not None and any(c.metadata.get(TENANT_KEY) != org_id for c in self._chunks_of(documents)):
            raise TenantForbidden("a document of another organisation has this id")
        keep = [i for i, c in enumerate(self._chunks) if c.document_id not in documents]
        self._chunks = [self._chunks[i] for i in keep] + list(chunks)
        self._vectors = np.concatenate([self._vectors[keep], vectors.astype(np.float32)])
        self._order = [d for d in self._order if d not in documents] + list(
            dict.fromkeys(c.document_id for c in chunks)
        )

    def _chunks_of(self, documents: set[str]) -> list[Chunk]:
        return [c for c in self._chunks if c.document_id in documents]

    async def delete(self, document_id: str, org_id: str | None = None) -> int:
        mine = self._chunks_of({document_id})
        if not mine or (org_id is not None and mine[0].metadata.get(TENANT_KEY) != org_id):
            raise DocumentNotFound(f"no document {document_id!r}")
        keep = [i for i, c in enumerate(self._chunks) if c.document_id != document_id]
        self._chunks = [self._chunks[i] for i in keep]
        self._vectors = self._vectors[keep]
        self._order.remove(document_id)
        return len(mine)

    async def search(self, request: SearchRequest) -> list[Hit]:
        allowed = compile_filters(request.filters) if request.filters else (lambda meta: True)
        rows = [i for i, c in enumerate(self._chunks) if allowed(c.metadata)]
        if not rows:
            return []
        if request.mode == "keyword" or request.vector is None:
            words = set(WORD.findall(request.text.lower()))
            scored = [(len(words & set(WORD.findall(self._chunks[i].text.lower()))), i) for i in rows]
            best = sorted((s for s in scored if s[0] > 0), reverse=True)[: request.top_k]
            return [Hit(self._chunks[i], float(s), found_by=("keyword",)) for s, i in best]
        scores = self._vectors[rows] @ request.vector
        ranked = sorted(zip(scores.tolist(), rows, strict=True), reverse=True)
        if request.threshold is not None:  # dense and hybrid: nothing below the similarity floor
            ranked = [(s, i) for s, i in ranked if s >= request.threshold]
        return [Hit(self._chunks[i], s) for s, i in ranked[: request.top_k]]

    async def list_documents(
        self, offset: int, limit: int, org_id: str | None = None
    ) -> tuple[int, list[DocumentSummary]]:
        summaries = []
        for document_id in self._order:
            chunks = self._chunks_of({document_id})
            if org_id is None or chunks[0].metadata.get(TENANT_KEY) == org_id:
                summaries.append(DocumentSummary(document_id, len(chunks), chunks[0].metadata, chunks[0].text[:200]))
        return len(summaries), summaries[offset : offset + limit]

    def layout(self) -> dict[str, int]:
        return {}

    async def refresh(self) -> None:
        pass  # one process's memory: nobody else writes

    async def aclose(self) -> None:
        self._chunks, self._vectors = [], self._vectors[:0]

"""The retriever: embeds a query and asks the store for the closest chunks, above a similarity floor."""

from __future__ import annotations

from rag.errors import InvalidRequest
from rag.filters import Filters, validate_filters
from rag.numpy_store import NumpyVectorStore
from rag.types import Embedder, Hit


class Retriever:
    def __init__(self, embedder: Embedder, store: NumpyVectorStore, top_k: int, threshold: float | None) -> None:
        self.embedder = embedder
        self.store = store
        self.top_k = top_k
        self.threshold = threshold

    async def retrieve(
        self,
        query: str,
        top_k: int | None = None,
        filters: Filters | None = None,
        threshold: float | None = None,
    ) -> list[Hit]:
        """Chunks most similar to `query`, best first; `threshold` overrides the configured floor."""
        if not query.strip():
            raise InvalidRequest("the query is empty")
        filters = validate_filters(filters)
        if self.store.count == 0:
            return []  # nothing to find: skip the forward pass
        (vector,) = await self.embedder.embed([query])
        floor = self.threshold if threshold is None else threshold
        return await self.store.search(vector, top_k or self.top_k, filters, floor)

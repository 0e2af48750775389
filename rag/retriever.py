"""The retriever: embeds a query (unless the search is keyword-only) and asks the store for the best chunks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from rag.access import Reader
from rag.errors import InvalidRequest
from rag.filters import Filters, validate_filters
from rag.stores import RetrievalMode, SearchRequest, VectorStore
from rag.types import Embedder, Hit

T = TypeVar("T")


class ReadsSpace(Protocol):
    async def read(self, read: Callable[[Embedder, VectorStore], Awaitable[T]]) -> T: ...


class Retriever:
    def __init__(
        self,
        embedder: Embedder,
        store: VectorStore,
        top_k: int,
        threshold: float | None,
        mode: RetrievalMode = "hybrid",
        space: ReadsSpace | None = None,
    ) -> None:
        self.embedder = embedder
        self.store = store
        self.top_k = top_k
        self.threshold = threshold
        self.mode = mode
        # The active embedding space (rag/spaces/active.py): it swaps in the pair of another space when one becomes
        # active, and runs a search again on it when the store was switched away from as it searched.
        self.space = space

    async def retrieve(
        self,
        query: str,
        top_k: int | None = None,
        filters: Filters | None = None,
        threshold: float | None = None,
        mode: RetrievalMode | None = None,
        reader: Reader | None = None,
    ) -> list[Hit]:
        """Chunks for `query`, best first; `threshold` and `mode` override the configured ones; with `reader`, only
        chunks of documents it may read (the store applies it inside the search)."""
        if not query.strip():
            raise InvalidRequest("the query is empty")
        filters = validate_filters(filters)
        mode = mode or self.mode
        floor = self.threshold if threshold is None else threshold

        async def search(embedder: Embedder, store: VectorStore) -> list[Hit]:
            if store.count == 0:
                await store.refresh()  # another worker or replica may have added since this one last looked
                if store.count == 0:
                    return []  # nothing to find: skip the forward pass
            vector = None if mode == "keyword" else (await embedder.embed([query]))[0]
            request = SearchRequest(query, vector, top_k or self.top_k, filters, floor, mode, reader)
            return await store.search(request)

        # One embedding space's pair throughout, even if another becomes active meanwhile.
        if self.space is None:
            return await search(self.embedder, self.store)
        return await self.space.read(search)

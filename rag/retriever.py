"""The retriever: embeds a query (unless the search is keyword-only) and asks the store for the best chunks."""

from __future__ import annotations

from rag.access import Reader
from rag.errors import InvalidRequest
from rag.filters import Filters, validate_filters
from rag.stores import RetrievalMode, SearchRequest, VectorStore
from rag.types import Embedder, Hit


class Retriever:
    def __init__(
        self,
        embedder: Embedder,
        store: VectorStore,
        top_k: int,
        threshold: float | None,
        mode: RetrievalMode = "hybrid",
    ) -> None:
        self.embedder = embedder
        self.store = store
        self.top_k = top_k
        self.threshold = threshold
        self.mode = mode

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
        # One embedding space's pair throughout, even if another becomes active meanwhile (rag/spaces/active.py).
        embedder, store = self.embedder, self.store
        if store.count == 0:
            await store.refresh()  # another worker or replica may have added since this one last looked
            if store.count == 0:
                return []  # nothing to find: skip the forward pass
        mode = mode or self.mode
        vector = None if mode == "keyword" else (await embedder.embed([query]))[0]
        floor = self.threshold if threshold is None else threshold
        request = SearchRequest(query, vector, top_k or self.top_k, filters, floor, mode, reader)
        return await store.search(request)

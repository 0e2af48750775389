"""The retriever: embeds a query (unless the search is keyword-only) and asks the store for the best chunks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from llm.tracing import tracer
from rag.access import Reader
from rag.embedders.remote import embedder_attributes
from rag.errors import InvalidRequest
from rag.filters import Filters, validate_filters
from rag.stores import RetrievalMode, SearchRequest, VectorStore
from rag.stores.fusion import DEFAULT_DENSE_WEIGHT
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
        dense_weight: float = DEFAULT_DENSE_WEIGHT,
    ) -> None:
        self.embedder = embedder
        self.store = store
        self.top_k = top_k
        self.threshold = threshold
        self.mode = mode
        self.dense_weight = dense_weight  # hybrid: the dense leg's share in the fusion
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
        dense_weight: float | None = None,
    ) -> list[Hit]:
        """Chunks for `query`, best first; `threshold`, `mode` and `dense_weight` override the configured ones; with
        `reader`, only chunks of documents it may read (the store applies it inside the search)."""
        if not query.strip():
            raise InvalidRequest("the query is empty")
        filters = validate_filters(filters)
        mode = mode or self.mode
        floor = self.threshold if threshold is None else threshold

        k = top_k or self.top_k
        weight = self.dense_weight if dense_weight is None else dense_weight

        async def search(embedder: Embedder, store: VectorStore) -> list[Hit]:
            if store.count == 0:
                await store.refresh()  # another worker or replica may have added since this one last looked
                if store.count == 0:
                    return []  # nothing to find: skip the forward pass
            vector = None
            if mode != "keyword":
                with tracer.start_as_current_span("embed") as span:  # current: a remote embedder carries it on
                    span.set_attributes(embedder_attributes(embedder))
                    vector = (await embedder.embed([query]))[0]
            with tracer.start_as_current_span("search") as span:
                span.set_attributes({"rag.store": type(store).__name__, "rag.mode": mode, "rag.top_k": k})
                hits = await store.search(SearchRequest(query, vector, k, filters, floor, mode, reader, weight))
                span.set_attribute("rag.hits", len(hits))
                return hits

        with tracer.start_as_current_span("retrieve") as span:
            span.set_attributes({"rag.mode": mode, "rag.top_k": k, "rag.query_chars": len(query)})
            # One embedding space's pair throughout, even if another becomes active meanwhile.
            hits = await (search(self.embedder, self.store) if self.space is None else self.space.read(search))
            span.set_attribute("rag.hits", len(hits))
            return hits

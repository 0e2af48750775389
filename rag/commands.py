"""What the command-line tools share: the service's embedder and store, opened from the settings and closed after."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from config import Settings
from rag.embedders.factory import build_embedder
from rag.stores import VectorStore, open_store
from rag.types import Embedder


@asynccontextmanager
async def embedder_and_store(settings: Settings) -> AsyncIterator[tuple[Embedder, VectorStore]]:
    """The configured embedder and store; opening the store checks that it was built with that embedder's model."""
    embedder = await build_embedder(settings)
    try:
        store = await open_store(settings, embedder.model_name, embedder.dimension)
        try:
            yield embedder, store
        finally:
            await store.aclose()
    finally:
        await embedder.aclose()

"""What the command-line tools share: the service's embedder and store, opened from the settings and closed after."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from config import Settings
from rag.spaces.active import open_space
from rag.spaces.registry import SpaceRegistry
from rag.stores import VectorStore
from rag.types import Embedder


@asynccontextmanager
async def embedder_and_store(settings: Settings) -> AsyncIterator[tuple[Embedder, VectorStore]]:
    """The active embedding space's embedder and store (rag/spaces/; none registered: the configured embedder and
    the first store); opening the store checks that it was built with that embedder's model."""
    registry = await SpaceRegistry.open(settings)
    try:
        space = await registry.active()
    finally:
        await registry.aclose()
    embedder, store = await open_space(settings, space)
    try:
        yield embedder, store
    finally:
        await store.aclose()
        await embedder.aclose()

"""Storage backends behind one protocol (`base.VectorStore`), chosen from settings by `open_store`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from rag.stores.base import RetrievalMode, SearchRequest, VectorStore

StoreBackend = Literal["numpy"]


async def open_store(backend: StoreBackend, data_dir: Path, embedding_model: str, dimension: int) -> VectorStore:
    """The one factory: open the configured backend for vectors of `embedding_model` (`dimension` floats)."""
    match backend:
        case "numpy":
            from rag.stores.numpy_store import NumpyVectorStore

            return await NumpyVectorStore.open(data_dir / "store", embedding_model, dimension)


__all__ = ["RetrievalMode", "SearchRequest", "StoreBackend", "VectorStore", "open_store"]

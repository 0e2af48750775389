"""Storage backends behind one protocol (`base.VectorStore`), chosen from settings by `open_store`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from rag.errors import StoreIncompatible
from rag.stores.base import RetrievalMode, SearchRequest, VectorStore

if TYPE_CHECKING:
    from config import Settings

StoreBackend = Literal["numpy", "postgres"]


async def open_store(settings: Settings, embedding_model: str, dimension: int) -> VectorStore:
    """The one factory: open the configured backend for vectors of `embedding_model` (`dimension` floats)."""
    match settings.vector_store:
        case "numpy":
            from rag.stores.numpy_store import NumpyVectorStore

            return await NumpyVectorStore.open(settings.data_dir / "store", embedding_model, dimension)
        case "postgres":
            try:
                from rag.stores.postgres_store import PostgresVectorStore
            except ImportError as exc:  # pragma: no cover - both are in requirements.txt
                raise StoreIncompatible(
                    "VECTOR_STORE=postgres needs asyncpg and pgvector (pip install asyncpg pgvector)"
                ) from exc
            assert settings.database_url is not None  # checked by Settings
            return await PostgresVectorStore.open(
                settings.database_url.get_secret_value(),
                embedding_model,
                dimension,
                ef_search=settings.pg_ef_search,
                pool_size=settings.pg_pool_size,
            )


__all__ = ["RetrievalMode", "SearchRequest", "StoreBackend", "VectorStore", "open_store"]

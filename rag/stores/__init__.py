"""Storage backends behind one protocol (`base.VectorStore`), chosen from settings by `open_store`: the embedded
store, PostgreSQL, or a class of your own (`VECTOR_STORE=package.module:ClassName`, or an installed plug-in's name,
built by `await cls.open(embedding_model, dimension, **VECTOR_STORE_OPTIONS)` when it has an async `open`, else
`cls(**VECTOR_STORE_OPTIONS)`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from llm.plugins import construct, load_class, require
from rag.errors import StoreIncompatible
from rag.stores.base import RetrievalMode, SearchRequest, VectorStore
from rag.stores.without_access import with_access_lists

if TYPE_CHECKING:
    from config import Settings

StoreBackend = Literal["numpy", "postgres"]
# What the service calls on a store, and what it reads (`count` and `document_count` are properties: a property is
# found on the class as an attribute is).
STORE_METHODS = ("upsert", "delete", "search", "list_documents", "layout", "refresh", "aclose")
STORE_ATTRIBUTES = ("backend", "count", "document_count")


@dataclass(frozen=True)
class SpaceLocation:
    """Where the store of an embedding space lives (rag/spaces/): `root`, the folder under DATA_DIR that is its alone
    (removed when it is dropped), the embedded store's folder, the PostgreSQL schema (None: the default one), and the
    PostgreSQL store's keyword index folder of this replica."""

    root: str
    folder: str
    schema: str | None
    keywords: str


def space_location(space: str | None) -> SpaceLocation:
    """`space` None: the service's first store, where it always was."""
    if space is None:
        return SpaceLocation("store", "store", None, "pg-keywords")
    return SpaceLocation(f"spaces/{space}", f"spaces/{space}/store", f"rag_space_{space}", f"pg-keywords-{space}")


async def open_store(settings: Settings, embedding_model: str, dimension: int, space: str | None = None) -> VectorStore:
    """The one factory: open the configured backend for vectors of `embedding_model` (`dimension` floats); with
    `space`, the store of that embedding space (rag/spaces/) beside the first."""
    where = space_location(space)
    match settings.vector_store:
        case "numpy":
            from rag.stores.numpy_store import NumpyVectorStore
            from rag.stores.quantized import QuantizedSearch

            return await NumpyVectorStore.open(
                settings.data_dir / where.folder,
                embedding_model,
                dimension,
                quantized=QuantizedSearch(settings.embedded_quantized_above, settings.embedded_rescore_candidates),
            )
        case "postgres":
            try:
                from rag.stores.postgres_store import PostgresVectorStore
            except ImportError as exc:  # pragma: no cover - both are in requirements.txt
                raise StoreIncompatible(
                    "VECTOR_STORE=postgres needs asyncpg and pgvector (pip install asyncpg pgvector)"
                ) from exc
            assert settings.database_url is not None  # checked by Settings
            store = await PostgresVectorStore.open(
                settings.database_url.get_secret_value(),
                embedding_model,
                dimension,
                settings.data_dir / where.keywords,
                ef_search=settings.pg_ef_search,
                pool_size=settings.pg_pool_size,
                ef_construction=settings.pg_hnsw_ef_construction,
                schema=where.schema,
            )
            store.rewrite_on_purge = settings.pg_purge_rewrite
            store.keyword_snapshot_seconds = settings.pg_keyword_snapshot_seconds
            return store
        case spec:
            if space is not None:
                raise StoreIncompatible("embedding spaces need the embedded or the PostgreSQL store, not a plug-in")
            cls = load_class("VECTOR_STORE", spec)
            require(
                "VECTOR_STORE",
                cls,
                STORE_METHODS,
                STORE_ATTRIBUTES,
                "see the VectorStore protocol in rag/stores/base.py",
            )
            store = await construct("VECTOR_STORE", cls, settings.vector_store_options, embedding_model, dimension)
            return with_access_lists(store)


__all__ = ["RetrievalMode", "SearchRequest", "StoreBackend", "VectorStore", "open_store"]

"""The storage protocol: what the retriever, the indexer and the routes may ask of any backend.

A backend stores chunks with their vectors, replaces a document's chunks when its id comes again, deletes, lists,
and searches by a dense leg (cosine similarity of normalised vectors), a keyword leg (BM25 over chunk text), or both
fused. `tests/test_store_conformance.py` is written once against this protocol and runs over every backend.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from rag.access import AccessList, Reader
from rag.errors import StoreIncompatible
from rag.filters import Filters
from rag.stores.fusion import DEFAULT_DENSE_WEIGHT
from rag.types import Chunk, DocumentSummary, Hit

# Access lists given with an add, by document id. A document of the add that is not a key keeps the list it had when
# it replaces one (none for a new document); a key mapped to None opens it to its whole organisation.
AccessByDocument = dict[str, AccessList | None]

RetrievalMode = Literal["hybrid", "dense", "keyword"]


@dataclass(frozen=True, slots=True)
class SearchRequest:
    """One search. `vector` is the normalised query embedding (None in keyword mode), `text` the query itself.

    `threshold` is a cosine similarity. In dense mode each chunk below it is dropped. In hybrid mode it first
    decides whether the question gets any context at all: when no chunk reaches it, the search returns nothing (the
    question is off-topic); otherwise the dense leg's candidates are the chunks that reach it, the keyword leg's are
    the chunks that match the question's words, and the best of both, fused, are returned. Keyword mode has no
    similarity and ignores it.
    """

    text: str
    vector: np.ndarray | None
    top_k: int
    filters: Filters | None = None
    threshold: float | None = None
    mode: RetrievalMode = "dense"
    reader: Reader | None = None  # when set, only the documents this reader may read (see rag/access.py)
    dense_weight: float = DEFAULT_DENSE_WEIGHT  # hybrid: the dense leg's share in the fusion (rag/stores/fusion.py)


@dataclass(frozen=True, slots=True)
class StoredDocument:
    """A document as stored, whole: its chunks in order with their vectors (row i is chunk i's), its access list and
    who added it. What an export writes and an import stores again."""

    id: str
    chunks: list[Chunk]
    vectors: np.ndarray
    access: AccessList | None = None
    added_by: str | None = None


@runtime_checkable
class ExportableStore(Protocol):
    """A store that can hand back what it holds (both built-in stores; a plug-in store may not)."""

    def export_documents(
        self, org_id: str | None = None, document_ids: list[str] | None = None, batch_chunks: int = 4096
    ) -> AsyncIterator[list[StoredDocument]]:
        """Every document (of `org_id`, or among `document_ids`, when given), in the order they were added, in
        batches of about `batch_chunks` chunks, all read from one consistent state of the store: writes that
        commit meanwhile are not seen, and none is seen half."""
        ...


def check_embedding(identity: dict[str, str], built: str, elsewhere: str, embedding_model: str, dimension: int) -> None:
    """StoreIncompatible, naming the way out, unless the stored identity (`built`: what was built, for the message) is
    this embedding model's; `elsewhere` is where a store for the new model goes (another DATA_DIR, database)."""
    if identity.get("embedding_model") != embedding_model or identity.get("dimension") != str(dimension):
        raise StoreIncompatible(
            f"{built} was built with embedding model {identity.get('embedding_model')!r} "
            f"(dimension {identity.get('dimension')}), but this service embeds with {embedding_model!r} "
            f"(dimension {dimension}). Set EMBEDDING_MODEL back, and move to the new model without downtime: ask "
            "the running service for an embedding space of it (POST /api/v1/embedding-spaces, or `python -m "
            "rag.spaces add`), then activate it (docs/api.md, 'Embedding spaces'). Or carry the documents over: "
            "`python -m rag.export kb.tar` with the old model, then `python -m rag.import kb.tar --reembed` with the "
            f"new one into {elsewhere} (docs/deployment.md, 'Another embedding model')."
        )


class VectorStore(Protocol):
    backend: str

    @property
    def count(self) -> int:
        """Chunks stored, as of the last refresh."""
        ...

    @property
    def document_count(self) -> int: ...

    async def upsert(
        self,
        chunks: list[Chunk],
        vectors: np.ndarray,
        org_id: str | None = None,
        access: AccessByDocument | None = None,
        reader: Reader | None = None,
        added_by: str | None = None,
    ) -> None:
        """Store `chunks` (row i of `vectors` is chunk i's), replacing every earlier chunk of the same documents.
        Returns once the write is durable. With `org_id`, replacing a document of another organisation raises
        TenantForbidden and writes nothing; with `reader`, so does replacing one the reader may not read. `access`
        sets the documents' access lists in the same write; `added_by` records the user who added them (a user's
        purge deletes them)."""
        ...

    async def delete(self, document_id: str, org_id: str | None = None, reader: Reader | None = None) -> int:
        """Remove a document's chunks; returns how many. Raises DocumentNotFound, also for a document of another
        organisation than `org_id`, or one `reader` may not read."""
        ...

    async def get_document(
        self, document_id: str, org_id: str | None = None, reader: Reader | None = None
    ) -> DocumentSummary:
        """One document with its access list; DocumentNotFound as `delete` says."""
        ...

    async def delete_many(self, document_ids: list[str], org_id: str | None = None) -> int:
        """Delete those of the documents that exist (of `org_id`, when given) in one write; returns their chunks."""
        ...

    async def documents_added_by(self, user_id: str, org_id: str | None = None) -> list[str]:
        """The ids of the documents `user_id` added (of `org_id`, when given)."""
        ...

    async def document_ids(self, org_id: str | None) -> list[str]:
        """The ids of every document of an organisation (None: of the whole store), in the order they were added."""
        ...

    async def set_access(self, document_id: str, access: AccessList | None, org_id: str | None = None) -> None:
        """Replace a document's access list (None: the whole organisation) without touching its chunks; it holds for
        every search, list and fetch that starts after this returns, in every process. DocumentNotFound as
        `delete` says."""
        ...

    async def search(self, request: SearchRequest) -> list[Hit]:
        """The best `top_k` chunks, best first."""
        ...

    async def list_documents(
        self, offset: int, limit: int, org_id: str | None = None, reader: Reader | None = None
    ) -> tuple[int, list[DocumentSummary]]:
        """One page of documents in the order they were (last) added, and the total; with `org_id`, only the
        documents whose metadata names that organisation; with `reader`, only those it may read (the total too)."""
        ...

    def layout(self) -> dict[str, int]:
        """Backend-specific figures for the health route (segments, tombstones, ...)."""
        ...

    async def refresh(self) -> None:
        """Catch up with writes committed by other processes."""
        ...

    async def aclose(self) -> None: ...


@runtime_checkable
class SpaceStore(VectorStore, ExportableStore, Protocol):
    """A store an embedding space can live in (both built-in stores; see rag/spaces/). `follower`: only the space
    builder writes it, past the marker that refuses every other write once the space is not the active one."""

    follower: bool

    async def chunks_of(self, org_id: str | None) -> int:
        """The chunks an organisation's documents hold (None: the whole store's): what QUOTA_CHUNKS is held to."""
        ...

    async def document_states(self) -> dict[str, tuple[int, str | None]]:
        """Each document's seq (moved by every add) and access list as stored (None: its whole organisation)."""
        ...

    async def write_generation(self) -> int:
        """A counter every committed write moves (adds, deletions, access lists), in every process."""
        ...

    async def mark_retired(self, retired: bool) -> None:
        """Set (or clear) the marker that refuses writes (SpaceRetired) to a store whose space is not active."""
        ...

    async def is_retired(self) -> bool:
        """Whether the marker is set (always False for the follower's own handle): a replica still on this store
        asks before each read, and moves to the active space first, since other replicas may already write there."""
        ...

    def switch_barrier(self) -> AbstractAsyncContextManager[None]:
        """While held, no write to the store starts or is in flight, from any process; reads go on."""
        ...

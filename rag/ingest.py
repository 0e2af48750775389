"""Ingestion: split documents into chunks, embed them in batches, and store them under their document's id."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from rag.chunking import split_text
from rag.errors import InvalidRequest, TenantForbidden
from rag.stores import VectorStore
from rag.types import TENANT_KEY, Chunk, Embedder, Metadata


@dataclass(frozen=True, slots=True)
class AddedDocument:
    id: str
    chunks: int


class Indexer:
    def __init__(self, embedder: Embedder, store: VectorStore, chunk_size: int, chunk_overlap: int) -> None:
        self.embedder = embedder
        self.store = store
        self.chunk_size = chunk_size
        self.chunk_overlap = chunk_overlap

    async def add(
        self,
        texts: list[str],
        metadatas: list[Metadata] | None = None,
        ids: list[str] | None = None,
        org_id: str | None = None,
    ) -> list[AddedDocument]:
        """Chunk, embed and store documents; a document whose id is already stored is replaced. With `org_id`,
        every document is stamped with it, and one naming another organisation, or replacing one of another
        organisation's documents, is refused.

        Nothing is written unless every document is valid, and the call returns only once the write is on disk.
        """
        if metadatas is not None and len(metadatas) != len(texts):
            raise InvalidRequest(f"got {len(texts)} documents but {len(metadatas)} metadatas")
        if ids is not None and len(ids) != len(texts):
            raise InvalidRequest(f"got {len(texts)} documents but {len(ids)} ids")
        doc_ids = ids if ids is not None else [uuid.uuid4().hex for _ in texts]
        if len(set(doc_ids)) != len(doc_ids):
            raise InvalidRequest("ids must be unique within one request")

        chunks: list[Chunk] = []
        added: list[AddedDocument] = []
        for n, (doc_id, text) in enumerate(zip(doc_ids, texts, strict=True)):
            pieces = split_text(text, self.chunk_size, self.chunk_overlap)
            if not pieces:
                raise InvalidRequest(f"document {n} is empty")
            metadata = dict(metadatas[n]) if metadatas else {}
            if org_id is not None:  # the caller's organisation owns what it adds; naming another is refused
                if metadata.get(TENANT_KEY, org_id) != org_id:
                    raise TenantForbidden(f"document {n}: its {TENANT_KEY} is another organisation than yours")
                metadata[TENANT_KEY] = org_id
            chunks.extend(Chunk(f"{doc_id}:{i}", doc_id, piece, metadata) for i, piece in enumerate(pieces))
            added.append(AddedDocument(doc_id, len(pieces)))

        vectors = await self.embedder.embed([chunk.text for chunk in chunks])
        await self.store.upsert(chunks, vectors, org_id)
        return added

"""The add path shared by JSON adds and ingestion jobs: split documents into chunks, embed them in batches, and store
each document's chunks under its id in one write (a document is stored whole, or not at all)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np

from llm.tracing import tracer
from rag.access import AccessList, Reader
from rag.chunking import split_text
from rag.embedders.remote import embedder_attributes
from rag.errors import InvalidRequest, SpaceRetired, TenantForbidden
from rag.ingest.parsers import Section
from rag.stores import VectorStore
from rag.stores.base import AccessByDocument
from rag.types import TENANT_KEY, Chunk, Embedder, Metadata
from rag.usage.meter import Account, UsageMeter

# After each batch a job reports progress (and may learn it was cancelled).
ProgressCallback = Callable[[int], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class AddedDocument:
    id: str
    chunks: int


def owned_metadata(metadata: Metadata | None, org_id: str | None, label: str) -> Metadata:
    """A document's metadata stamped with the caller's organisation; naming another organisation is refused."""
    owned = dict(metadata or {})
    if org_id is not None:
        if owned.get(TENANT_KEY, org_id) != org_id:
            raise TenantForbidden(f"{label}: its {TENANT_KEY} is another organisation than yours")
        owned[TENANT_KEY] = org_id
    return owned


class Indexer:
    def __init__(
        self,
        embedder: Embedder,
        store: VectorStore,
        chunk_size: int,
        chunk_overlap: int,
        on_space_switched: Callable[[], Awaitable[object]] | None = None,
        usage: UsageMeter | None = None,
    ) -> None:
        self.embedder = embedder  # both replaced together when another embedding space becomes active
        self.store = store
        self.chunk_size = chunk_size
        self.chunk_overlap = chunk_overlap
        # Awaited when a write reached a store whose space was switched away from: it moves to the active space,
        # and the chunks are embedded again with its model and written there.
        self.on_space_switched = on_space_switched
        self.usage = usage  # counts the chunks and tokens embedded, per organisation and user (rag/usage/)

    def chunk_document(self, doc_id: str, sections: Sequence[Section], metadata: Metadata) -> list[Chunk]:
        """A document's chunks; a section with a page (PDF) puts `page` in the metadata of each of its chunks, and
        one with a location (a slide, a sheet's rows, a chapter, an attachment) puts `location`, so a source can be
        cited by them. Chunks never span two sections."""
        pieces: list[tuple[str, Metadata]] = []
        for section in sections:
            meta = metadata if section.page is None else {**metadata, "page": section.page}
            if section.location is not None:
                meta = {**meta, "location": section.location}
            pieces.extend((piece, meta) for piece in split_text(section.text, self.chunk_size, self.chunk_overlap))
        return [Chunk(f"{doc_id}:{i}", doc_id, text, meta) for i, (text, meta) in enumerate(pieces)]

    async def add(
        self,
        texts: list[str],
        metadatas: list[Metadata] | None = None,
        ids: list[str] | None = None,
        org_id: str | None = None,
        access: list[AccessList | None] | AccessByDocument | None = None,
        reader: Reader | None = None,
        added_by: str | None = None,
    ) -> list[AddedDocument]:
        """Chunk, embed and store documents; a document whose id is already stored is replaced. With `org_id`,
        every document is stamped with it, and one naming another organisation, or replacing one of another
        organisation's documents, is refused.

        `access`, parallel to `texts`, sets each document's access list (None: its whole organisation); without
        it a replaced document keeps its list. As a dict by document id, only the documents it names are set.
        With `reader`, replacing a document it may not read is refused.

        Nothing is written unless every document is valid, and the call returns only once the write is on disk.
        """
        if isinstance(access, list) and len(access) != len(texts):
            raise InvalidRequest(f"got {len(texts)} documents but {len(access)} access lists")
        chunks: list[Chunk] = []
        added: list[AddedDocument] = []
        for text, (doc_id, metadata) in zip(texts, prepare_documents(texts, metadatas, ids, org_id), strict=True):
            parts = self.chunk_document(doc_id, [Section(text)], metadata)
            chunks.extend(parts)
            added.append(AddedDocument(doc_id, len(parts)))
        by_document = dict(zip((doc.id for doc in added), access, strict=True)) if isinstance(access, list) else access
        await self.store_chunks(chunks, org_id, access=by_document, reader=reader, added_by=added_by)
        return added

    async def _check_quota(self, store: VectorStore, org_id: str | None, adding: int) -> None:
        """QUOTA_CHUNKS, when one holds and the store can count an organisation's chunks (a plug-in may not)."""
        chunks_of = getattr(store, "chunks_of", None)
        if self.usage is None or chunks_of is None or self.usage.limits_of(org_id).chunks is None:
            return
        self.usage.check_chunks(org_id, await chunks_of(org_id), adding)

    async def store_chunks(
        self,
        chunks: list[Chunk],
        org_id: str | None,
        batch_size: int | None = None,
        on_progress: ProgressCallback | None = None,
        access: AccessByDocument | None = None,
        reader: Reader | None = None,
        added_by: str | None = None,
    ) -> None:
        """Embed chunks (in batches of `batch_size`, reporting the running count after each) and write them in one
        upsert: the documents they belong to are replaced whole."""
        if not chunks:
            return
        for attempt in range(SpaceRetired.retries + 1):
            embedder, store = self.embedder, self.store  # one space's pair, even if a switch comes meanwhile
            await self._check_quota(store, org_id, len(chunks))  # before anything is embedded
            step = batch_size or len(chunks)
            parts: list[np.ndarray] = []
            with tracer.start_as_current_span("embed") as span:
                span.set_attributes({**embedder_attributes(embedder), "rag.chunks": len(chunks)})
                for start in range(0, len(chunks), step):
                    parts.append(await embedder.embed_documents([c.text for c in chunks[start : start + step]]))
                    if on_progress is not None:
                        await on_progress(start + len(parts[-1]))
            vectors = parts[0] if len(parts) == 1 else np.concatenate(parts)
            try:
                with tracer.start_as_current_span("store", attributes={"rag.store": type(store).__name__}):
                    await store.upsert(chunks, vectors, org_id, access, reader, added_by)
                if self.usage is not None:
                    chars = sum(len(c.text) for c in chunks)
                    self.usage.record_embedding(Account(org_id, added_by), embedder.model_name, len(chunks), chars)
                return
            except SpaceRetired:
                if self.on_space_switched is None or attempt == SpaceRetired.retries:
                    raise
                await self.on_space_switched()


def prepare_documents(
    texts: list[str], metadatas: list[Metadata] | None, ids: list[str] | None, org_id: str | None
) -> list[tuple[str, Metadata]]:
    """Each document's id (a new one where none is given) and its metadata stamped with `org_id`, after checking the
    whole batch: the lists line up, ids are unique, no document is empty or names another organisation. Both add
    paths (at once, or as a job) check here, before anything is written."""
    if metadatas is not None and len(metadatas) != len(texts):
        raise InvalidRequest(f"got {len(texts)} documents but {len(metadatas)} metadatas")
    if ids is not None and len(ids) != len(texts):
        raise InvalidRequest(f"got {len(texts)} documents but {len(ids)} ids")
    doc_ids = ids if ids is not None else [uuid.uuid4().hex for _ in texts]
    if len(set(doc_ids)) != len(doc_ids):
        raise InvalidRequest("ids must be unique within one request")
    prepared: list[tuple[str, Metadata]] = []
    for n, (doc_id, text) in enumerate(zip(doc_ids, texts, strict=True)):
        metadata = owned_metadata(metadatas[n] if metadatas else None, org_id, f"document {n}")
        if not text.strip():  # the chunker strips: nothing else can leave a document without chunks
            raise InvalidRequest(f"document {n} is empty")
        prepared.append((doc_id, metadata))
    return prepared

"""A plug-in store written before access lists (no `set_access`), wrapped so the service can call it as any store.

Such a store holds no access list, so every document it holds is readable by its whole organisation, and a reader
narrows nothing: the wrapper drops the reader and calls the plug-in's methods as they were written. An add that
carries an access list is refused (422), so that no document is ever stored with a list the store cannot enforce.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rag.access import AccessList, Reader
from rag.errors import DocumentNotFound, InvalidRequest
from rag.stores.base import AccessByDocument, SearchRequest, VectorStore
from rag.types import Chunk, DocumentSummary, Hit

UNSUPPORTED = "this VECTOR_STORE plug-in does not support access lists (it has no set_access method)"


class WithoutAccessLists:
    def __init__(self, store: Any) -> None:
        self.inner = store
        self.backend = store.backend

    @property
    def count(self) -> int:
        return int(self.inner.count)

    @property
    def document_count(self) -> int:
        return int(self.inner.document_count)

    async def upsert(
        self,
        chunks: list[Chunk],
        vectors: np.ndarray,
        org_id: str | None = None,
        access: AccessByDocument | None = None,
        reader: Reader | None = None,
        added_by: str | None = None,
    ) -> None:
        if access and any(value is not None for value in access.values()):
            raise InvalidRequest(UNSUPPORTED)
        await self.inner.upsert(chunks, vectors, org_id)

    async def delete(self, document_id: str, org_id: str | None = None, reader: Reader | None = None) -> int:
        return int(await self.inner.delete(document_id, org_id))

    async def delete_many(self, document_ids: list[str], org_id: str | None = None) -> int:
        removed = 0
        for document_id in document_ids:
            try:
                removed += int(await self.inner.delete(document_id, org_id))
            except DocumentNotFound:
                continue
        return removed

    async def documents_added_by(self, user_id: str, org_id: str | None = None) -> list[str]:
        return []  # the plug-in records no adder: a user's purge leaves its documents

    async def document_ids(self, org_id: str | None) -> list[str]:
        ids: list[str] = []
        while True:
            total, page = await self.inner.list_documents(len(ids), 1000, org_id)
            ids += [document.id for document in page]
            if not page or len(ids) >= total:
                return ids

    async def get_document(
        self, document_id: str, org_id: str | None = None, reader: Reader | None = None
    ) -> DocumentSummary:
        offset = 0
        while True:  # the plug-in protocol has no fetch by id: page through its list
            total, page = await self.inner.list_documents(offset, 1000, org_id)
            for document in page:
                if document.id == document_id:
                    return document
            offset += len(page)
            if not page or offset >= total:
                raise DocumentNotFound(f"no document with id {document_id!r}")

    async def set_access(self, document_id: str, access: AccessList | None, org_id: str | None = None) -> None:
        raise InvalidRequest(UNSUPPORTED)

    async def search(self, request: SearchRequest) -> list[Hit]:
        return list(await self.inner.search(request))

    async def list_documents(
        self, offset: int, limit: int, org_id: str | None = None, reader: Reader | None = None
    ) -> tuple[int, list[DocumentSummary]]:
        total, page = await self.inner.list_documents(offset, limit, org_id)
        return total, page

    def layout(self) -> dict[str, int]:
        return dict(self.inner.layout())

    async def refresh(self) -> None:
        await self.inner.refresh()

    async def aclose(self) -> None:
        await self.inner.aclose()


def with_access_lists(store: Any) -> VectorStore:
    """The plug-in itself when it implements access lists, else the plug-in wrapped."""
    if callable(getattr(store, "set_access", None)):
        return store  # type: ignore[no-any-return]
    return WithoutAccessLists(store)

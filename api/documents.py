"""Document routes: add (chunk + embed + store), search without generation, list and delete."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query

from api.auth import PrincipalDep
from api.deps import ServicesDep
from api.limits import check_documents, check_top_k
from api.schemas import (
    AddDocumentsAnswer,
    AddDocumentsBody,
    AddedDocumentBody,
    DeletedAnswer,
    DocumentPage,
    DocumentSummaryBody,
    ErrorBody,
    SearchAnswer,
    Source,
)
from api.security import RateLimited
from rag.errors import InvalidRequest
from rag.pipeline import scoped_filters
from rag.stores import RetrievalMode

router = APIRouter(prefix="/documents", tags=["documents"])


@router.post(
    "/add", response_model=AddDocumentsAnswer, responses={422: {"model": ErrorBody}}, dependencies=[RateLimited]
)
async def add_documents(body: AddDocumentsBody, services: ServicesDep, principal: PrincipalDep) -> AddDocumentsAnswer:
    """Store documents; the answer comes once they are on disk. A credential bound to an organisation stamps its
    `orgId` on every document and cannot add to, or replace a document of, another organisation."""
    check_documents(services.settings, body.documents)
    added = await services.indexer.add(body.documents, body.metadatas, body.ids, org_id=principal.org_id)
    return AddDocumentsAnswer(
        ids=[doc.id for doc in added], documents=[AddedDocumentBody(id=doc.id, chunks=doc.chunks) for doc in added]
    )


def _parse_filters(raw: str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        filters = json.loads(raw)
    except ValueError as exc:
        raise InvalidRequest("filters must be a JSON object") from exc
    if not isinstance(filters, dict):
        raise InvalidRequest("filters must be a JSON object")
    return filters


@router.get("/search", response_model=SearchAnswer, responses={422: {"model": ErrorBody}})
async def search_documents(
    services: ServicesDep,
    principal: PrincipalDep,
    query: Annotated[str, Query(min_length=1, description="Text to search for.")],
    top_k: Annotated[int, Query(ge=1, description="How many chunks to return (at most MAX_TOP_K).")] = 5,
    filters: Annotated[str | None, Query(description='Metadata filters as JSON, e.g. {"lang": "en"}.')] = None,
    orgId: Annotated[str | None, Query(min_length=1, description="Only this organisation's documents.")] = None,
    mode: Annotated[
        RetrievalMode | None,
        Query(description="'hybrid', 'dense' or 'keyword'; default RETRIEVAL_MODE. Each hit says which legs found it."),
    ] = None,
) -> SearchAnswer:
    """Ranked chunks for a query, no generation. The similarity threshold applies here as in chat."""
    check_top_k(services.settings, top_k)
    _, org_id = principal.scope(None, orgId)
    hits = await services.retriever.retrieve(query, top_k, scoped_filters(_parse_filters(filters), org_id), mode=mode)
    return SearchAnswer(results=[Source.of(hit) for hit in hits])


@router.get("", response_model=DocumentPage)
async def list_documents(
    services: ServicesDep,
    principal: PrincipalDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    orgId: Annotated[str | None, Query(min_length=1, description="Only this organisation's documents.")] = None,
) -> DocumentPage:
    """Stored documents in the order they were added, one page at a time."""
    _, org_id = principal.scope(None, orgId)
    total, page = await services.store.list_documents(offset, limit, org_id)
    return DocumentPage(
        documents=[DocumentSummaryBody(id=d.id, chunks=d.chunks, metadata=d.metadata, preview=d.preview) for d in page],
        total=total,
        offset=offset,
        limit=limit,
    )


@router.delete("/{document_id}", response_model=DeletedAnswer, responses={404: {"model": ErrorBody}})
async def delete_document(document_id: str, services: ServicesDep, principal: PrincipalDep) -> DeletedAnswer:
    """Remove a document and all its chunks, on disk before the answer (another organisation's is not found)."""
    removed = await services.store.delete(document_id, principal.org_id)
    return DeletedAnswer(id=document_id, deleted_chunks=removed)

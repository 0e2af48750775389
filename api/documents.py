"""Document routes: add (chunk + embed + store), search without generation, list and delete."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import JSONResponse

from api.auth import PrincipalDep
from api.deps import ServicesDep
from api.jobs import job_accepted
from api.limits import check_documents, check_top_k
from api.schemas import (
    AddDocumentsAnswer,
    AddDocumentsBody,
    AddedDocumentBody,
    DeletedAnswer,
    DocumentPage,
    DocumentSummaryBody,
    ErrorBody,
    JobBody,
    SearchAnswer,
    Source,
)
from api.security import RateLimited
from rag.errors import InvalidRequest
from rag.ingest.indexer import prepare_documents
from rag.ingest.runner import Upload
from rag.pipeline import scoped_filters
from rag.stores import RetrievalMode

router = APIRouter(prefix="/documents", tags=["documents"])


_ADD_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"model": JobBody, "description": "A large add became a background job: follow it at /api/v1/jobs/{id}."},
    403: {"model": ErrorBody},
    422: {"model": ErrorBody},
}


@router.post("/add", response_model=AddDocumentsAnswer, responses=_ADD_RESPONSES, dependencies=[RateLimited])
async def add_documents(
    body: AddDocumentsBody,
    services: ServicesDep,
    principal: PrincipalDep,
    wait: Annotated[
        bool | None,
        Query(
            description="true: answer once stored; false: always a background job. Unset: a job above "
            "ADD_JOB_THRESHOLD_CHARS characters."
        ),
    ] = None,
) -> AddDocumentsAnswer | JSONResponse:
    """Store documents. A small add answers once they are on disk, as the seed's clients expect; a large one (or
    `wait=false`) answers 202 with a job to follow. A credential bound to an organisation stamps its `orgId` on
    every document and cannot add to, or replace a document of, another organisation."""
    check_documents(services.settings, body.documents)
    if wait is None:
        wait = sum(map(len, body.documents)) <= services.settings.add_job_threshold_chars
    if not wait:
        prepared = prepare_documents(body.documents, body.metadatas, body.ids, principal.org_id)
        job = await services.jobs.submit_documents(body.documents, prepared, principal.org_id, principal.user_id)
        return job_accepted(job)
    added = await services.indexer.add(body.documents, body.metadatas, body.ids, org_id=principal.org_id)
    return AddDocumentsAnswer(
        ids=[doc.id for doc in added], documents=[AddedDocumentBody(id=doc.id, chunks=doc.chunks) for doc in added]
    )


@router.post(
    "/upload",
    status_code=202,
    response_model=JobBody,
    responses={code: {"model": ErrorBody} for code in (403, 413, 415, 422)},
    dependencies=[RateLimited],
)
async def upload_documents(
    services: ServicesDep,
    principal: PrincipalDep,
    files: Annotated[list[UploadFile], File(description="One or more files: .txt, .md, .html, .pdf, .docx.")],
    metadata: Annotated[
        str | None, Form(description='A JSON object stored with every file of the upload, e.g. {"team": "legal"}.')
    ] = None,
    ids: Annotated[
        str | None,
        Form(description="A JSON array of document ids, one per file; unset: derived from each file's content."),
    ] = None,
) -> JSONResponse:
    """Upload files for ingestion in the background: 202 with the job, whose progress `/api/v1/jobs/{id}/events`
    streams. A file of an unknown type (415) or an upload over MAX_UPLOAD_BYTES (413) is refused whole, before
    anything is stored. A file that cannot be read (corrupt, encrypted, no text) fails in the job, by name."""
    settings = services.settings
    if len(files) > settings.max_upload_files:
        raise InvalidRequest(
            f"at most {settings.max_upload_files} files per upload (MAX_UPLOAD_FILES), got {len(files)}"
        )
    extra = _json_form(metadata, dict, "metadata must be a JSON object (with finite numbers only)")
    given_ids = _json_form(ids, list, "ids must be a JSON array of strings, one per file")
    if given_ids is not None:
        if len(given_ids) != len(files) or not all(isinstance(i, str) and i for i in given_ids):
            raise InvalidRequest(f"ids must be a JSON array of {len(files)} non-empty strings, one per file")
        if len(set(given_ids)) != len(given_ids):
            raise InvalidRequest("ids must be unique within one upload")
    uploads = [Upload(f.filename or f"file {n}", f.content_type, f.file) for n, f in enumerate(files)]
    job = await services.jobs.submit_uploads(uploads, extra, given_ids, principal.org_id, principal.user_id)
    return job_accepted(job)


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _json_form(raw: str | None, kind: type, message: str) -> Any:
    if raw is None or not raw.strip():
        return None
    try:
        # NaN and Infinity: Python's reader takes them, but stored they would break every response that carries them.
        value = json.loads(raw, parse_constant=_not_json)
    except ValueError:
        raise InvalidRequest(message) from None
    if not isinstance(value, kind):
        raise InvalidRequest(message)
    return value


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

"""Document routes: add (chunk + embed + store), search without generation, list, fetch, delete, and access lists.

Every route passes the caller's reader (`Principal.reader`) down to the store, which applies it where the rows are
read: a document the caller may not read answers 404 exactly as one that does not exist."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse

from api.auth import Principal, PrincipalDep
from api.deps import Services, ServicesDep
from api.jobs import job_accepted
from api.limits import check_documents, check_top_k
from api.schemas import (
    AccessListBody,
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
from rag.access import AccessList
from rag.errors import InvalidRequest, TenantForbidden
from rag.ingest.indexer import AddedDocument, prepare_documents
from rag.ingest.jobs import Job
from rag.ingest.runner import Upload
from rag.pipeline import scoped_filters
from rag.stores import RetrievalMode
from rag.types import DocumentSummary, Metadata, tenant_of
from rag.usage.meter import Account

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
    access = None if body.access is None else [None if a is None else a.parsed() for a in body.access]
    if access is not None and len(access) != len(body.documents):
        raise InvalidRequest(f"got {len(body.documents)} documents but {len(access)} access lists")
    stored = await store_texts(services, principal, body.documents, body.metadatas, body.ids, access, wait)
    if isinstance(stored, Job):
        return job_accepted(stored)
    added = stored
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
    access: Annotated[
        str | None,
        Form(
            description='Every file\'s access list as JSON, e.g. {"groups": ["hr"]}; "null": the whole organisation. '
            "Unset: new documents are readable by the whole organisation, replaced ones keep their list."
        ),
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
    listed: AccessList | Literal["keep"] | None = "keep"
    if access is not None and access.strip():
        listed = AccessList.parse(_json_form(access.strip(), object, "access must be JSON"), "access")
    uploads = [Upload(f.filename or f"file {n}", f.content_type, f.file) for n, f in enumerate(files)]
    size = sum(f.size or 0 for f in files)
    return job_accepted(await submit_files(services, principal, uploads, size, extra, given_ids, listed))


async def store_texts(
    services: Services,
    principal: Principal,
    documents: list[str],
    metadatas: list[Metadata] | None,
    ids: list[str] | None,
    access: list[AccessList | None] | None,
    wait: bool | None,
) -> list[AddedDocument] | Job:
    """The add path of every transport (this route, MCP's add_document), after its own checks of the request: the
    day's bytes checked and counted, then the documents stored now, or (large, or `wait` false) as a job."""
    account = Account(principal.org_id, principal.user_id, principal.key_id)
    size = sum(len(text.encode()) for text in documents)
    services.usage.check_upload(account, size)  # before anything is embedded or stored
    services.usage.record_upload(account, size)
    if wait is None:
        wait = sum(map(len, documents)) <= services.settings.add_job_threshold_chars
    if not wait:
        prepared = prepare_documents(documents, metadatas, ids, principal.org_id)
        return await services.jobs.submit_documents(
            documents, prepared, principal.org_id, principal.user_id, access, principal.reader
        )
    return await services.indexer.add(
        documents,
        metadatas,
        ids,
        org_id=principal.org_id,
        access=access,
        reader=principal.reader,
        added_by=principal.user_id,
    )


async def submit_files(
    services: Services,
    principal: Principal,
    uploads: list[Upload],
    size: int,
    metadata: Metadata | None,
    ids: list[str] | None,
    access: AccessList | Literal["keep"] | None,
) -> Job:
    """The upload path of every transport (this route, MCP's upload_file): the day's bytes checked, the files
    accepted as a job (on disk first), then counted."""
    account = Account(principal.org_id, principal.user_id, principal.key_id)
    services.usage.check_upload(account, size)
    job = await services.jobs.submit_uploads(
        uploads, metadata, ids, principal.org_id, principal.user_id, access, principal.reader
    )
    services.usage.record_upload(account, size)
    return job


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
    fusion_weight: Annotated[
        float | None,
        Query(ge=0, le=1, description="Hybrid: the dense leg's share in the fusion; default FUSION_DENSE_WEIGHT."),
    ] = None,
) -> SearchAnswer:
    """Ranked chunks for a query, no generation. The similarity threshold applies here as in chat."""
    check_top_k(services.settings, top_k)
    _, org_id = principal.scope(None, orgId)
    filters_ = scoped_filters(_parse_filters(filters), org_id)
    hits = await services.retriever.retrieve(
        query, top_k, filters_, mode=mode, reader=principal.reader, dense_weight=fusion_weight
    )
    return SearchAnswer(results=[Source.of(hit) for hit in hits])


@router.get("", response_model=DocumentPage)
async def list_documents(
    services: ServicesDep,
    principal: PrincipalDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    orgId: Annotated[str | None, Query(min_length=1, description="Only this organisation's documents.")] = None,
) -> DocumentPage:
    """Stored documents in the order they were added, one page at a time (only those the caller may read, and
    their total)."""
    _, org_id = principal.scope(None, orgId)
    total, page = await services.store.list_documents(offset, limit, org_id, principal.reader)
    return DocumentPage(
        documents=[DocumentSummaryBody.of(d) for d in page],
        total=total,
        offset=offset,
        limit=limit,
    )


@router.delete("/{document_id}", response_model=DeletedAnswer, responses={404: {"model": ErrorBody}})
async def delete_document(document_id: str, services: ServicesDep, principal: PrincipalDep) -> DeletedAnswer:
    """Remove a document and all its chunks, on disk before the answer (another organisation's is not found)."""
    document = await services.store.get_document(document_id, principal.org_id, principal.reader)
    removed = await services.store.delete(document_id, principal.org_id, principal.reader)
    await audit(services, principal, "document.delete", document)
    services.purger.deleted()
    return DeletedAnswer(id=document_id, deleted_chunks=removed)


@router.get("/{document_id}", response_model=DocumentSummaryBody, responses={404: {"model": ErrorBody}})
async def get_document(document_id: str, services: ServicesDep, principal: PrincipalDep) -> DocumentSummaryBody:
    """One document: its chunk count, metadata, preview and access list (404 for one the caller may not read)."""
    return DocumentSummaryBody.of(await services.store.get_document(document_id, principal.org_id, principal.reader))


@router.put(
    "/{document_id}/access",
    response_model=DocumentSummaryBody,
    responses={code: {"model": ErrorBody} for code in (403, 404, 422)},
)
async def set_document_access(
    document_id: str,
    services: ServicesDep,
    principal: PrincipalDep,
    request: Request,
    body: Annotated[AccessListBody | None, Body(description="The new list; null: the whole organisation.")] = None,
) -> DocumentSummaryBody:
    """Replace who may read a document, without re-embedding it; every replica applies it from its next request.
    Only an organisation's own key (or a trusted key, or an open service) may: a user token or a key acting for a
    user (X-On-Behalf-Of) gets 403."""
    if principal.reader is not None:
        raise TenantForbidden("changing who may read a document needs the organisation's key, not a user's")
    if not (await request.body()).strip():  # null opens the document to everyone: it must be said, not implied
        raise InvalidRequest('send the access list, e.g. {"groups": ["hr"]}, or null for the whole organisation')
    access = None if body is None else body.parsed()
    await services.store.set_access(document_id, access, principal.org_id)
    document = await services.store.get_document(document_id, principal.org_id)
    await audit(services, principal, "document.access", document, {"access": body and body.model_dump()})
    return DocumentSummaryBody.of(document)


async def audit(
    services: Services,
    principal: Principal,
    action: str,
    document: DocumentSummary,
    details: dict[str, Any] | None = None,
) -> None:
    """One entry of the audit log, filed under the document's organisation: its admin reads it there."""
    org_id = principal.org_id or tenant_of(document.metadata)
    await services.audit.record(action, document.id, org_id, principal.kind, principal.user_id, details)

"""Administration of an organisation's data: the audit log, exporting its knowledge base, and purging a user or a
whole organisation.

These routes are for an organisation's own key (`KEY:ORG_ID`), a trusted key, or an open service; a user token or
a key acting for a user (X-On-Behalf-Of) gets 403. Every purge is recorded in the audit log, and the purger then
erases the deleted text from the files (`rag/purge.py`, PURGE_DELAY_SECONDS).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from dataclasses import asdict
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from api.auth import Principal, PrincipalDep
from api.deps import Services, ServicesDep
from api.schemas import ErrorBody
from rag.archive.exporter import export_archive
from rag.backup import BackupError, backup
from rag.chats.sqlite import ChatNotFound, ChatOwner
from rag.errors import InvalidRequest, TenantForbidden
from rag.purge import remove_leftover_exports

router = APIRouter(tags=["administration"])
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (403, 422)}


def admin_org(principal: Principal, org_id: str | None) -> str | None:
    """The organisation an administrative request acts on; 403 for a user's credential or another organisation."""
    if principal.reader is not None:
        raise TenantForbidden("this needs the organisation's key, not a user's credential")
    _, org_id = principal.scope(None, org_id)
    return org_id


def require_trusted(principal: Principal, holding: str) -> None:
    """403 unless a trusted key (or an open service) asks: for what holds every organisation's data (`holding`)."""
    if admin_org(principal, None) is not None:
        raise TenantForbidden(f"{holding} every organisation's data: this needs a trusted key")


async def forget_chats(services: Services, chats: list[tuple[str, ChatOwner]]) -> int:
    """Stop and delete chats and their kept answers; returns how many."""
    for chat_id, owner in chats:
        await services.answers.forget_chat(chat_id, owner)
        with contextlib.suppress(ChatNotFound):  # deleted meanwhile
            await services.conversations.delete(chat_id, owner)
    return len(chats)


@router.get("/audit", responses=_ERRORS)
async def audit_log(
    services: ServicesDep,
    principal: PrincipalDep,
    orgId: Annotated[str | None, Query(min_length=1, description="Whose entries (a trusted key: any, or all).")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[
        float | None, Query(description="Entries before this time (epoch seconds): the next page.")
    ] = None,
) -> dict[str, Any]:
    """Access changes, deletions and purges, newest first: who, what, when; never a document's content."""
    org_id = admin_org(principal, orgId)
    entries = await services.audit.entries(org_id, limit, before)
    return {"entries": [entry.as_dict() for entry in entries]}


@router.delete("/users/{userId}", responses=_ERRORS)
async def purge_user(
    userId: str,
    services: ServicesDep,
    principal: PrincipalDep,
    documents: Annotated[bool, Query(description="Also delete the documents this user added.")] = False,
    orgId: Annotated[str | None, Query(min_length=1, description="The user's organisation (a trusted key).")] = None,
) -> dict[str, Any]:
    """Delete a user's chats, kept answers, jobs and uploaded files, and with `documents=true` the documents they
    added; within the credential's organisation (a trusted key: within `orgId`, or everywhere)."""
    org_id = admin_org(principal, orgId)
    owner = ChatOwner(userId, org_id)
    chats: list[tuple[str, ChatOwner]] = []
    while page := await services.conversations.list_chats(owner, 500, len(chats)):
        chats += [(chat.chat_id, ChatOwner(userId, chat.org_id)) for chat in page]
    forgotten_chats = await forget_chats(services, chats)
    jobs = await services.jobs.forget_owner(org_id, userId)
    removed_documents = removed_chunks = 0
    if documents:
        ids = await services.store.documents_added_by(userId, org_id)
        removed_chunks = await services.store.delete_many(ids, org_id)
        removed_documents = len(ids)
    details = {"chats": forgotten_chats, "jobs": jobs, "documents": removed_documents}
    await services.audit.record("user.purge", userId, org_id, principal.kind, principal.user_id, details)
    services.purger.deleted()
    return {"userId": userId, **details, "chunks": removed_chunks}


@router.delete("/orgs/{orgId}", responses=_ERRORS)
async def purge_org(orgId: str, services: ServicesDep, principal: PrincipalDep) -> dict[str, Any]:
    """Delete everything of an organisation: its documents, chats, kept answers, jobs, uploaded files and its audit
    entries (but the record of this purge)."""
    org_id = admin_org(principal, orgId)
    assert org_id is not None
    chats = [(c.chat_id, ChatOwner(c.user_id, c.org_id)) for c in await services.conversations.chats_of_org(org_id)]
    forgotten_chats = await forget_chats(services, chats)
    jobs = await services.jobs.forget_owner(org_id, None)
    ids = await services.store.document_ids(org_id)
    removed_chunks = await services.store.delete_many(ids, org_id)
    await services.audit.forget_org(org_id)
    details = {"chats": forgotten_chats, "jobs": jobs, "documents": len(ids)}
    await services.audit.record("org.purge", org_id, org_id, principal.kind, principal.user_id, details)
    services.purger.deleted()
    return {"orgId": org_id, **details, "chunks": removed_chunks}


@router.get(
    "/export",
    responses={**_ERRORS, 200: {"content": {"application/x-tar": {}}, "description": "The archive."}},
    response_class=FileResponse,
)
async def export_documents(
    services: ServicesDep,
    principal: PrincipalDep,
    orgId: Annotated[
        str | None, Query(min_length=1, description="Whose documents (a trusted key: any; unset: every document).")
    ] = None,
) -> FileResponse:
    """The organisation's knowledge base as one archive (the format of `python -m rag.export`): every document with
    its chunks, vectors, access list and adder, read from one consistent state while writes go on. Import it with
    `python -m rag.import`."""
    org_id = admin_org(principal, orgId)
    settings = services.settings
    folder = settings.data_dir / "exports"
    folder.mkdir(parents=True, exist_ok=True)
    await anyio.to_thread.run_sync(remove_leftover_exports, folder)
    path = folder / f"{uuid.uuid4().hex}.tar"
    manifest = await export_archive(
        services.store,
        path,
        services.embedder.model_name,
        services.embedder.dimension,
        settings.chunk_size,
        settings.chunk_overlap,
        org_id,
    )
    await services.audit.record(
        "documents.export", org_id or "*", org_id, principal.kind, principal.user_id, {"documents": manifest.documents}
    )
    name = f"rag-export-{org_id or 'all'}-{time.strftime('%Y%m%d-%H%M%S')}.tar"
    return FileResponse(
        path, media_type="application/x-tar", filename=name, background=BackgroundTask(path.unlink, missing_ok=True)
    )


@router.post("/backups", responses=_ERRORS)
async def back_up(services: ServicesDep, principal: PrincipalDep) -> dict[str, Any]:
    """Back up DATA_DIR while the service runs (what `python -m rag.backup` does) to a new folder under BACKUP_DIR;
    answers when it is complete. A backup holds every organisation: it needs a trusted key (or an open service)."""
    require_trusted(principal, "a backup holds")
    settings = services.settings
    if settings.backup_dir is None:
        raise InvalidRequest("backups over HTTP are off: set BACKUP_DIR (or run python -m rag.backup DEST)")
    destination = settings.backup_dir / time.strftime("rag-%Y%m%d-%H%M%S")
    try:
        report = await anyio.to_thread.run_sync(backup, settings.data_dir, destination, settings.vector_store)
    except BackupError as exc:
        raise InvalidRequest(str(exc)) from None
    await services.audit.record(
        "data.backup", destination.name, None, principal.kind, principal.user_id, {"documents": report.documents}
    )
    body = asdict(report)
    if settings.vector_store != "numpy":
        body["note"] = "the documents, chats and audit log are in the database: back it up with its own tools"
    return body

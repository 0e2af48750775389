"""Web sources over HTTP: register a URL whose pages become documents and stay in sync, list and inspect sources
with their last sync, sync one now, remove one with its documents (rag/sources/).

A source's pages become documents of the caller's organisation, readable by the whole organisation unless the source
carries an access list: so registering, syncing and removing sources needs the organisation's own key (or a trusted
key, or an open service), and a user's token or a key acting for a user (X-On-Behalf-Of) gets 403, as for changing
a document's access list. Another organisation's source is not found (404)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from api.admin import admin_org
from api.auth import Principal, PrincipalDep
from api.deps import Services, ServicesDep
from api.schemas import AccessListBody, ErrorBody
from rag.errors import InvalidRequest, SourceNotFound
from rag.sources.guard import check_url
from rag.sources.registry import Source

router = APIRouter(prefix="/sources", tags=["documents"])
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (403, 404, 422)}
DEFAULT_MAX_PAGES = 100


class NewSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Annotated[str, Field(min_length=1, max_length=2048)] = Field(
        description="One page, a sitemap (…/sitemap.xml), or a site's page crawled within its host and path folder."
    )
    max_pages: int = Field(
        DEFAULT_MAX_PAGES, ge=1, description="Most pages (and files) taken; SOURCES_MAX_PAGES caps it."
    )
    max_depth: int = Field(2, ge=0, le=20, description="Links followed from the URL: 0 is the page alone.")
    interval_seconds: float = Field(86_400, ge=60, description="How often it is synced again.")
    access: AccessListBody | None = Field(
        None, description="Who may read its pages (unset or null: the whole organisation)."
    )


async def _visible(services: Services, principal: Principal, source_id: str) -> Source:
    source = await services.sources.get(source_id)
    if source is None or source.org_id != principal.org_id:
        raise SourceNotFound(f"source {source_id!r} not found")
    return source


async def _body(services: Services, source: Source) -> dict[str, Any]:
    return source.as_dict(await services.sources.failures(source.id))


@router.post("", status_code=202, responses=_ERRORS)
async def add_source(body: NewSource, services: ServicesDep, principal: PrincipalDep) -> dict[str, Any]:
    """Register a URL and start its first sync: 202 with the source, whose `sync` says how it goes. A URL that is
    not http(s), holds credentials, or is or resolves to an address a source may not reach is 422, by name."""
    admin_org(principal, None)  # 403 for a user's credential, as every administrative route
    cap = services.settings.sources_max_pages
    if body.max_pages > cap:
        raise InvalidRequest(f"max_pages is at most {cap} (SOURCES_MAX_PAGES)")
    _, host, port = check_url(body.url)
    await services.syncer.policy.resolve(host, port)  # refused now when the address says so already
    source = await services.sources.add(
        body.url,
        principal.org_id,
        principal.user_id,
        body.max_pages,
        body.max_depth,
        body.interval_seconds,
        None if body.access is None else body.access.parsed(),
    )
    await services.audit.record(
        "source.add", source.id, principal.org_id, principal.kind, principal.user_id, {"url": body.url}
    )
    services.syncer.wake()
    return await _body(services, source)


@router.get("", responses=_ERRORS)
async def list_sources(services: ServicesDep, principal: PrincipalDep) -> dict[str, Any]:
    """The organisation's sources, each with its current or last sync."""
    admin_org(principal, None)
    return {"sources": [s.as_dict() for s in await services.sources.of_org(principal.org_id)]}


@router.get("/{source_id}", responses=_ERRORS)
async def get_source(source_id: str, services: ServicesDep, principal: PrincipalDep) -> dict[str, Any]:
    """One source, with its sync's counts and the pages that failed in it (each with why)."""
    admin_org(principal, None)
    return await _body(services, await _visible(services, principal, source_id))


@router.post("/{source_id}/sync", status_code=202, responses=_ERRORS)
async def sync_source(source_id: str, services: ServicesDep, principal: PrincipalDep) -> dict[str, Any]:
    """Sync now (a sync under way goes on; the next starts when it ends)."""
    admin_org(principal, None)
    source = await _visible(services, principal, source_id)
    await services.sources.request_sync(source.id)
    services.syncer.wake()
    return await _body(services, await _visible(services, principal, source_id))


@router.delete("/{source_id}", responses=_ERRORS)
async def remove_source(source_id: str, services: ServicesDep, principal: PrincipalDep) -> dict[str, Any]:
    """Remove the source and every document its pages became."""
    admin_org(principal, None)
    source = await _visible(services, principal, source_id)
    document_ids = await services.sources.remove(source.id)
    if document_ids:
        await services.store.delete_many(document_ids, source.org_id)
        services.purger.deleted()
    await services.audit.record(
        "source.remove",
        source.id,
        principal.org_id,
        principal.kind,
        principal.user_id,
        {"url": source.url, "documents": len(document_ids)},
    )
    return {"id": source.id, "deleted_documents": len(document_ids)}

"""Embedding spaces over HTTP: list them with their progress, ask for a new one (another embedder), activate one,
drop one (rag/spaces/). A space holds every organisation's documents, so these routes need a trusted key (or an open
service); each request is recorded in the audit log. The space builder carries requests out in the background:
these routes answer 202 and `GET /embedding-spaces` shows the outcome."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.admin import require_trusted
from api.auth import Principal, PrincipalDep
from api.deps import Services, ServicesDep
from api.schemas import ErrorBody
from rag.spaces.registry import Space
from rag.spaces.requests import ask_for_space, ask_to_activate, ask_to_drop

router = APIRouter(prefix="/embedding-spaces", tags=["administration"])
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (403, 404, 409, 422)}


class NewSpace(BaseModel):
    embedder: dict[str, Any] = Field(
        description="Embedder settings over the service's, by their names in lower case: embedding_model, embedder, "
        "embedder_backend, embedder_options, embeddings_base_url, use_openai_embeddings, openai_embedding_model.",
        examples=[{"embedding_model": "sentence-transformers/all-MiniLM-L12-v2"}],
    )
    name: str | None = Field(None, description="The space's name (default: from its model's).")


async def _audit(services: Services, principal: Principal, action: str, space: Space) -> dict[str, Any]:
    await services.audit.record(action, space.name, None, principal.kind, principal.user_id, {"model": space.model})
    return space.as_dict()


@router.get("", responses=_ERRORS)
async def list_spaces(services: ServicesDep, principal: PrincipalDep) -> dict[str, Any]:
    """Every space with its state and progress; `serving` is the one this replica serves."""
    require_trusted(principal, "embedding spaces hold")
    spaces = await services.spaces.spaces()
    return {"serving": services.embedder.model_name, "spaces": [space.as_dict() for space in spaces]}


@router.post("", status_code=202, responses=_ERRORS)
async def add_space(body: NewSpace, services: ServicesDep, principal: PrincipalDep) -> dict[str, Any]:
    """Start embedding every document with another embedder, into a new space beside the active one."""
    require_trusted(principal, "embedding spaces hold")
    serving = (services.embedder.model_name, services.embedder.dimension)
    space = await ask_for_space(services.settings, services.spaces, serving, body.embedder, body.name)
    return await _audit(services, principal, "space.add", space)


@router.post("/{name}/activate", status_code=202, responses=_ERRORS)
async def activate_space(name: str, services: ServicesDep, principal: PrincipalDep) -> dict[str, Any]:
    """Switch to this space after the builder's next whole pass over it; the active one then follows it."""
    require_trusted(principal, "embedding spaces hold")
    return await _audit(services, principal, "space.activate", await ask_to_activate(services.spaces, name))


@router.delete("/{name}", status_code=202, responses=_ERRORS)
async def drop_space(name: str, services: ServicesDep, principal: PrincipalDep) -> dict[str, Any]:
    """Remove a space that is not active, with its store."""
    require_trusted(principal, "embedding spaces hold")
    return await _audit(services, principal, "space.drop", await ask_to_drop(services.spaces, name))

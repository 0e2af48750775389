"""`GET /api/v1/health`: liveness plus what the service runs on."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import ServicesDep

router = APIRouter(tags=["health"])


@router.get("/health")
async def health(services: ServicesDep) -> dict:
    return {
        "status": "ok",
        "embedder": {"model": services.embedder.model_name, "dimension": services.embedder.dimension},
        "store": {
            "backend": services.store.backend,
            "chunks": services.store.count,
            "documents": services.store.document_count,
        },
        "llm": {"provider": services.llm.provider, "model": services.llm.model},
    }

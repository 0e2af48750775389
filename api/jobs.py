"""Ingestion job routes: status, a progress stream over SSE, cancel, and the caller's recent jobs.

A job is visible to its owner only: the organisation (and user) of the credential that submitted it; anyone else
gets 404, as for a job that does not exist.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse, ServerSentEvent

from api.auth import Principal, PrincipalDep
from api.deps import ServicesDep
from api.schemas import ErrorBody, JobBody, JobPage
from api.sse import DONE, event_source
from rag.errors import JobNotFound
from rag.ingest.jobs import Job
from rag.ingest.runner import JobRunner

router = APIRouter(prefix="/jobs", tags=["jobs"])

POLL_SECONDS = 0.5  # how often a stream looks at a job that runs in another process


def job_accepted(job: Job) -> JSONResponse:
    return JSONResponse(job.as_dict(), status_code=202, headers={"Location": f"/api/v1/jobs/{job.id}"})


async def owned_job(runner: JobRunner, job_id: str, principal: Principal) -> Job:
    job = await runner.get(job_id)
    if job is None or not job.visible_to(principal.org_id, principal.user_id):
        raise JobNotFound(f"no job {job_id!r}")
    return job


@router.get("", response_model=JobPage)
async def list_jobs(
    services: ServicesDep, principal: PrincipalDep, limit: Annotated[int, Query(ge=1, le=200)] = 20
) -> JobPage:
    """The caller's most recent jobs, newest first."""
    jobs = await services.jobs.recent(principal.org_id, principal.user_id, limit)
    return JobPage.model_validate({"jobs": [job.as_dict() for job in jobs]})


@router.get("/{job_id}", response_model=JobBody, responses={404: {"model": ErrorBody}})
async def get_job(job_id: str, services: ServicesDep, principal: PrincipalDep) -> JobBody:
    """State, files, chunks done and total, and errors by file."""
    return JobBody.model_validate((await owned_job(services.jobs, job_id, principal)).as_dict())


@router.get(
    "/{job_id}/events",
    responses={200: {"content": {"text/event-stream": {}}}, 404: {"model": ErrorBody}},
)
async def job_events(job_id: str, services: ServicesDep, principal: PrincipalDep) -> EventSourceResponse:
    """Progress over SSE: `data: <the job as GET returns it>` at once and at every change, then `data: [DONE]`
    once the job has finished."""
    await owned_job(services.jobs, job_id, principal)
    runner = services.jobs

    async def events() -> AsyncIterator[ServerSentEvent]:
        seen = -1
        while True:
            job = await runner.get(job_id)
            if job is None:  # forgotten meanwhile
                break
            if job.version != seen:
                seen = job.version
                yield ServerSentEvent(data=json.dumps(job.as_dict(), ensure_ascii=False), event="progress")
            if job.finished:
                break
            await runner.wait_for_change(POLL_SECONDS)
        yield ServerSentEvent(data=DONE)

    # On shutdown the stream just ends: the job itself goes on after the restart, and the client reconnects.
    return event_source(events(), services.streams, farewell=[])


@router.delete("/{job_id}", response_model=JobBody, responses={404: {"model": ErrorBody}})
async def cancel_job(job_id: str, services: ServicesDep, principal: PrincipalDep) -> JobBody:
    """Stop a job. Files already stored stay stored; a finished job is returned as it is."""
    await owned_job(services.jobs, job_id, principal)
    job = await services.jobs.cancel(job_id)
    if job is None:
        raise JobNotFound(f"no job {job_id!r}")
    return JobBody.model_validate(job.as_dict())

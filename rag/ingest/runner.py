"""The background side of ingestion: accept a job (its bytes on disk first), then parse, chunk, embed and store its
items one by one, reporting progress to the job store after every embedded batch.

One runner per process works one job at a time. It claims jobs through the store's lease, so several processes on
one DATA_DIR share the queue, and a job whose process died is resumed by whichever runner claims it next. Embedding
goes through the embedder's ingestion lanes in batches of `batch_chunks`, so questions, which have a lane of their
own, never queue behind a job. On shutdown the running job is handed back to the queue, not failed: the next start
picks it up where its last committed item left it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import anyio

from llm.tracing import tracer
from rag.access import AccessList, Reader
from rag.durable import fsync_path
from rag.errors import RAGError
from rag.ingest.indexer import Indexer, owned_metadata
from rag.ingest.jobs import FINISHED, Job, JobItem, JobStore, NewItem
from rag.ingest.parser_pool import ParserPool
from rag.ingest.parsers import MEDIA_TYPES, Section, detect_kind
from rag.stores.base import AccessByDocument
from rag.types import Chunk, Metadata

logger = logging.getLogger(__name__)

_COPY_BLOCK = 1 << 20


@dataclass(frozen=True, slots=True)
class Upload:
    """A file as received: its name, declared media type and a readable binary stream of its bytes."""

    name: str
    media_type: str | None
    source: BinaryIO


class _JobLost(Exception):
    """The job was cancelled, or another runner took it over: stop working on it."""


def upload_document_id(sha256: str, org_id: str | None) -> str:
    """The same file uploaded twice gets the same id, so the second upload replaces the first. Within one
    organisation only: the same file from two organisations is two documents."""
    if org_id is None:
        return f"sha256-{sha256[:32]}"
    return "sha256-" + hashlib.sha256(f"{org_id}\0{sha256}".encode()).hexdigest()[:32]


class JobRunner:
    def __init__(
        self,
        jobs: JobStore,
        indexer: Indexer,
        parsers: ParserPool,
        *,
        batch_chunks: int = 128,
        lease_seconds: float = 60.0,
        poll_seconds: float = 1.0,
        retention_seconds: float = 7 * 86400,
        items_at_once: int | None = None,
        max_interruptions: int = 3,
    ) -> None:
        """`items_at_once`: the items (files or documents) of a job ingested side by side, one per core by default.
        `max_interruptions`: how many times the service may stop while an item is in progress before that item is
        failed as a poison file (see `JobStore.claim`)."""
        self.jobs = jobs
        self.indexer = indexer
        self.parsers = parsers
        self.max_interruptions = max_interruptions
        self.batch_chunks = batch_chunks
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.retention_seconds = retention_seconds
        self.items_at_once = items_at_once or os.cpu_count() or 1
        self.owner = uuid.uuid4().hex
        self._wakeup = asyncio.Event()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        await anyio.to_thread.run_sync(self._sweep, time.time() - self.retention_seconds)
        self._task = asyncio.create_task(self._loop(), name="ingestion-jobs")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.parsers.aclose()
        await anyio.to_thread.run_sync(self.jobs.close)

    # --- submission --------------------------------------------------------------------------------

    async def submit_uploads(
        self,
        uploads: Sequence[Upload],
        metadata: Metadata | None,
        ids: list[str] | None,
        org_id: str | None,
        user_id: str | None,
        access: AccessList | Literal["keep"] | None = "keep",
        reader: Reader | None = None,
    ) -> Job:
        """Write the files under the job's folder (fsynced), then record the job: once this returns, the job
        survives a crash. A file of an unknown type refuses the whole upload before anything is written. `access`
        is every file's access list ("keep": none given, a replaced document keeps its own)."""
        kinds = [detect_kind(upload.name, upload.media_type) for upload in uploads]
        base = owned_metadata(metadata, org_id, "metadata")
        async with self._new_job() as job_id:
            items: list[NewItem] = []
            for n, (upload, kind) in enumerate(zip(uploads, kinds, strict=True)):
                size, digest = await self._save_payload(job_id, n, upload.source)
                file_metadata = {
                    **base,
                    "filename": upload.name,
                    "content_type": MEDIA_TYPES[kind],
                    "size_bytes": size,
                    "sha256": digest,
                }
                document_id = ids[n] if ids else upload_document_id(digest, org_id)
                listed: AccessByDocument = {} if access == "keep" else {document_id: access}
                items.append(
                    NewItem(upload.name, kind, MEDIA_TYPES[kind], size, digest, document_id, file_metadata, listed)
                )
            return await self._record(job_id, items, org_id, user_id, reader)

    async def submit_documents(
        self,
        texts: list[str],
        prepared: list[tuple[str, Metadata]],
        org_id: str | None,
        user_id: str | None,
        access: list[AccessList | None] | None = None,
        reader: Reader | None = None,
    ) -> Job:
        """A large JSON add as a job: each document (with its id and metadata from `prepare_documents`) is an item
        whose text waits on disk like a file's bytes."""
        async with self._new_job() as job_id:
            items: list[NewItem] = []
            for n, (text, (doc_id, metadata)) in enumerate(zip(texts, prepared, strict=True)):
                size, digest = await self._save_payload(job_id, n, io.BytesIO(text.encode()))
                listed: AccessByDocument = {} if access is None else {doc_id: access[n]}
                items.append(NewItem(f"document {n}", "text", "text/plain", size, digest, doc_id, metadata, listed))
            return await self._record(job_id, items, org_id, user_id, reader)

    @contextlib.asynccontextmanager
    async def _new_job(self) -> AsyncIterator[str]:
        """A new job's id; if the submission fails before the job is recorded, the bytes written for it go."""
        job_id = uuid.uuid4().hex
        try:
            yield job_id
        except BaseException:
            await anyio.to_thread.run_sync(self._remove_payloads, job_id)
            raise

    async def _save_payload(self, job_id: str, n: int, source: BinaryIO) -> tuple[int, str]:
        return await anyio.to_thread.run_sync(_save, source, self.jobs.payload_path(job_id, n))

    async def _record(
        self, job_id: str, items: list[NewItem], org_id: str | None, user_id: str | None, reader: Reader | None
    ) -> Job:
        await anyio.to_thread.run_sync(_fsync_folder_and_parent, self.jobs.uploads_dir / job_id)
        job = await anyio.to_thread.run_sync(self.jobs.create, job_id, items, org_id, user_id, reader)
        self._wakeup.set()
        return job

    # --- reading and control ----------------------------------------------------------------------

    async def get(self, job_id: str) -> Job | None:
        return await anyio.to_thread.run_sync(self.jobs.get, job_id)

    async def recent(self, org_id: str | None, user_id: str | None, limit: int) -> list[Job]:
        return await anyio.to_thread.run_sync(self.jobs.recent, org_id, user_id, limit)

    async def cancel(self, job_id: str) -> Job | None:
        before = await anyio.to_thread.run_sync(self.jobs.get, job_id)
        job = await anyio.to_thread.run_sync(self.jobs.cancel, job_id)
        if before is not None and before.state == "queued":
            # No runner holds it, and none will: its bytes go now (a running job's runner removes them itself).
            await anyio.to_thread.run_sync(self._remove_payloads, job_id)
        self._notify()
        return job

    async def forget_owner(self, org_id: str | None, user_id: str | None) -> int:
        """Cancel and remove every job of an organisation (or of one user), their items and uploaded files: a
        purge. A job running meanwhile finds itself gone and stops. Returns how many jobs."""
        forgotten = 0
        while jobs := await anyio.to_thread.run_sync(self.jobs.recent, org_id, user_id, 500):
            ids = [job.id for job in jobs]
            for job in jobs:
                if not job.finished:
                    await anyio.to_thread.run_sync(self.jobs.cancel, job.id)
            await anyio.to_thread.run_sync(self.jobs.forget, ids)
            for job_id in ids:
                await anyio.to_thread.run_sync(self._remove_payloads, job_id)
            forgotten += len(ids)
        self._notify()
        return forgotten

    def _remove_payloads(self, job_id: str) -> None:
        shutil.rmtree(self.jobs.uploads_dir / job_id, ignore_errors=True)

    async def wait_for_change(self, seconds: float) -> None:
        """Return at the next progress step of a job in this process, or after `seconds` (a job running in
        another process is seen by polling)."""
        changed = self._changed
        with anyio.move_on_after(seconds):
            await changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # --- the work ---------------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            try:
                job = await anyio.to_thread.run_sync(
                    self.jobs.claim, self.owner, self.lease_seconds, self.max_interruptions
                )
            except Exception:
                logger.exception("cannot read the job queue")
                job = None
            if job is None:
                self._wakeup.clear()
                with anyio.move_on_after(self.poll_seconds):
                    await self._wakeup.wait()
                continue
            try:
                await self._run(job)
            except Exception:
                # The queue must outlive one bad job: its lease lapses, and it is tried again later.
                logger.exception("job %s: the runner failed", job.id)

    async def _run(self, job: Job) -> None:
        logger.info("job %s: started (attempt %d, %d items)", job.id, job.attempts, len(job.items))
        self._notify()
        try:
            # A trace per run of a job, a span per item under it (parse, chunk, embed, store).
            with tracer.start_as_current_span(
                "ingest.job", attributes={"rag.job": job.id, "rag.items": len(job.items)}
            ):
                await self._run_items(job, [item for item in job.items if item.state not in FINISHED])
            finished = await anyio.to_thread.run_sync(self.jobs.finish, job.id, self.owner)
            logger.info("job %s: %s", job.id, finished.state if finished else "gone")
        except _JobLost:
            logger.info("job %s: cancelled or taken over", job.id)
        except asyncio.CancelledError:
            # Shutting down: hand the job back so the next start resumes it (a plain call: this task is cancelled).
            self.jobs.release(job.id, self.owner)
            raise
        finally:
            self._notify()
        current = await anyio.to_thread.run_sync(self.jobs.get, job.id)
        if current is None or current.finished:
            await anyio.to_thread.run_sync(self._remove_payloads, job.id)

    async def _run_items(self, job: Job, items: list[JobItem]) -> None:
        """The items in order, `items_at_once` at a time. Each is embedded in one-thread passes, so a job of many
        small documents taken one at a time left every core but one idle: 250 SciFact abstracts (a document each)
        took 15.2 s one at a time, 7.9 s two at a time on two cores."""
        remaining = iter(items)  # shared by the workers: each takes the next item when it is free
        lost = False

        async def worker() -> None:
            nonlocal lost
            for item in remaining:
                if lost:
                    return
                try:
                    await self._run_item(job, item)
                except _JobLost:
                    # The others are not cancelled: each stops at its own next progress step, as one item alone
                    # would, so a document committed a moment before the job was cancelled is still marked done.
                    lost = True
                    return

        async with anyio.create_task_group() as group:
            for _ in range(min(self.items_at_once, len(items))):
                group.start_soon(worker)
        if lost:
            raise _JobLost

    async def _run_item(self, job: Job, item: JobItem) -> None:
        async def progress(**changes: str | int | None) -> None:
            held = await anyio.to_thread.run_sync(
                lambda: self.jobs.update_item(job.id, item.n, self.owner, self.lease_seconds, **changes)
            )
            self._notify()
            if not held:
                raise _JobLost

        await progress(state="parsing", chunks_done=0, chunks_total=None, error=None)
        try:
            with tracer.start_as_current_span("ingest.item", attributes={"rag.item": item.n, "rag.kind": item.kind}):
                chunks = await self._index_item(job, item, progress)
        except _JobLost:
            raise
        except RAGError as exc:
            logger.info("job %s: %s failed: %s", job.id, item.name, exc)
            await progress(state="failed", error=str(exc))
            return
        except Exception:
            logger.exception("job %s: %s failed", job.id, item.name)
            await progress(state="failed", error="internal error while ingesting this file (see the service log)")
            return
        # The document is committed: it is done, even if the job was cancelled a moment ago.
        await anyio.to_thread.run_sync(
            lambda: self.jobs.mark_item(job.id, item.n, state="done", chunks_done=len(chunks))
        )
        self._notify()

    async def _index_item(self, job: Job, item: JobItem, progress: Callable[..., Awaitable[None]]) -> list[Chunk]:
        with tracer.start_as_current_span("parse"):
            sections = await self._parse(item, self.jobs.payload_path(job.id, item.n), progress)
        # parse refuses a file without text, so every file that gets here has chunks.
        with tracer.start_as_current_span("chunk") as span:
            chunks = await anyio.to_thread.run_sync(
                self.indexer.chunk_document, item.document_id, sections, item.metadata
            )
            span.set_attribute("rag.chunks", len(chunks))
        await progress(state="embedding", chunks_total=len(chunks))
        await self.indexer.store_chunks(
            chunks,
            job.org_id,
            self.batch_chunks,
            lambda done: progress(chunks_done=done),
            access=item.access,
            reader=job.reader,
            added_by=job.user_id,
        )
        return chunks

    async def _parse(self, item: JobItem, path: Path, progress: Callable[..., Awaitable[None]]) -> list[Section]:
        """The item's text, from a parser process. A parse may take up to PARSE_TIMEOUT_SECONDS, longer than the
        job's lease: the lease is renewed meanwhile, so that no other runner takes over a healthy job."""

        async def renew() -> None:
            while True:
                await asyncio.sleep(self.lease_seconds / 3)
                await progress()

        renewal = asyncio.create_task(renew())
        try:
            sections = await self.parsers.parse(path, item.kind)
        finally:
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewal
        return sections

    def _sweep(self, cutoff: float) -> None:
        """Forget jobs finished before `cutoff`, and remove leftover bytes of finished jobs (and of submissions
        that never became a job, once they are an hour old)."""
        old = self.jobs.finished_before(cutoff)
        for job_id in old:  # before the rows go: without its row, a folder would look like a fresh submission's
            self._remove_payloads(job_id)
        self.jobs.forget(old)
        if not self.jobs.uploads_dir.is_dir():
            return
        for folder in self.jobs.uploads_dir.iterdir():
            job = self.jobs.get(folder.name)
            stale = job is None and folder.stat().st_mtime < time.time() - 3600
            if stale or (job is not None and job.finished):
                self._remove_payloads(folder.name)


def _save(source: BinaryIO, path: Path) -> tuple[int, str]:
    """Copy a stream to `path`, fsynced; its size and SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    source.seek(0)
    with open(path, "wb") as out:
        while block := source.read(_COPY_BLOCK):
            digest.update(block)
            size += len(block)
            out.write(block)
        out.flush()
        os.fsync(out.fileno())
    return size, digest.hexdigest()


def _fsync_folder_and_parent(path: Path) -> None:
    fsync_path(path)
    fsync_path(path.parent)

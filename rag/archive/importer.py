"""Loading an archive into the configured store (`python -m rag.import`).

The archive is checked whole first (`reader.open_archive`): a bad one is refused before anything is stored. Then
its documents are stored in batches through the store's ordinary add, each batch one atomic write, with their
access lists and adders. Importing is idempotent: a document the store already holds with the same digest (id,
access list, adder, chunks and vectors) is left alone, so importing twice changes nothing, and an import killed
midway is finished by running it again.

Vectors travel: an archive of the same embedding model is stored as it is, nothing embedded. An archive of another
model (or dimension) is refused unless re-embedding is asked for; then its chunks are embedded again with the
service's embedder (the chunks stay as they were cut). Into PostgreSQL, a large import (at least as many chunks as
the store already holds) goes through the bulk path: the search indexes are dropped and built once at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import anyio
import numpy as np

from rag.archive.format import document_digest
from rag.archive.reader import Archive, BadArchive, open_archive
from rag.stores.base import AccessByDocument, ExportableStore, StoredDocument, VectorStore
from rag.types import Embedder


@dataclass
class ImportReport:
    documents: int = 0  # stored (new or changed)
    unchanged: int = 0  # already held, identical: left alone
    chunks: int = 0  # stored
    deleted: int = 0  # with `prune`: documents the store held and the archive does not
    reembedded: bool = False
    seconds: float = 0.0
    check_seconds: float = 0.0  # of `seconds`, checking the archive whole before anything was stored


def adds(batch: list[StoredDocument], most: int | None) -> Iterator[list[StoredDocument]]:
    """The batch cut into adds: where the adder changes (one add records one adder), and every `most` documents."""
    run: list[StoredDocument] = []
    for document in batch:
        if run and (run[-1].added_by != document.added_by or len(run) == most):
            yield run
            run = []
        run.append(document)
    if run:
        yield run


async def _unchanged(store: VectorStore, batch: list[tuple[StoredDocument, str]], with_vectors: bool) -> set[str]:
    """Ids of the batch's documents the store already holds exactly so (vectors aside, when re-embedding: the
    store's are then the new model's)."""
    if not isinstance(store, ExportableStore):
        return set()
    wanted = {
        document.id: digest if with_vectors else document_digest(document, with_vectors=False)
        for document, digest in batch
    }
    same: set[str] = set()
    async for held in store.export_documents(document_ids=list(wanted)):
        same |= {document.id for document in held if wanted[document.id] == document_digest(document, with_vectors)}
    return same


async def store_run(
    store: VectorStore,
    run: list[StoredDocument],
    embedder: Embedder,
    same_model: bool,
    org_id: str | None,
    report: ImportReport,
) -> None:
    """One add: documents of one adder, with their archived vectors or, re-embedding, new ones."""
    chunks = [chunk for document in run for chunk in document.chunks]
    if same_model:
        vectors = np.concatenate([document.vectors for document in run])
    else:
        vectors = await embedder.embed_documents([chunk.text for chunk in chunks])
    access: AccessByDocument = {document.id: document.access for document in run}
    await store.upsert(chunks, vectors, org_id=org_id, access=access, added_by=run[0].added_by)
    report.documents += len(run)
    report.chunks += len(chunks)


async def import_archive(
    path: Path,
    store: VectorStore,
    embedder: Embedder,
    reembed: bool = False,
    org_id: str | None = None,
    bulk_mode: AbstractAsyncContextManager[None] | None = None,
    batch_chunks: int = 4096,
    writers: int = 1,
    documents_per_add: int | None = None,
    prune: bool = False,
    progress: Callable[[ImportReport], None] | None = None,
) -> ImportReport:
    """Store the archive's documents (all of organisation `org_id`, when given, or it is refused).

    `writers` adds run at a time: PostgreSQL takes several at once (rows of different documents), the embedded store
    one after another (and then keeps the archive's order). An add holds at most `documents_per_add` documents:
    PostgreSQL locks each document of an add, and thousands of small ones in each of several adds would exhaust its
    lock table. With `prune`, once every document is stored, those the store holds (of `org_id`, or all) and the
    archive does not are deleted: the store then holds exactly the archive. `progress` is called after each add."""
    started = time.perf_counter()
    archive: Archive = await anyio.to_thread.run_sync(open_archive, path, org_id)
    report_check = time.perf_counter() - started
    manifest = archive.manifest
    same_model = (manifest.embedding_model, manifest.dimension) == (embedder.model_name, embedder.dimension)
    if not same_model and not reembed:
        raise BadArchive(
            f"the archive was embedded with {manifest.embedding_model!r} (dimension {manifest.dimension}) and this "
            f"service embeds with {embedder.model_name!r} (dimension {embedder.dimension}): ask for re-embedding "
            "(--reembed) to embed its chunks again, or import it into a service with that model"
        )
    report = ImportReport(reembedded=not same_model, check_seconds=report_check)
    if bulk_mode is None or manifest.chunks < store.count:
        bulk_mode = nullcontext()
    batches = archive.entries(batch_chunks, org_id)
    done: list[tuple[StoredDocument, str]] = []

    def read_next() -> asyncio.Future[list[tuple[StoredDocument, str]]]:
        # the next batch is read and parsed in a thread while this one is stored
        return asyncio.ensure_future(anyio.to_thread.run_sync(next, batches, done))

    archived: set[str] = set()
    failures: list[Exception] = []
    # Into a store that held nothing when the import began there is nothing to compare with (a document added
    # meanwhile under an archived id is replaced, as a second import would)
    compare = store.count > 0

    async def store_batch(batch: list[tuple[StoredDocument, str]]) -> None:
        try:
            unchanged = await _unchanged(store, batch, with_vectors=same_model) if compare else set()
            report.unchanged += len(unchanged)
            changed = [document for document, _ in batch if document.id not in unchanged]
            for run in adds(changed, documents_per_add):
                await store_run(store, run, embedder, same_model, org_id, report)
                if progress is not None:
                    progress(report)
        except Exception as exc:
            failures.append(exc)
        finally:
            slots.release()

    slots = asyncio.Semaphore(writers)
    running: set[asyncio.Task[None]] = set()
    async with bulk_mode:
        pending = read_next()
        try:
            while batch := await pending:
                pending = read_next()
                archived.update(document.id for document, _ in batch)
                await slots.acquire()
                if failures:
                    break
                task = asyncio.create_task(store_batch(batch))
                running.add(task)
                task.add_done_callback(running.discard)
        finally:
            # Adds in flight end as they would (never cut off inside a transaction), then the read in flight.
            await asyncio.gather(*running, return_exceptions=True)
            with contextlib.suppress(Exception):
                await pending
            batches.close()
    if failures:
        raise failures[0]
    if prune:
        extra = [doc for doc in await store.document_ids(org_id) if doc not in archived]
        if extra:
            await store.delete_many(extra, org_id)
        report.deleted = len(extra)
    report.seconds = time.perf_counter() - started
    return report

"""One pass of a follower space over the active one: what the active store holds now, against what the ledger says
the follower holds, and the difference copied, re-embedded with the follower's model.

A document is told apart by its seq in the active store (every add moves it) and its access list; the ledger keeps,
per follower, the pair each document had when it was copied. A pass deletes what the active store no longer holds,
sets changed access lists, and embeds the documents that are new or were added again, batch by batch, noting each
batch in the ledger once the follower holds it. So a pass stopped anywhere (a crash, a shutdown) loses nothing: the
next one finds what is left. A document the follower holds but the ledger lacks (a crash between the two writes) is
copied again, which an upsert makes harmless.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from rag.archive.importer import ImportReport, adds, store_run
from rag.spaces.registry import DocumentState, SpaceRegistry
from rag.stores import VectorStore
from rag.stores.base import SpaceStore
from rag.types import Embedder

# Documents per add into the follower: PostgreSQL locks each document of an add (see rag/archive/importer.py).
DOCUMENTS_PER_ADD = 256


@dataclass
class Progress:
    total: int = 0  # documents in the active store
    done: int = 0  # of those, how many the follower holds as they are there
    embedded: int = 0  # chunks embedded by this pass
    changed: int = 0  # documents this pass copied, deleted or gave a new access list


async def follow(
    source: SpaceStore,
    target: VectorStore,
    embedder: Embedder,
    registry: SpaceRegistry,
    name: str,
    batch_chunks: int = 512,
    on_batch: Callable[[Progress], Awaitable[None]] | None = None,
) -> Progress:
    """Bring follower `name` (`target`, embedding with `embedder`) up to the active store `source`."""
    states: dict[str, DocumentState] = await source.document_states()
    ledger = await registry.ledger(name)
    progress = Progress(total=len(states))
    gone = [doc for doc in ledger if doc not in states]
    if gone:
        await target.delete_many(gone)
        await registry.record(name, {}, gone)
    stale = [doc for doc, state in states.items() if ledger.get(doc, (None,))[0] != state[0]]
    relisted = [doc for doc, state in states.items() if doc in ledger and ledger[doc] != state and doc not in stale]
    progress.done = len(states) - len(stale) - len(relisted)
    progress.changed = len(gone)
    for doc in relisted:
        summary = await source.get_document(doc)
        await target.set_access(doc, summary.access)
        await registry.record(name, {doc: states[doc]})
        progress.done += 1
        progress.changed += 1
    report = ImportReport()
    async for batch in source.export_documents(document_ids=stale, batch_chunks=batch_chunks):
        before = report.chunks
        for run in adds(batch, DOCUMENTS_PER_ADD):
            await store_run(target, run, embedder, False, None, report)
        await registry.record(name, {document.id: states[document.id] for document in batch})
        progress.done += len(batch)
        progress.changed += len(batch)
        progress.embedded += report.chunks - before
        if on_batch is not None:
            await on_batch(progress)
    return progress

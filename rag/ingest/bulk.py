"""Load a large corpus in one run: `python -m rag.ingest.bulk documents.jsonl` (`-` reads standard input).

Each line is one document, `{"text": "...", "id": "...", "metadata": {...}, "access": {"users": [...], "groups":
[...]}}`; all but `text` may be left out, but with ids a second run replaces what the first stored instead of
storing it twice. Without `access` a new document is readable by its whole organisation and a replaced one keeps its
list; `"access": null` opens it to the organisation. Documents are chunked and
embedded as the API's adds are, with the service's settings (`.env`), and stored in batches.

On PostgreSQL the whole run is one bulk load (`PostgresVectorStore.bulk_load`): the search indexes are dropped,
the batches are stored, and the indexes are built once at the end, several times faster than growing an HNSW graph
one insert at a time (`docs/deployment.md`, "Loading a large corpus"). Replicas keep serving meanwhile, with exact
and slower dense searches. The embedded store needs no such mode: its adds already cost about what writing the
vectors does.

A line that is not a document stops the run with its number, exit status 2; the documents before it stay stored
(and on PostgreSQL the indexes are still built).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from typing import IO, Any

from config import Settings, settings_or_exit
from rag.access import AccessList
from rag.commands import embedder_and_store
from rag.errors import InvalidRequest, RAGError
from rag.ingest.indexer import Indexer
from rag.stores import VectorStore
from rag.stores.base import AccessByDocument

PROGRESS_SECONDS = 10.0
# (line number, text, id, metadata, access: (given, list))
Line = tuple[int, str, str | None, dict[str, Any] | None, tuple[bool, AccessList | None]]


class BadLine(InvalidRequest):
    """A line of the input that is not a document; every document before `line` is stored."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


def documents(lines: IO[str]) -> Iterator[Line]:
    """(line number, text, id, metadata) of each non-blank line; BadLine names the first that is not a document."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            document = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BadLine(f"line {number}: not JSON ({exc.msg})", number) from None
        if not isinstance(document, dict) or not isinstance(document.get("text"), str):
            raise BadLine(f'line {number}: expected an object with a string "text"', number)
        doc_id, metadata = document.get("id"), document.get("metadata")
        if doc_id is not None and not isinstance(doc_id, str):
            raise BadLine(f'line {number}: "id" must be a string', number)
        if metadata is not None and not isinstance(metadata, dict):
            raise BadLine(f'line {number}: "metadata" must be an object', number)
        try:
            access = AccessList.parse(document.get("access"), f'line {number}: "access"')
        except InvalidRequest as exc:
            raise BadLine(str(exc), number) from None
        yield number, document["text"], doc_id, metadata, ("access" in document, access)


def bulk_mode(store: VectorStore, settings: Settings) -> AbstractAsyncContextManager[None]:
    """The store's bulk load where it has one (PostgreSQL), else nothing to switch."""
    bulk_load = getattr(store, "bulk_load", None)
    if bulk_load is None:
        return contextlib.nullcontext()
    mode: AbstractAsyncContextManager[None] = bulk_load(index_memory=settings.pg_bulk_index_memory)
    return mode


def batches(source: Iterator[Line], size: int) -> Iterator[list[Line]]:
    """The documents in lists of `size`. A bad line ends them: the documents read before it come out as a last,
    shorter batch, so that they are stored, and then its BadLine is raised."""
    batch: list[Line] = []
    try:
        for document in source:
            batch.append(document)
            if len(batch) == size:
                yield batch
                batch = []
    except BadLine:
        if batch:
            yield batch
        raise
    if batch:
        yield batch


async def load(lines: IO[str], settings: Settings, batch_size: int) -> tuple[int, int]:
    """Store every document of `lines`; returns (documents, chunks)."""
    stored = chunks = 0
    started = reported = time.monotonic()
    async with embedder_and_store(settings) as (embedder, store), bulk_mode(store, settings):
        indexer = Indexer(embedder, store, settings.chunk_size, settings.chunk_overlap)
        for batch in batches(documents(lines), batch_size):
            first, last = batch[0][0], batch[-1][0]
            ids = [doc_id or uuid.uuid4().hex for _, _, doc_id, _, _ in batch]
            access: AccessByDocument = {
                doc_id: listed for doc_id, (*_, (given, listed)) in zip(ids, batch, strict=True) if given
            }
            try:
                added = await indexer.add(
                    [text for _, text, _, _, _ in batch],
                    [metadata or {} for _, _, _, metadata, _ in batch],
                    ids,
                    access=access,
                )
            except InvalidRequest as exc:
                raise BadLine(f"lines {first}-{last}: {exc}", first) from None
            stored += len(added)
            chunks += sum(document.chunks for document in added)
            if time.monotonic() - reported >= PROGRESS_SECONDS:
                reported = time.monotonic()
                rate = chunks / (reported - started)
                print(f"{stored:,} documents, {chunks:,} chunks ({rate:,.0f} chunks/s)", file=sys.stderr)
        if hasattr(store, "bulk_load"):  # its indexes are built as the block ends
            print(f"{stored:,} documents stored; building the search indexes", file=sys.stderr)
    return stored, chunks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="a JSON Lines file of documents, or - for standard input")
    parser.add_argument("--batch", type=int, default=256, help="documents per add (default 256)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        with contextlib.ExitStack() as stack:
            lines = sys.stdin if args.path == "-" else stack.enter_context(open(args.path, encoding="utf-8"))
            stored, chunks = asyncio.run(load(lines, settings_or_exit(), max(1, args.batch)))
    except (OSError, UnicodeDecodeError) as exc:
        print(f"error: cannot read {args.path}: {exc}", file=sys.stderr)
        return 2
    except BadLine as exc:
        print(f"error: {exc}; the documents before line {exc.line} are stored", file=sys.stderr)
        return 2
    except RAGError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    elapsed = time.monotonic() - started
    print(f"loaded {stored:,} documents ({chunks:,} chunks) in {elapsed:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

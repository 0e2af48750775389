"""Import an archive written by `python -m rag.export`: `python -m rag.import FILE [--org ORG] [--reembed] [--prune]`.

With the service's settings (`.env`), into the configured store, while the service keeps serving. The archive is
checked whole before anything is stored; a bad one (cut short, altered, another format version, another embedding
model without --reembed) is refused with what is wrong, exit status 2. Importing is idempotent: run it again after
an interruption and it finishes, leaving what is already there alone. It runs at a lower CPU priority than the
service (nice 10), so that a service on the same machine keeps answering at its pace. See
`rag/archive/importer.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

from config import Settings, settings_or_exit
from rag.archive.importer import ImportReport, import_archive
from rag.archive.reader import BadArchive
from rag.commands import embedder_and_store
from rag.errors import RAGError
from rag.ingest.bulk import bulk_mode

# Into PostgreSQL: adds in flight as the bulk load runs them (bench/backup.py measures both), each of at most as many
# documents as an API add takes by default (a lock a document). The embedded store takes one large add at a time.
POSTGRES_WRITERS, POSTGRES_DOCUMENTS_PER_ADD = 4, 256
PROGRESS_SECONDS = 10.0
NICENESS = 10  # below the service's CPU priority: re-embedding beside a serving store leaves questions their pace


class Progress:
    """A line on standard error every PROGRESS_SECONDS: what is stored so far, and at what rate."""

    def __init__(self) -> None:
        self.started = self.reported = time.monotonic()

    def __call__(self, report: ImportReport) -> None:
        now = time.monotonic()
        if now - self.reported >= PROGRESS_SECONDS:
            self.reported = now
            print(
                f"{report.documents:,} documents stored ({report.chunks:,} chunks, "
                f"{report.chunks / (now - self.started):,.0f} chunks/s), {report.unchanged:,} unchanged",
                file=sys.stderr,
            )


async def run(settings: Settings, path: Path, org_id: str | None, reembed: bool, prune: bool) -> ImportReport:
    async with embedder_and_store(settings) as (embedder, store):
        return await import_archive(
            path,
            store,
            embedder,
            reembed=reembed,
            org_id=org_id,
            bulk_mode=bulk_mode(store, settings),
            writers=POSTGRES_WRITERS if store.backend == "postgres" else 1,
            documents_per_add=POSTGRES_DOCUMENTS_PER_ADD if store.backend == "postgres" else None,
            prune=prune,
            progress=Progress(),
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path, help="an archive written by python -m rag.export")
    parser.add_argument("--org", default=None, help="refuse the archive unless every document is this organisation's")
    parser.add_argument(
        "--reembed", action="store_true", help="embed the chunks again when the archive is of another embedding model"
    )
    parser.add_argument(
        "--prune",
        action="store_true",
        help="then delete the documents the store holds (of --org, or all) that the archive does not: the store ends "
        "holding exactly the archive",
    )
    args = parser.parse_args(argv)
    os.nice(NICENESS)
    try:
        report = asyncio.run(run(settings_or_exit(), args.path, args.org, args.reembed, args.prune))
    except BadArchive as exc:
        print(f"error: {args.path} refused, nothing stored: {exc}", file=sys.stderr)
        return 2
    except (RAGError, OSError) as exc:
        print(f"error: import failed: {exc}", file=sys.stderr)
        return 1
    print(
        f"imported {report.documents:,} documents ({report.chunks:,} chunks) from {args.path} in "
        f"{report.seconds:.1f} s; {report.unchanged:,} already held unchanged"
        + ("; chunks re-embedded" if report.reembedded else "")
        + (f"; {report.deleted:,} documents not in it deleted" if args.prune else ""),
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Export a knowledge base to one portable file: `python -m rag.export FILE [--org ORG]`.

With the service's settings (`.env`), every document of the configured store (or of one organisation) goes to FILE
with its chunks, vectors, access list and adder, while the service keeps serving: the store is read from one
consistent state. `python -m rag.import FILE` loads it into any store, of either backend. The format is described in
`rag/archive/format.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from config import Settings, settings_or_exit
from rag.archive.exporter import export_archive
from rag.archive.format import Manifest
from rag.commands import embedder_and_store
from rag.errors import RAGError


async def run(settings: Settings, path: Path, org_id: str | None) -> Manifest:
    # The embedder only names the model and dimension: the store is checked against them, the manifest says them.
    async with embedder_and_store(settings) as (embedder, store):
        return await export_archive(
            store, path, embedder.model_name, embedder.dimension, settings.chunk_size, settings.chunk_overlap, org_id
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path, help="the archive to write (replaced if it exists)")
    parser.add_argument("--org", default=None, help="export only this organisation's documents")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        manifest = asyncio.run(run(settings_or_exit(), args.path, args.org))
    except (RAGError, OSError) as exc:
        print(f"error: export failed: {exc}", file=sys.stderr)
        return 1
    elapsed = time.monotonic() - started
    print(
        f"exported {manifest.documents:,} documents ({manifest.chunks:,} chunks) to {args.path} in {elapsed:.1f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

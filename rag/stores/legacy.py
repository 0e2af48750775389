"""Migration of a store written before segments (format 1: `manifest.json` naming one whole-store generation).

At the first start of this version on such a directory, the current generation becomes the first segment and its
chunks go into the catalog, in one transaction that also records the migration; only after that commit are the
old files removed. A crash at any point leaves either the old store (migrated again at the next start) or the new
one with old files still around (removed at the next start).
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import numpy as np

from rag.errors import StoreCorrupt, StoreIncompatible
from rag.stores.catalog import Catalog
from rag.stores.segments import remove_segment, write_segment
from rag.types import Chunk

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MIGRATED = "migrated_generation"


def _remove_old_files(directory: Path) -> None:
    for path in directory.iterdir():
        if path.name == MANIFEST or path.name.startswith(("vectors-", "chunks-")):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def migrate_generation_store(directory: Path, catalog: Catalog, embedding_model: str, dimension: int) -> None:
    """Bring a format-1 store into the catalog, if there is one. Runs under the store's write lock."""
    manifest_path = directory / MANIFEST
    if not manifest_path.exists():
        return
    if catalog.meta(MIGRATED) is not None:
        _remove_old_files(directory)
        return
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("embedding_model") != embedding_model or manifest.get("dimension") != dimension:
            raise StoreIncompatible(
                f"the store in {directory} was built with embedding model {manifest.get('embedding_model')!r} "
                f"(dimension {manifest.get('dimension')}), but this service embeds with {embedding_model!r} "
                f"(dimension {dimension}). Set DATA_DIR to another directory, or set EMBEDDING_MODEL back."
            )
        vectors = np.load(directory / manifest["vectors"], allow_pickle=False)
        with (directory / manifest["chunks"]).open(encoding="utf-8") as handle:
            chunks = [Chunk(r["id"], r["document_id"], r["text"], r["metadata"]) for r in map(json.loads, handle)]
    except (OSError, ValueError, KeyError) as exc:
        raise StoreCorrupt(f"cannot read the format-1 store in {directory}: {exc}") from exc
    if vectors.shape != (len(chunks), dimension):
        raise StoreCorrupt(f"format-1 store in {directory}: {vectors.shape[0]} vectors for {len(chunks)} chunks")
    name = write_segment(directory, vectors, np.arange(len(chunks), dtype=np.int64)) if chunks else None
    try:
        with catalog.transaction() as conn:
            if catalog.counters(conn)["next_key"] != 0:
                raise StoreCorrupt(f"{directory} holds both a format-1 store and a non-empty catalog")
            documents = catalog.insert_chunks(conn, 0, chunks, 0)
            if name is not None:
                catalog.insert_segment(conn, name, 0, len(chunks) - 1, len(chunks))
            catalog.bump(conn, next_key=len(chunks), next_seq=documents, chunks=len(chunks), documents=documents)
            catalog.set_meta(conn, MIGRATED, str(manifest.get("generation")))
    except BaseException:
        if name is not None:
            remove_segment(directory, name)
        raise
    _remove_old_files(directory)
    logger.info("migrated the format-1 store in %s: %d chunks, %d documents", directory, len(chunks), documents)

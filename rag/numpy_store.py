"""A NumPy vector store: one normalised float32 matrix, searched with a matrix product and `argpartition`.

On disk, under its directory:
    manifest.json          format version, embedding model, dimension, generation, and the two data files
    vectors-<gen>.npy      the matrix, one row per chunk
    chunks-<gen>.jsonl     one line per chunk: id, document id, text, metadata

Each write produces a new generation: both data files are written to temp files, fsynced and renamed, and only
then is the manifest replaced (temp file, fsync, `os.replace`, fsync of the directory). The manifest's rename is
the commit point, so a crash at any moment leaves either the old generation or the new one, never a mix, and
every write that was acknowledged survives a restart.

Writes are serialised twice: an asyncio lock inside the process and an `flock` across processes (several
uvicorn workers may share one DATA_DIR). A writer first reloads if another process committed a newer generation,
and readers reload when the manifest on disk changes, so every worker sees every acknowledged write.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from rag.errors import DocumentNotFound, StoreCorrupt, StoreIncompatible
from rag.filters import Filters, ValueIndex, build_value_index, filter_mask
from rag.types import Chunk, DocumentSummary, Hit

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LOCK = ".lock"


@dataclass(frozen=True)
class _Snapshot:
    """An immutable view of the store; a write builds a new one and swaps the reference."""

    generation: int
    vectors: np.ndarray
    chunks: tuple[Chunk, ...]
    manifest_stamp: tuple[int, int] | None = None
    # document id -> indexes of its chunks, in insertion order
    documents: dict[str, list[int]] = field(default_factory=dict)
    # metadata key -> value index, built on the first filter on that key and kept as long as this snapshot
    _value_indexes: dict[str, ValueIndex] = field(default_factory=dict)

    def value_index(self, key: str) -> ValueIndex:
        index = self._value_indexes.get(key)
        if index is None:
            index = build_value_index([chunk.metadata for chunk in self.chunks], key)
            self._value_indexes[key] = index
        return index

    @classmethod
    def build(
        cls, generation: int, vectors: np.ndarray, chunks: tuple[Chunk, ...], stamp: tuple[int, int] | None
    ) -> _Snapshot:
        documents: dict[str, list[int]] = {}
        for i, chunk in enumerate(chunks):
            documents.setdefault(chunk.document_id, []).append(i)
        return cls(generation, vectors, chunks, stamp, documents)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, write: Any) -> None:
    """Write through `write(file)` to a temp file beside `path`, fsync it, and rename it over `path`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class NumpyVectorStore:
    backend = "numpy"

    def __init__(self, directory: Path, embedding_model: str, dimension: int) -> None:
        self.directory = directory
        self.embedding_model = embedding_model
        self.dimension = dimension
        self._snapshot = _Snapshot.build(0, np.zeros((0, dimension), dtype=np.float32), (), None)
        self._write_lock = asyncio.Lock()

    # --- opening and reading from disk ---------------------------------------------------------

    @classmethod
    async def open(cls, directory: Path, embedding_model: str, dimension: int) -> NumpyVectorStore:
        """Load the store in `directory` (creating the directory if needed); fail clearly on a mismatch."""
        store = cls(directory, embedding_model, dimension)
        await anyio.to_thread.run_sync(store._open_sync)
        return store

    def _open_sync(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._file_lock():
            self._reload_sync()
            self._remove_stale_files()
        logger.info(
            "vector store at %s: %d chunks, generation %d", self.directory, self.count, self._snapshot.generation
        )

    def _manifest_stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.directory / MANIFEST)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_ino)

    def _read_manifest(self) -> dict[str, Any] | None:
        path = self.directory / MANIFEST
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StoreCorrupt(f"cannot read {path}: {exc}") from exc
        if manifest.get("format_version") != FORMAT_VERSION:
            raise StoreIncompatible(
                f"{path} has format version {manifest.get('format_version')!r}; this service reads {FORMAT_VERSION}"
            )
        if manifest.get("embedding_model") != self.embedding_model or manifest.get("dimension") != self.dimension:
            raise StoreIncompatible(
                f"the store in {self.directory} was built with embedding model {manifest.get('embedding_model')!r} "
                f"(dimension {manifest.get('dimension')}), but this service embeds with {self.embedding_model!r} "
                f"(dimension {self.dimension}). Set DATA_DIR to another directory, or set EMBEDDING_MODEL back and "
                "re-ingest before switching."
            )
        return manifest

    def _reload_sync(self) -> None:
        """Load whatever generation the manifest on disk names (nothing, when there is no manifest)."""
        stamp = self._manifest_stamp()
        manifest = self._read_manifest()
        if manifest is None:
            return
        vectors_path = self.directory / manifest["vectors"]
        chunks_path = self.directory / manifest["chunks"]
        try:
            vectors = np.load(vectors_path, allow_pickle=False)
            with chunks_path.open(encoding="utf-8") as handle:
                chunks = tuple(
                    Chunk(row["id"], row["document_id"], row["text"], row["metadata"])
                    for row in map(json.loads, handle)
                )
        except (OSError, ValueError, KeyError) as exc:
            raise StoreCorrupt(f"cannot read generation {manifest['generation']} in {self.directory}: {exc}") from exc
        if vectors.dtype != np.float32 or vectors.shape != (len(chunks), self.dimension):
            raise StoreCorrupt(
                f"{vectors_path.name} has shape {vectors.shape}, expected ({len(chunks)}, {self.dimension})"
            )
        self._snapshot = _Snapshot.build(manifest["generation"], vectors, chunks, stamp)

    def _remove_stale_files(self) -> None:
        """Delete temp files and data files of generations the manifest no longer names (leftovers of a crash)."""
        manifest = self._read_manifest() or {}
        keep = {MANIFEST, LOCK, manifest.get("vectors"), manifest.get("chunks")}
        for path in self.directory.iterdir():
            if path.name not in keep and (path.name.endswith(".tmp") or path.name.startswith(("vectors-", "chunks-"))):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        with open(self.directory / LOCK, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    async def refresh(self) -> None:
        """Reload if another process committed since we last looked (one `stat` when nothing changed)."""
        if self._manifest_stamp() != self._snapshot.manifest_stamp:
            async with self._write_lock:
                if self._manifest_stamp() != self._snapshot.manifest_stamp:
                    await anyio.to_thread.run_sync(self._locked_reload)

    def _locked_reload(self) -> None:
        with self._file_lock():
            self._reload_sync()

    # --- writing -------------------------------------------------------------------------------

    def _commit(self, vectors: np.ndarray, chunks: tuple[Chunk, ...]) -> None:
        """Write a new generation and make it current. Runs in a worker thread under both locks."""
        generation = self._snapshot.generation + 1
        vectors_name = f"vectors-{generation:08d}.npy"
        chunks_name = f"chunks-{generation:08d}.jsonl"

        def write_chunks(handle: Any) -> None:
            for chunk in chunks:
                row = {"id": chunk.id, "document_id": chunk.document_id, "text": chunk.text, "metadata": chunk.metadata}
                handle.write(json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n")

        _write_atomic(self.directory / vectors_name, lambda handle: np.save(handle, vectors, allow_pickle=False))
        _write_atomic(self.directory / chunks_name, write_chunks)
        manifest = {
            "format_version": FORMAT_VERSION,
            "embedding_model": self.embedding_model,
            "dimension": self.dimension,
            "generation": generation,
            "count": len(chunks),
            "vectors": vectors_name,
            "chunks": chunks_name,
        }
        _write_atomic(self.directory / MANIFEST, lambda handle: handle.write(json.dumps(manifest, indent=2).encode()))
        _fsync_dir(self.directory)  # the renames themselves must reach the disk before we acknowledge
        self._snapshot = _Snapshot.build(generation, vectors, chunks, self._manifest_stamp())
        self._remove_stale_files()

    def _upsert_sync(self, chunks: list[Chunk], vectors: np.ndarray) -> None:
        with self._file_lock():
            self._reload_sync()  # another worker may have committed since our last look
            current = self._snapshot
            replaced = {chunk.document_id for chunk in chunks}
            keep = [i for i, chunk in enumerate(current.chunks) if chunk.document_id not in replaced]
            new_vectors = np.concatenate([current.vectors[keep], vectors.astype(np.float32, copy=False)])
            new_chunks = tuple(current.chunks[i] for i in keep) + tuple(chunks)
            self._commit(new_vectors, new_chunks)

    async def upsert(self, chunks: list[Chunk], vectors: np.ndarray) -> None:
        """Store `chunks` (row i of `vectors` belongs to chunk i), replacing earlier chunks of the same documents.

        Returns once the new generation is on disk.
        """
        if vectors.shape != (len(chunks), self.dimension):
            raise ValueError(f"expected vectors of shape ({len(chunks)}, {self.dimension}), got {vectors.shape}")
        async with self._write_lock:
            await anyio.to_thread.run_sync(self._upsert_sync, chunks, vectors)

    def _delete_sync(self, document_id: str) -> int:
        with self._file_lock():
            self._reload_sync()
            current = self._snapshot
            removed = current.documents.get(document_id)
            if not removed:
                raise DocumentNotFound(f"no document with id {document_id!r}")
            gone = set(removed)
            keep = [i for i in range(len(current.chunks)) if i not in gone]
            self._commit(current.vectors[keep], tuple(current.chunks[i] for i in keep))
            return len(removed)

    async def delete(self, document_id: str) -> int:
        """Remove a document and all its chunks; returns how many chunks went."""
        async with self._write_lock:
            return await anyio.to_thread.run_sync(self._delete_sync, document_id)

    # --- reading -------------------------------------------------------------------------------

    @property
    def count(self) -> int:
        return len(self._snapshot.chunks)

    @property
    def document_count(self) -> int:
        return len(self._snapshot.documents)

    def _search_sync(
        self, query: np.ndarray, top_k: int, filters: Filters | None, threshold: float | None
    ) -> list[Hit]:
        snap = self._snapshot
        if not snap.chunks:
            return []
        scores = snap.vectors @ query.astype(np.float32, copy=False)
        if filters:
            scores = np.where(filter_mask(filters, snap.value_index, len(snap.chunks)), scores, -np.inf)
        k = min(top_k, len(scores))
        best = np.argpartition(-scores, k - 1)[:k]
        best = best[np.argsort(-scores[best], kind="stable")]
        floor = -np.inf if threshold is None else threshold
        return [Hit(snap.chunks[i], float(scores[i])) for i in best if np.isfinite(scores[i]) and scores[i] >= floor]

    async def search(
        self, query: np.ndarray, top_k: int, filters: Filters | None = None, threshold: float | None = None
    ) -> list[Hit]:
        """The `top_k` chunks most similar to the normalised `query` vector, best first."""
        await self.refresh()
        return await anyio.to_thread.run_sync(self._search_sync, query, top_k, filters, threshold)

    async def list_documents(self, offset: int, limit: int) -> tuple[int, list[DocumentSummary]]:
        """One page of documents in insertion order, and the total."""
        await self.refresh()
        snap = self._snapshot
        ids = list(snap.documents)[offset : offset + limit]
        page = []
        for doc_id in ids:
            first = snap.chunks[snap.documents[doc_id][0]]
            page.append(DocumentSummary(doc_id, len(snap.documents[doc_id]), first.metadata, first.text[:200]))
        return len(snap.documents), page

    async def aclose(self) -> None:
        # Every write is durable when it returns; waiting for the lock lets an in-flight write finish.
        async with self._write_lock:
            pass

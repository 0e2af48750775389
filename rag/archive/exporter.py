"""Writing an archive from a store (`python -m rag.export`, `GET /api/v1/export`).

The members are written to temporary files beside the archive as the store's batches come (hashed on the way),
then put in one tar, manifest first, which is written under a temporary name and renamed when whole and fsynced:
an export killed midway leaves no archive. The store is read from one consistent state (`export_documents`), so
an export taken while documents are added holds each of them whole or not at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tarfile
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

import anyio
import numpy as np

from rag.archive.format import (
    CHUNKS,
    DOCUMENTS,
    MANIFEST,
    MEMBERS,
    VECTOR_DTYPE,
    VECTORS,
    Manifest,
    chunk_line,
    digest_of,
    document_line,
    dumps,
)
from rag.durable import fsync_path
from rag.errors import InvalidRequest
from rag.stores.base import ExportableStore, StoredDocument


class _HashedFile:
    """A member being written: its bytes and their SHA-256."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed by `close`
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes) -> None:
        self.handle.write(data)
        self.sha256.update(data)
        self.bytes += len(data)

    def close(self) -> None:
        self.handle.close()


class ArchiveWriter:
    """Collects documents into an archive at `path`; `finish` writes it."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path = path
        self.manifest = manifest
        self._dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        self._members = {name: _HashedFile(self._dir / name) for name in MEMBERS}

    def add(self, documents: list[StoredDocument]) -> None:
        for document in documents:
            if document.vectors.shape != (len(document.chunks), self.manifest.dimension):
                raise ValueError(f"document {document.id!r}: vectors of shape {document.vectors.shape}")
            lines = [dumps(chunk_line(chunk)) for chunk in document.chunks]  # serialised once: written and hashed
            vectors = np.ascontiguousarray(document.vectors, dtype=VECTOR_DTYPE).tobytes()
            self._members[DOCUMENTS].write(dumps(document_line(document, digest_of(document, lines, vectors))))
            self._members[CHUNKS].write(b"".join(lines))
            self._members[VECTORS].write(vectors)
            self.manifest.documents += 1
            self.manifest.chunks += len(document.chunks)

    def finish(self) -> Manifest:
        for name, member in self._members.items():
            member.close()
            self.manifest.members[name] = {"bytes": member.bytes, "sha256": member.sha256.hexdigest()}
        manifest = dumps(self.manifest.as_json())
        partial = self._dir / "archive.tar"
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(_info(MANIFEST, len(manifest)), BytesIO(manifest))
            for name, member in self._members.items():
                with open(member.path, "rb") as handle:
                    tar.addfile(_info(name, member.bytes), handle)
        fsync_path(partial)
        os.replace(partial, self.path)
        fsync_path(self.path.parent)
        self.discard()
        return self.manifest

    def discard(self) -> None:
        for member in self._members.values():
            member.close()
        for path in self._dir.iterdir():
            path.unlink()
        self._dir.rmdir()


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = int(time.time())
    return info


@contextlib.contextmanager
def _writer(path: Path, manifest: Manifest) -> Iterator[ArchiveWriter]:
    writer = ArchiveWriter(path, manifest)
    try:
        yield writer
    except BaseException:
        writer.discard()
        raise


async def export_archive(
    store: object,
    path: Path,
    embedding_model: str,
    dimension: int,
    chunk_size: int,
    chunk_overlap: int,
    org_id: str | None = None,
) -> Manifest:
    """Write every document of `store` (of `org_id`, when given) to an archive at `path`; returns its manifest."""
    if not isinstance(store, ExportableStore):
        raise InvalidRequest(f"the {getattr(store, 'backend', 'configured')} store cannot export its documents")
    manifest = Manifest(
        embedding_model,
        dimension,
        chunk_size,
        chunk_overlap,
        org_id,
        str(getattr(store, "backend", "unknown")),
        datetime.now(UTC).isoformat(timespec="seconds"),
    )
    with _writer(path, manifest) as writer:
        async for batch in store.export_documents(org_id=org_id):
            await anyio.to_thread.run_sync(writer.add, batch)  # JSON and hashing: off the event loop
        return await anyio.to_thread.run_sync(writer.finish)

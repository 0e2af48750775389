"""Reading an archive, and refusing a bad one by name before anything is stored.

`open_archive` checks everything an import relies on in one pass, and stores nothing: the tar's members are the
four expected ones and none is cut short; the manifest's format and version are this service's; every line is a
document or chunk of the right shape, each document's chunks and vectors follow in order and match its `sha256`,
every vector is finite; the counts and each member's size and SHA-256 are the manifest's. The import then reads
the same members a second time. Every byte is treated as hostile: lines are bounded, nothing is extracted to disk,
and no name in the archive becomes a path.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from rag.access import AccessList
from rag.archive.format import (
    CHUNKS,
    DOCUMENTS,
    FORMAT,
    MANIFEST,
    MEMBERS,
    VECTOR_DTYPE,
    VECTORS,
    VERSION,
    Manifest,
    digest_of,
)
from rag.errors import InvalidRequest
from rag.stores.base import StoredDocument
from rag.types import Chunk, tenant_of

MAX_MANIFEST_BYTES = 1 << 20
MAX_LINE_BYTES = 64 << 20  # a chunk's line: its text (a chunk, however configured) and metadata
MAX_DIMENSION = 65_536
MAX_ID_CHARS = 256


class BadArchive(InvalidRequest):
    """An archive refused before anything is stored; the message says what is wrong with it."""


class _Member:
    """One member read in order, its bytes hashed on the way."""

    def __init__(self, tar: tarfile.TarFile, info: tarfile.TarInfo) -> None:
        handle = tar.extractfile(info)
        assert handle is not None  # a regular file, checked at open
        self.name = info.name
        self._handle: IO[bytes] = handle
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def line(self, number: int) -> bytes:
        data = self._handle.readline(MAX_LINE_BYTES + 1)
        if len(data) > MAX_LINE_BYTES:
            raise BadArchive(f"{self.name}: line {number} is longer than {MAX_LINE_BYTES} bytes")
        self._count(data)
        return data

    def read(self, size: int) -> bytes:
        data = self._handle.read(size)
        self._count(data)
        return data

    def _count(self, data: bytes) -> None:
        self.sha256.update(data)
        self.bytes += len(data)


def _json(line: bytes, member: str, number: int) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadArchive(f"{member}: line {number} is not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise BadArchive(f"{member}: line {number} is not a JSON object")
    return value


def _text(value: Any, what: str, limit: int | None = MAX_ID_CHARS) -> str:
    if not isinstance(value, str) or not value or (limit is not None and len(value) > limit):
        raise BadArchive(f"{what} must be a non-empty string" + (f" of at most {limit} characters" if limit else ""))
    return value


def _count(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadArchive(f"{what} must be a whole number")
    return value


def _manifest(tar: tarfile.TarFile, info: tarfile.TarInfo) -> Manifest:
    if info.size > MAX_MANIFEST_BYTES:
        raise BadArchive(f"{MANIFEST} is larger than {MAX_MANIFEST_BYTES} bytes")
    handle = tar.extractfile(info)
    assert handle is not None
    raw = _json(handle.read(), MANIFEST, 1)
    if raw.get("format") != FORMAT:
        raise BadArchive(f"not an archive of this service: {MANIFEST} names format {raw.get('format')!r}")
    if raw.get("version") != VERSION:
        raise BadArchive(f"archive format version {raw.get('version')!r}; this service reads version {VERSION}")
    try:
        embedding, chunking, counts, source = raw["embedding"], raw["chunking"], raw["counts"], raw["source"]
        members = raw["members"]
        manifest = Manifest(
            _text(embedding["model"], "embedding.model", 1000),
            _count(embedding["dimension"], "embedding.dimension"),
            _count(chunking["chunk_size"], "chunking.chunk_size"),
            _count(chunking["chunk_overlap"], "chunking.chunk_overlap"),
            None if source["org_id"] is None else _text(source["org_id"], "source.org_id"),
            str(source["backend"]),
            str(raw["created_at"]),
            _count(counts["documents"], "counts.documents"),
            _count(counts["chunks"], "counts.chunks"),
            {
                name: {"bytes": _count(members[name]["bytes"], f"{name} bytes"), "sha256": members[name]["sha256"]}
                for name in MEMBERS
            },
        )
    except (KeyError, TypeError) as exc:
        raise BadArchive(f"{MANIFEST} lacks a field or has one of the wrong type ({exc})") from None
    if not 0 < manifest.dimension <= MAX_DIMENSION:
        raise BadArchive(f"embedding.dimension {manifest.dimension} is out of range")
    return manifest


@dataclass
class Archive:
    """An archive that passed every check (`open_archive`)."""

    path: Path
    manifest: Manifest

    def documents(self, batch_chunks: int = 4096, org_id: str | None = None) -> Iterator[list[StoredDocument]]:
        """Its documents in order, in batches of about `batch_chunks` chunks."""
        for batch in self.entries(batch_chunks, org_id):
            yield [document for document, _ in batch]

    def entries(
        self, batch_chunks: int = 4096, org_id: str | None = None
    ) -> Generator[list[tuple[StoredDocument, str]], None, None]:
        """Its documents with their digests (`sha256` in documents.jsonl), checked by `open_archive` and not again:
        the members' checksums still are, at the end."""
        with tarfile.open(self.path, "r:") as tar:
            yield from _documents(tar, self.manifest, batch_chunks, org_id, verify_digests=False)


def open_archive(path: Path, org_id: str | None = None) -> Archive:
    """Check the whole archive at `path` (see the module's docstring); BadArchive names the first fault. With
    `org_id`, every document must belong to that organisation."""
    try:
        size = path.stat().st_size
        tar = tarfile.open(path, "r:")  # noqa: SIM115 - the `with` below closes it
    except (tarfile.TarError, EOFError) as exc:
        raise BadArchive(f"{path.name} is not a tar archive ({exc})") from None
    with tar:
        try:
            infos = tar.getmembers()
        except (tarfile.TarError, EOFError) as exc:
            raise BadArchive(f"{path.name} is cut short or damaged ({exc})") from None
        names = [info.name for info in infos]
        if not names or names[0] != MANIFEST:
            raise BadArchive(f"{path.name} does not start with {MANIFEST}: not an archive of this service")
        if sorted(names) != sorted((MANIFEST, *MEMBERS)) or not all(info.isfile() for info in infos):
            raise BadArchive(f"{path.name} holds {names}; an archive holds {[MANIFEST, *MEMBERS]}, as files")
        for info in infos:
            if info.offset_data + info.size > size:
                raise BadArchive(f"{path.name} is cut short: {info.name} ends past the end of the file")
        manifest = _manifest(tar, infos[0])
        for info in infos[1:]:
            if info.size != manifest.members[info.name]["bytes"]:
                raise BadArchive(
                    f"{info.name} holds {info.size} bytes, the manifest says {manifest.members[info.name]['bytes']}"
                )
        for _ in _documents(tar, manifest, 1 << 30, org_id, verify_digests=True):
            pass
    return Archive(path, manifest)


def _documents(
    tar: tarfile.TarFile, manifest: Manifest, batch_chunks: int, org_id: str | None, verify_digests: bool
) -> Iterator[list[tuple[StoredDocument, str]]]:
    members = {name: _Member(tar, tar.getmember(name)) for name in MEMBERS}
    documents, chunks, vectors = members[DOCUMENTS], members[CHUNKS], members[VECTORS]
    row_bytes = manifest.dimension * VECTOR_DTYPE.itemsize
    seen: set[str] = set()
    batch: list[tuple[StoredDocument, str]] = []
    size = chunk_number = document_number = 0
    while line := documents.line(document_number + 1):
        document_number += 1
        entry = _json(line, DOCUMENTS, document_number)
        where = f"{DOCUMENTS} line {document_number}"
        doc_id = _text(entry.get("id"), f"{where}: id")
        if doc_id in seen:
            raise BadArchive(f"{where}: document {doc_id!r} appears twice")
        seen.add(doc_id)
        count = _count(entry.get("chunks"), f"{where}: chunks")
        if count == 0:
            raise BadArchive(f"{where}: document {doc_id!r} has no chunks")
        try:
            access = AccessList.parse(entry.get("access"), f"{where}: access")
        except InvalidRequest as exc:
            raise BadArchive(str(exc)) from None
        added_by = entry.get("added_by")
        if added_by is not None:
            added_by = _text(added_by, f"{where}: added_by")
        parts, lines = [], []
        for _ in range(count):
            chunk_number += 1
            raw = chunks.line(chunk_number)
            lines.append(raw)
            if not raw:
                raise BadArchive(f"{CHUNKS} ends before the chunks of document {doc_id!r}")
            fields = _json(raw, CHUNKS, chunk_number)
            at = f"{CHUNKS} line {chunk_number}"
            if fields.get("document_id") != doc_id:
                raise BadArchive(f"{at}: a chunk of {fields.get('document_id')!r} where {doc_id!r}'s are expected")
            metadata = fields.get("metadata")
            if not isinstance(metadata, dict):
                raise BadArchive(f"{at}: metadata must be an object")
            if org_id is not None and tenant_of(metadata) != org_id:
                raise BadArchive(f"document {doc_id!r} belongs to organisation {tenant_of(metadata)!r}, not {org_id!r}")
            parts.append(
                Chunk(_text(fields.get("id"), f"{at}: id"), doc_id, _text(fields.get("text"), at, None), metadata)
            )
        raw_vectors = vectors.read(count * row_bytes)
        if len(raw_vectors) != count * row_bytes:
            raise BadArchive(f"{VECTORS} ends before the vectors of document {doc_id!r}")
        matrix = np.frombuffer(raw_vectors, dtype=VECTOR_DTYPE).reshape(count, manifest.dimension)
        if not np.isfinite(matrix).all():
            raise BadArchive(f"{VECTORS}: document {doc_id!r} has a vector that is not finite")
        document = StoredDocument(doc_id, parts, matrix.astype(np.float32), access, added_by)
        digest = entry.get("sha256")
        if not isinstance(digest, str) or (verify_digests and digest_of(document, lines, raw_vectors) != digest):
            raise BadArchive(f"{where}: checksum mismatch: document {doc_id!r} does not match its sha256")
        batch.append((document, digest))
        size += count
        if size >= batch_chunks:
            yield batch
            batch, size = [], 0
    if chunks.line(chunk_number + 1) or vectors.read(1):
        raise BadArchive(f"{CHUNKS} or {VECTORS} holds more than the documents of {DOCUMENTS}")
    if (document_number, chunk_number) != (manifest.documents, manifest.chunks):
        raise BadArchive(
            f"the archive holds {document_number} documents and {chunk_number} chunks; the manifest says "
            f"{manifest.documents} and {manifest.chunks}"
        )
    for name, member in members.items():
        if member.sha256.hexdigest() != manifest.members[name]["sha256"]:
            raise BadArchive(f"{name}: checksum mismatch; the archive was altered or damaged")
    if batch:
        yield batch

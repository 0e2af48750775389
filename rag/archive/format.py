"""The portable archive of a knowledge base: one uncompressed tar file, the same from either store.

    manifest.json    format and version, embedding model and dimension, chunking settings, counts, and the size
                     and SHA-256 of each other member; always the first member
    documents.jsonl  one document per line, in the order they were added: {"id", "chunks", "access", "added_by",
                     "sha256"}; `access` is {"users": [...], "groups": [...]} or null (its whole organisation)
    chunks.jsonl     one chunk per line, each document's chunks in order right after the previous document's:
                     {"id", "document_id", "text", "metadata"} (metadata holds the organisation and the offsets)
    vectors.f32      each chunk's vector, row i for line i of chunks.jsonl: little-endian float32, `dimension`
                     floats a row, nothing else

A document's `sha256` covers its id, access list, adder, chunks and vector bytes: an import compares it with what
the target store holds to leave unchanged documents alone. Tar because every system reads it (`tar tf` shows the
members) and it needs no index to write as a stream; uncompressed because vectors barely compress and
compressing would bound the rate (compress the file after, if space matters).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rag.stores.base import StoredDocument
from rag.types import Chunk

FORMAT = "rag-archive"
VERSION = 1
MANIFEST = "manifest.json"
DOCUMENTS = "documents.jsonl"
CHUNKS = "chunks.jsonl"
VECTORS = "vectors.f32"
MEMBERS = (DOCUMENTS, CHUNKS, VECTORS)
VECTOR_DTYPE = np.dtype("<f4")


@dataclass
class Manifest:
    embedding_model: str
    dimension: int
    chunk_size: int
    chunk_overlap: int
    org_id: str | None  # the organisation exported; None: every document of the store
    source_backend: str
    created_at: str
    documents: int = 0
    chunks: int = 0
    members: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {"bytes", "sha256"}

    def as_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "created_at": self.created_at,
            "source": {"backend": self.source_backend, "org_id": self.org_id},
            "embedding": {"model": self.embedding_model, "dimension": self.dimension},
            "chunking": {"chunk_size": self.chunk_size, "chunk_overlap": self.chunk_overlap},
            "counts": {"documents": self.documents, "chunks": self.chunks},
            "members": self.members,
        }


def access_json(document: StoredDocument) -> dict[str, list[str]] | None:
    """The access list as the archive writes it: names sorted, as `AccessList.parse` reads them back."""
    if document.access is None:
        return None
    return {"users": sorted(set(document.access.users)), "groups": sorted(set(document.access.groups))}


def document_line(document: StoredDocument, digest: str) -> dict[str, Any]:
    return {
        "id": document.id,
        "chunks": len(document.chunks),
        "access": access_json(document),
        "added_by": document.added_by,
        "sha256": digest,
    }


def chunk_line(chunk: Chunk) -> dict[str, Any]:
    return {"id": chunk.id, "document_id": chunk.document_id, "text": chunk.text, "metadata": chunk.metadata}


def dumps(value: Any) -> bytes:
    """One JSON line, canonical (sorted keys), so that the same document always hashes the same."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def document_digest(document: StoredDocument, with_vectors: bool = True) -> str:
    """What an import compares: the document's id, access list, adder, chunks and vector bytes."""
    vectors = np.ascontiguousarray(document.vectors, dtype=VECTOR_DTYPE).tobytes() if with_vectors else b""
    return digest_of(document, [dumps(chunk_line(chunk)) for chunk in document.chunks], vectors)


def digest_of(document: StoredDocument, chunk_lines: list[bytes], vectors: bytes) -> str:
    """The digest over a document's own line fields, its chunks' lines (as `dumps` writes them: an archive's bytes
    are hashed as read, not written again) and its vector bytes."""
    digest = hashlib.sha256(dumps([document.id, access_json(document), document.added_by]))
    for line in chunk_lines:
        digest.update(line)
    digest.update(vectors)
    return digest.hexdigest()

"""The retrieval side's exception tree; `api/errors.py` holds the one table mapping it to HTTP statuses."""

from __future__ import annotations


class RAGError(Exception):
    """Base of every retrieval-side failure."""

    error_type = "rag_error"


class InvalidRequest(RAGError):
    """Input that passed schema validation but cannot be served (empty question, bad filter...)."""

    error_type = "invalid_request"


class TenantForbidden(RAGError):
    """A request names another user or organisation than its credential is bound to."""

    error_type = "forbidden"


class DocumentNotFound(RAGError):
    error_type = "not_found"


class StoreIncompatible(RAGError):
    """The store on disk was built by another embedding model or dimension, or by a newer format."""

    error_type = "store_incompatible"


class StoreCorrupt(RAGError):
    """The store on disk cannot be read (files missing or inconsistent with the manifest)."""

    error_type = "store_corrupt"


class StoreUnavailable(RAGError):
    """The store's database cannot be reached right now (restarting, network cut); the request may be retried."""

    error_type = "store_unavailable"


class SpaceRetired(StoreUnavailable):
    """The write reached a store whose embedding space was switched away from (rag/spaces/): the writer takes the
    active space and writes again; a route answers 503, and a retry lands in the active space."""

    error_type = "space_switched"
    # How many times a writer moves to the new space and writes again: a switch is rare, and two more within one
    # write are not a case to wait out.
    retries = 2


class SpaceNotFound(RAGError):
    error_type = "not_found"


class SourceNotFound(RAGError):
    error_type = "not_found"


class SpaceConflict(RAGError):
    """What was asked of an embedding space does not fit its state (dropping the active one, a name taken...)."""

    error_type = "conflict"


class EmbeddingError(RAGError):
    """The embedder failed (a remote embeddings API down, a bad vector...)."""

    error_type = "embedding_error"


class EmbeddingUnavailable(EmbeddingError):
    """A remote embeddings server stays unreachable or overloaded after retries; the request may be retried later."""

    error_type = "embedding_unavailable"


class UnsupportedFileType(RAGError):
    """An uploaded file of a type the service has no parser for."""

    error_type = "unsupported_media_type"


class UploadTooLarge(RAGError):
    """An upload over MAX_UPLOAD_BYTES, or a file whose content expands past the parser limits."""

    error_type = "payload_too_large"


class UnreadableFile(RAGError):
    """A file that cannot be turned into text: corrupt, encrypted, a bomb, too many pages, or no text at all."""

    error_type = "unreadable_file"


class JobNotFound(RAGError):
    """No ingestion job with this id, or one that belongs to someone else (not revealed)."""

    error_type = "not_found"

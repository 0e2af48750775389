"""Ingestion: file parsers, the add path shared by JSON adds and uploads, and persisted background jobs."""

from rag.ingest.indexer import AddedDocument, Indexer

__all__ = ["AddedDocument", "Indexer"]

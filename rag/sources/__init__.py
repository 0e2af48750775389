"""Web sources kept in sync: a URL (one page, a sitemap, or a site crawled within its host and path) whose pages
become documents, re-synced on a schedule at the cost of what changed (rag/sources/syncer.py), fetched only from
addresses a source may reach (guard.py) and politely (fetcher.py), recorded in a registry every replica shares
(registry.py)."""

from __future__ import annotations

from config import Settings
from rag.database import Database, PgDatabase, SqliteDatabase
from rag.sources.registry import SourceRegistry


async def open_source_registry(settings: Settings) -> SourceRegistry:
    """The registry beside the configured store: in the PostgreSQL database the replicas share, else in DATA_DIR."""
    db: Database
    if settings.vector_store == "postgres":
        assert settings.database_url is not None
        db = await PgDatabase.open(settings.database_url.get_secret_value())
    else:
        db = SqliteDatabase(settings.data_dir / "sources.sqlite3")
    try:
        return await SourceRegistry.open(db)
    except BaseException:
        await db.aclose()
        raise

"""Embedding spaces: a store per embedding model, so the model can change without downtime (blue-green).

The service serves one space, the active one. Asking for another embedder registers a new space, and the space builder
(`builder.py`, a background job in one replica) embeds every stored document with it into a store of its own beside
the active one, then keeps it following the active store (`sync.py`): new, changed and deleted documents reach it
within a pass. Searches and chats use the active space meanwhile. Activating the new space is one switch, made while
writes are held off, after which every replica serves it (`active.py`); the old space then follows the new one, so
switching back is the same step, until the old space is dropped. `registry.py` records it all.
"""

from __future__ import annotations

from config import Settings
from rag.database import Database, PgDatabase, SqliteDatabase
from rag.spaces.registry import SpaceRegistry


async def open_registry(settings: Settings) -> SpaceRegistry:
    """The registry beside the configured store: in the PostgreSQL database the replicas share, else in DATA_DIR."""
    db: Database
    if settings.vector_store == "postgres":
        assert settings.database_url is not None
        db = await PgDatabase.open(settings.database_url.get_secret_value())
    else:
        db = SqliteDatabase(settings.data_dir / "spaces.sqlite3")
    try:
        return await SpaceRegistry.open(db)
    except BaseException:
        await db.aclose()
        raise

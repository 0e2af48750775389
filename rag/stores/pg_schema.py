"""The PostgreSQL store's schema: its migrations, the search indexes a bulk load drops and builds again, and the
start-up that applies both (under an advisory lock, so replicas starting together migrate once)."""

from __future__ import annotations

import logging

import asyncpg

from rag.stores.base import check_embedding
from rag.stores.pg_keyword_snapshots import SCHEMA as KEYWORD_SNAPSHOTS
from rag.stores.pg_keywords import SCHEMA

logger = logging.getLogger(__name__)

SCHEMA_LOCK = 0x52414701  # pg_advisory_xact_lock key for migrations ("RAG" 1)
BULK_LOCK = 0x52414702  # held (session level) by the one bulk load at a time
# Every write holds it shared (transaction level); switching the active embedding space holds it alone (rag/spaces/)
SPACE_LOCK = 0x52414703

# pgvector's default candidate list while linking a vector into the graph; the store's is a setting
# (PG_HNSW_EF_CONSTRUCTION), which a bulk load builds with and inserts follow.
PGVECTOR_EF_CONSTRUCTION = 64
# Each organisation's chunks side by side, with what scoring them needs: the key, the vector, and who may read it
# (`readers`, see pg_access.py), so that a narrowed reader's exact scan is an index-only scan too.
TENANT_INDEX = (
    "CREATE INDEX IF NOT EXISTS rag_chunks_by_org_with_vectors ON rag_chunks (org_id) INCLUDE (key, embedding, readers)"
)


def search_indexes(ef_construction: int) -> dict[str, str]:
    """The indexes that searches use and adds maintain: a bulk load drops them and builds them once at its end,
    and a start-up finding one missing (a bulk load that died) builds it again."""
    return {
        "rag_chunks_embedding": (
            "CREATE INDEX IF NOT EXISTS rag_chunks_embedding ON rag_chunks USING hnsw (embedding vector_cosine_ops) "
            f"WITH (ef_construction = {int(ef_construction)})"
        ),
        "rag_chunks_by_org_with_vectors": TENANT_INDEX,
    }


# Each entry migrates from the previous version; `{dim}` is the embedding dimension, fixed at creation.
MIGRATIONS = [
    """
    CREATE EXTENSION IF NOT EXISTS vector;
    CREATE TABLE rag_meta (key text PRIMARY KEY, value text NOT NULL);
    CREATE TABLE rag_counters (
        id int PRIMARY KEY CHECK (id = 1), chunks bigint NOT NULL, documents bigint NOT NULL,
        lexemes bigint NOT NULL);
    INSERT INTO rag_counters VALUES (1, 0, 0, 0);
    CREATE TABLE rag_documents (
        id text PRIMARY KEY, seq bigserial UNIQUE, org_id text, chunks int NOT NULL, metadata jsonb NOT NULL,
        preview text NOT NULL);
    CREATE INDEX rag_documents_by_org ON rag_documents (org_id, seq);
    CREATE TABLE rag_chunks (
        key bigserial PRIMARY KEY, id text NOT NULL,
        document_id text NOT NULL REFERENCES rag_documents (id) ON DELETE CASCADE,
        org_id text, text text NOT NULL, metadata jsonb NOT NULL, embedding vector({dim}) NOT NULL,
        tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED);
    CREATE INDEX rag_chunks_by_document ON rag_chunks (document_id);
    CREATE INDEX rag_chunks_by_org ON rag_chunks (org_id);
    CREATE INDEX rag_chunks_tsv ON rag_chunks USING gin (tsv);
    CREATE INDEX rag_chunks_embedding ON rag_chunks USING hnsw (embedding vector_cosine_ops);
    """,
    # 2: the keyword leg moves to each replica's Tantivy index, which follows the table; the tsvector goes
    SCHEMA
    + """
    DROP INDEX rag_chunks_tsv;
    ALTER TABLE rag_chunks DROP COLUMN tsv;
    ALTER TABLE rag_counters DROP COLUMN lexemes;
    INSERT INTO rag_meta (key, value) VALUES ('store_id', gen_random_uuid()::text);
    """,
    # 3: each organisation's vectors side by side in a B-tree, so scoring all of a tenant's chunks reads its own
    # index pages (an index-only scan) instead of a heap page and a TOAST page per chunk; it serves the lookups
    # by organisation the index it replaces did
    "CREATE INDEX IF NOT EXISTS rag_chunks_by_org_with_vectors ON rag_chunks (org_id) INCLUDE (key, embedding); "
    "DROP INDEX rag_chunks_by_org;",
    # 4: vacuum after inserts of 2% of the table instead of 20%, so that few rows wait to be marked all-visible
    # (until they are, a tenant's index-only scan reads their heap pages too); vacuuming only inserts is cheap:
    # it visits the pages not yet all-visible, and no index has entries to remove
    "ALTER TABLE rag_chunks SET (autovacuum_vacuum_insert_scale_factor = 0.02)",
    # 5: access lists (rag/access.py). A document's list is kept whole for display, and its grantees are copied on
    # each of its chunks (`readers`, NULL: the whole organisation), so a search applies them where it reads the
    # rows: in the HNSW scan's filter, and from the tenant index, which now carries them (rebuilt here)
    """
    ALTER TABLE rag_chunks ADD COLUMN readers text[];
    CREATE TABLE rag_access_lists (
        document_id text PRIMARY KEY REFERENCES rag_documents (id) ON DELETE CASCADE, org_id text,
        users text[] NOT NULL, groups text[] NOT NULL, grantees text[] NOT NULL);
    CREATE INDEX rag_access_lists_by_org ON rag_access_lists (org_id);
    ALTER TABLE rag_documents ADD COLUMN added_by text;
    CREATE INDEX rag_documents_by_adder ON rag_documents (added_by) WHERE added_by IS NOT NULL;
    DROP INDEX IF EXISTS rag_chunks_by_org_with_vectors;
    """
    + TENANT_INDEX,
    # 6: snapshots of a replica's keyword index, which a new replica starts from (pg_keyword_snapshots.py)
    KEYWORD_SNAPSHOTS,
]


# Everything the migrations create in the store's schema: what dropping the first store's tables removes (a later
# space lives in a schema of its own, dropped whole).
STORE_OBJECTS = (
    "DROP TABLE IF EXISTS rag_keyword_snapshot_parts, rag_keyword_snapshots, rag_deleted_chunks, rag_access_lists, "
    "rag_chunks, rag_documents, rag_counters, rag_meta, "
    "rag_schema CASCADE; DROP FUNCTION IF EXISTS rag_note_deleted_chunks()"
)


async def drop_store(conn: asyncpg.Connection, schema: str | None) -> None:
    """Remove a store: its schema, or (None) the first store's objects in the default schema."""
    await conn.execute(STORE_OBJECTS if schema is None else f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def migrate(conn: asyncpg.Connection, embedding_model: str, dimension: int, ef_construction: int) -> str:
    """Create or migrate the schema, check the identity; returns the store's id."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
        await conn.execute("CREATE TABLE IF NOT EXISTS rag_schema (version int NOT NULL)")
        version = await conn.fetchval("SELECT max(version) FROM rag_schema") or 0
        for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
            await conn.execute(migration.format(dim=int(dimension)))
            await conn.execute("INSERT INTO rag_schema (version) VALUES ($1)", number)
            logger.info("database schema migrated to version %d", number)
        identity = dict(await conn.fetch("SELECT key, value FROM rag_meta"))
        if "embedding_model" not in identity:
            await conn.executemany(
                "INSERT INTO rag_meta (key, value) VALUES ($1, $2)",
                [("embedding_model", embedding_model), ("dimension", str(dimension))],
            )
        else:
            check_embedding(identity, "the database's chunks", "another database", embedding_model, dimension)
        await _restore_search_indexes(conn, ef_construction)
        await _follow_ef_construction(conn, ef_construction)
        return str(await conn.fetchval("SELECT value FROM rag_meta WHERE key = 'store_id'"))


async def _restore_search_indexes(conn: asyncpg.Connection, ef_construction: int) -> None:
    """Build a search index a bulk load dropped and did not live to build again; a load still running
    (holding BULK_LOCK) builds its own at its end."""
    indexes = search_indexes(ef_construction)
    present = await conn.fetch(
        "SELECT indexname FROM pg_indexes WHERE tablename = 'rag_chunks' AND schemaname = current_schema()"
    )
    missing = [name for name in indexes if name not in {row["indexname"] for row in present}]
    if not missing or not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", BULK_LOCK):
        return
    for name in missing:
        logger.warning("index %s is missing (a bulk load that did not finish); building it", name)
        await conn.execute(indexes[name])


async def _follow_ef_construction(conn: asyncpg.Connection, ef_construction: int) -> None:
    """Make the HNSW index's ef_construction the configured one: inserts link with it from now on. The links
    already in the graph stay as they were built until a bulk load builds the graph again."""
    index = await conn.fetchrow("SELECT reloptions FROM pg_class WHERE oid = to_regclass('rag_chunks_embedding')")
    if index is None:
        return  # dropped by a bulk load that is running: its build uses its own setting
    current = dict(option.split("=", 1) for option in index["reloptions"] or [])
    if int(current.get("ef_construction", PGVECTOR_EF_CONSTRUCTION)) != ef_construction:
        await conn.execute(f"ALTER INDEX rag_chunks_embedding SET (ef_construction = {int(ef_construction)})")
        logger.info("HNSW index: ef_construction set to %d for new inserts", ef_construction)

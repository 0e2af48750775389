"""`python -m rag.ingest.bulk`: a corpus in JSON Lines loaded in one run, through the real embedder, into a real
PostgreSQL whose search indexes are built once at the end; a bad line stops it with its number."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg

from config import PROJECT_DIR
from rag.access import AccessList
from rag.stores import SearchRequest
from rag.stores.postgres_store import PostgresVectorStore
from tests.test_postgres_store import SEARCH_INDEXES, built_search_indexes

TOPICS = ["volcanoes erupt molten rock", "glaciers carve valleys of ice", "coral reefs shelter fish"]


def run_bulk(source: Path, pg_dsn: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(PROJECT_DIR),
        "VECTOR_STORE": "postgres",
        "DATABASE_URL": pg_dsn,
        "DATA_DIR": str(data_dir),
        "PG_BULK_INDEX_MEMORY": "64MB",
    }
    command = [sys.executable, "-m", "rag.ingest.bulk", str(source), "--batch", "4"]
    # run from the data directory: a developer's .env in the project must not reach the test
    return subprocess.run(command, cwd=data_dir, env=env, capture_output=True, text=True, timeout=300)


async def test_a_corpus_is_loaded_in_bulk_and_searchable(pg_dsn: str, tmp_path: Path) -> None:
    lines = [
        json.dumps({"id": f"doc{i}", "text": f"{TOPICS[i % 3]}, note {i}.", "metadata": {"orgId": f"org{i % 2}"}})
        for i in range(10)
    ]
    lines.insert(5, "")  # blank lines are skipped
    source = tmp_path / "corpus.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = run_bulk(source, pg_dsn, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "loaded 10 documents" in result.stderr
    assert await built_search_indexes(pg_dsn) == SEARCH_INDEXES

    from config import Settings
    from rag.embedders.onnx import OnnxEmbedder

    settings = Settings(_env_file=None)
    embedder = await OnnxEmbedder.load(settings.embedding_model, settings.onnx_dir, 8, 1)
    store = await PostgresVectorStore.open(pg_dsn, embedder.model_name, embedder.dimension, tmp_path / "replica")
    assert store.count == 10 and store.document_count == 10
    query = (await embedder.embed(["which rock comes out of a volcano?"]))[0]
    hits = await store.search(SearchRequest("volcano rock", query, 3, {"orgId": "org0"}))
    assert hits[0].chunk.document_id in {"doc0", "doc6"}  # the org0 volcano notes
    # a second run replaces by id: nothing is stored twice
    assert run_bulk(source, pg_dsn, tmp_path).returncode == 0
    await store.refresh()
    assert store.count == 10
    await store.aclose()
    await embedder.aclose()


async def test_a_bad_line_stops_the_load_with_its_number(pg_dsn: str, tmp_path: Path) -> None:
    lines = [json.dumps({"id": f"doc{i}", "text": f"{TOPICS[i % 3]}, note {i}."}) for i in range(8)]
    lines[6] = json.dumps({"id": "doc6", "body": "no text field"})
    source = tmp_path / "corpus.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = run_bulk(source, pg_dsn, tmp_path)
    assert result.returncode == 2
    assert 'line 7: expected an object with a string "text"' in result.stderr
    assert await built_search_indexes(pg_dsn) == SEARCH_INDEXES  # built even though the run stopped
    conn = await asyncpg.connect(pg_dsn)
    stored = await conn.fetchval("SELECT count(*) FROM rag_documents")
    await conn.close()
    assert stored == 6  # every document before line 7: the full batch of 4, then the 2 read before the bad line
    assert "the documents before line 7 are stored" in result.stderr

    source.write_text('{"text": "fine"}\nnot json\n', encoding="utf-8")
    result = run_bulk(source, pg_dsn, tmp_path)
    assert result.returncode == 2 and "line 2: not JSON" in result.stderr


async def test_a_lines_access_list_is_stored_and_a_bad_one_names_its_line(pg_dsn: str, tmp_path: Path) -> None:
    lines = [
        json.dumps({"id": "hr", "text": "Salary bands of the year.", "access": {"groups": ["hr"]}}),
        json.dumps({"id": "open", "text": "The cafeteria menu.", "access": None}),
        json.dumps({"id": "plain", "text": "A line without a list."}),
    ]
    source = tmp_path / "corpus.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = run_bulk(source, pg_dsn, tmp_path)
    assert result.returncode == 0, result.stderr
    conn = await asyncpg.connect(pg_dsn)
    identity = dict(await conn.fetch("SELECT key, value FROM rag_meta"))
    await conn.close()
    model, dimension = identity["embedding_model"], int(identity["dimension"])
    store = await PostgresVectorStore.open(pg_dsn, model, dimension, tmp_path / "replica")
    try:
        assert (await store.get_document("hr")).access == AccessList(groups=("hr",))
        assert (await store.get_document("open")).access is None
        assert (await store.get_document("plain")).access is None
    finally:
        await store.aclose()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(lines[0] + "\n" + json.dumps({"text": "x", "access": {"groups": "hr"}}) + "\n", encoding="utf-8")
    failed = run_bulk(bad, pg_dsn, tmp_path)
    assert failed.returncode == 2 and "line 2" in failed.stderr and "groups" in failed.stderr

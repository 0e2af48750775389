"""A new PostgreSQL replica starts from a snapshot of another's keyword index (rag/stores/pg_keyword_snapshots.py):
it answers as one built from the table would, a snapshot never keeps a deleted chunk's terms past a purge, and a
damaged or hostile snapshot is refused for a build from the table."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
from pathlib import Path

import asyncpg
import pytest

from rag.stores import pg_keyword_snapshots
from rag.stores.keyword_index import KeywordIndex
from rag.stores.postgres_store import PostgresVectorStore
from tests.test_postgres_store import DIM, chunks_of, keyword, unit_rows

RESTORED = "restored from a snapshot"


async def snapshots(dsn: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch("SELECT id, state, documents, bytes FROM rag_keyword_snapshots ORDER BY id")
    finally:
        await conn.close()


async def newest_snapshot_index(dsn: str, target: Path) -> KeywordIndex:
    """The newest snapshot's files, downloaded as a replica would, opened as an index."""
    target.mkdir()
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            assert await pg_keyword_snapshots.fetch_newest(conn, target) is not None
    finally:
        await conn.close()
    return KeywordIndex(target)


async def test_a_new_replica_starts_from_the_snapshot_and_catches_up(
    pg_dsn: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pg_keyword_snapshots, "PART_BYTES", 4096)  # several parts, read back in order
    writer = await PostgresVectorStore.open(pg_dsn, "toy", DIM, tmp_path / "writer")
    await writer.upsert(chunks_of("basalt", "basalt eruption", 40), unit_rows(1, 40))
    await writer.upsert(chunks_of("granite", "granite slab", 3), unit_rows(2, 3))
    assert await keyword(writer, "slab") == ["granite:0", "granite:1", "granite:2"]
    await writer.purge(deleted_here=False)  # the purger's tick publishes the first snapshot
    (published,) = await snapshots(pg_dsn)
    assert published["documents"] == 43 and published["bytes"] > 3 * 4096
    # written after the snapshot: the new replica catches up on it before it answers
    await writer.upsert(chunks_of("marble", "marble slab"), unit_rows(3, 2))
    await writer.upsert(chunks_of("granite", "granite tile", 1), unit_rows(4, 1))  # a replacement

    with caplog.at_level(logging.INFO, logger="rag.stores.pg_keywords"):
        replica = await PostgresVectorStore.open(pg_dsn, "toy", DIM, tmp_path / "replica")
    assert any(RESTORED in record.getMessage() for record in caplog.records)
    assert replica.layout()["keyword_documents"] == replica.count == 43  # 40 + 2 + 1, before any search
    assert await keyword(replica, "slab") == ["marble:0", "marble:1"]
    assert await keyword(replica, "tile") == ["granite:0"]
    assert len(await keyword(replica, "eruption", k=100)) == 40
    # it follows the table from there like any replica
    await writer.delete("basalt")
    assert await keyword(replica, "eruption") == []
    await writer.aclose()
    await replica.aclose()


async def test_no_new_snapshot_until_one_is_due_and_writes_moved_the_store(pg_dsn: str, tmp_path: Path) -> None:
    store = await PostgresVectorStore.open(pg_dsn, "toy", DIM, tmp_path / "keywords")
    await store.upsert(chunks_of("shale", "shale layer"), unit_rows(5, 2))
    await store.purge(deleted_here=False)
    first = [row["id"] for row in await snapshots(pg_dsn)]
    await store.upsert(chunks_of("slate", "slate roof"), unit_rows(6, 2))
    await store.purge(deleted_here=False)  # writes, but the last snapshot is younger than an hour
    assert [row["id"] for row in await snapshots(pg_dsn)] == first
    store.keyword_snapshot_seconds = 0.001
    await store.purge(deleted_here=False)
    (second,) = await snapshots(pg_dsn)  # newer, and the one before it dropped
    assert second["id"] > first[0] and second["documents"] == 4
    await store.purge(deleted_here=False)  # no write since: nothing to publish
    assert [row["id"] for row in await snapshots(pg_dsn)] == [second["id"]]
    await store.aclose()


async def test_a_purge_leaves_no_snapshot_holding_a_deleted_chunks_terms(pg_dsn: str, tmp_path: Path) -> None:
    writer = await PostgresVectorStore.open(pg_dsn, "toy", DIM, tmp_path / "writer")
    other = await PostgresVectorStore.open(pg_dsn, "toy", DIM, tmp_path / "other")
    await writer.upsert(chunks_of("secret", "zirconium payroll"), unit_rows(7, 2))
    await writer.upsert(chunks_of("public", "feldspar handbook"), unit_rows(8, 2))
    await writer.purge(deleted_here=False)
    (before,) = await snapshots(pg_dsn)
    index = await newest_snapshot_index(pg_dsn, tmp_path / "before")
    assert index._index.searcher().doc_freq("text", "zirconium") == 2  # what the snapshot holds of the document
    index.close()

    await writer.delete("secret")
    # Any replica's purge drops the snapshot (taken before the deletion, which it had not applied); this one had
    # applied the deletion as it caught up, so it rewrote its own index and published that in its place.
    await other.purge(deleted_here=False)
    (after,) = await snapshots(pg_dsn)
    assert after["id"] != before["id"] and not json.loads(after["state"])["unpurged"]
    index = await newest_snapshot_index(pg_dsn, tmp_path / "after")
    assert index._index.searcher().doc_freq("text", "zirconium") == 0  # not even a deleted entry's term
    assert index._index.searcher().doc_freq("text", "feldspar") == 2 and after["documents"] == 2
    index.close()
    await writer.purge(deleted_here=True)  # the deleting replica's own purge: as new as the one there, none more
    assert [row["id"] for row in await snapshots(pg_dsn)] == [after["id"]]
    replica = await PostgresVectorStore.open(pg_dsn, "toy", DIM, tmp_path / "replica")
    assert await keyword(replica, "zirconium feldspar") == ["public:0", "public:1"]
    for store in (writer, other, replica):
        await store.aclose()


async def test_an_index_with_unpurged_deletions_is_not_published(pg_dsn: str, tmp_path: Path) -> None:
    store = await PostgresVectorStore.open(pg_dsn, "toy", DIM, tmp_path / "keywords")
    await store.upsert(chunks_of("tuff", "tuff ash"), unit_rows(9, 2))
    await store.delete("tuff")
    assert await keyword(store, "ash") == []  # applied: marked deleted, its terms still in the segment
    assert await store._keywords.publish(store._pool) is None
    assert await snapshots(pg_dsn) == []
    await store.aclose()


async def put_snapshot(dsn: str, payload: bytes, state: dict[str, object], documents: int, digest: str = "") -> None:
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            snapshot = await conn.fetchval(
                "INSERT INTO rag_keyword_snapshots (state, documents, bytes, sha256) VALUES ($1, $2, $3, $4) "
                "RETURNING id",
                json.dumps(state),
                documents,
                len(payload),
                digest or hashlib.sha256(payload).hexdigest(),
            )
            await conn.execute(
                "INSERT INTO rag_keyword_snapshot_parts (snapshot, part, data) VALUES ($1, 0, $2)", snapshot, payload
            )
    finally:
        await conn.close()


def tar_of(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.mark.parametrize("damage", ["digest", "path", "count", "foreign", "not a tar"])
async def test_a_damaged_or_hostile_snapshot_is_refused_and_the_table_indexed(
    pg_dsn: str, tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    writer = await PostgresVectorStore.open(pg_dsn, "toy", DIM, tmp_path / "writer")
    await writer.upsert(chunks_of("gneiss", "gneiss band"), unit_rows(10, 2))
    await writer.purge(deleted_here=False)
    (published,) = await snapshots(pg_dsn)
    state = json.loads(published["state"])
    conn = await asyncpg.connect(pg_dsn)
    payload = bytes(await conn.fetchval("SELECT data FROM rag_keyword_snapshot_parts WHERE part = 0"))
    await conn.close()
    match damage:
        case "digest":  # a byte changed in transit or at rest
            changed = bytearray(payload)
            changed[len(changed) // 2] ^= 0xFF
            await put_snapshot(pg_dsn, bytes(changed), state, 2, hashlib.sha256(payload).hexdigest())
        case "path":  # an entry that would land outside the directory
            await put_snapshot(pg_dsn, tar_of({"meta.json": b"{}", "../../escaped.json": b"{}"}), state, 2)
        case "count":  # an index that does not hold what its row says
            await put_snapshot(pg_dsn, payload, state, 5)
        case "foreign":  # another database's
            await put_snapshot(pg_dsn, payload, {**state, "store": "another"}, 2)
        case "not a tar":
            await put_snapshot(pg_dsn, b"\x00garbage" * 100, state, 2)
    with caplog.at_level(logging.INFO, logger="rag.stores.pg_keywords"):
        replica = await PostgresVectorStore.open(pg_dsn, "toy", DIM, tmp_path / "replica")
    assert not any(RESTORED in record.getMessage() for record in caplog.records)
    assert not (tmp_path / "escaped.json").exists() and not (tmp_path / "replica" / "escaped.json").exists()
    assert await keyword(replica, "gneiss") == ["gneiss:0", "gneiss:1"]  # built from the table
    assert replica.layout()["keyword_documents"] == 2
    assert not [path for path in (tmp_path / "replica").iterdir() if path.name.startswith(".restore-")]
    await writer.aclose()
    await replica.aclose()


def test_a_snapshot_links_the_last_commits_files_and_none_awaiting_clean_up(tmp_path: Path) -> None:
    index = KeywordIndex(tmp_path / "index")
    index.apply([(1, "quartz vein", "acme"), (2, "mica sheet", "acme"), (4, "gypsum", "acme")], [])
    index.apply([(3, "talc powder", None)], [1])  # a second segment, and a deletion file for the first
    index.apply([], [2])  # the first segment's deletion file again, at a later opstamp
    index.close()
    (tmp_path / "index" / "0123456789abcdef0123456789abcdef.idx").write_bytes(b"an old segment's file")
    linked = tmp_path / "linked"
    linked.mkdir()
    documents = KeywordIndex(tmp_path / "index").link_committed(linked)
    names = sorted(path.name for path in linked.iterdir())
    meta = json.loads((linked / "meta.json").read_text())
    live = {segment["segment_id"].replace("-", "") for segment in meta["segments"]}
    assert documents == 2 and ".managed.json" in names
    assert {name.partition(".")[0] for name in names} - {"meta", ""} == live  # every file of every live segment
    deletions = [name for name in names if name.endswith(".del")]
    expected = [
        f"{s['segment_id'].replace('-', '')}.{s['deletes']['opstamp']}.del" for s in meta["segments"] if s["deletes"]
    ]
    assert sorted(deletions) == sorted(expected) and len(expected) >= 1
    assert len([n for n in (tmp_path / "index").iterdir() if n.name.endswith(".del")]) >= len(deletions)
    assert all((linked / name).stat().st_ino == (tmp_path / "index" / name).stat().st_ino for name in names)
    copy = KeywordIndex(linked)
    assert copy.search("talc quartz mica", 10) and [key for key, _ in copy.search("talc quartz mica", 10)] == [3]
    copy.close()


async def test_a_crash_while_a_snapshot_is_installed_leaves_a_replica_that_starts_right(
    pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rag.stores import pg_keywords

    writer = await PostgresVectorStore.open(pg_dsn, "toy", DIM, tmp_path / "writer")
    await writer.upsert(chunks_of("chert", "chert nodule", 3), unit_rows(11, 3))
    await writer.purge(deleted_here=False)
    await writer.upsert(chunks_of("flint", "flint nodule"), unit_rows(12, 2))

    real = pg_keywords.KeywordIndex

    opened: list[Path] = []

    def crash(directory: Path) -> KeywordIndex:
        opened.append(directory)
        # the replica's index opened again once the snapshot's files are in place, its state not yet written
        if [path.name for path in opened].count("replica") == 2:
            raise SystemExit("killed")
        return real(directory)

    monkeypatch.setattr(pg_keywords, "KeywordIndex", crash)
    with pytest.raises(SystemExit):
        await PostgresVectorStore.open(pg_dsn, "toy", DIM, tmp_path / "replica")
    monkeypatch.setattr(pg_keywords, "KeywordIndex", real)
    assert [path.name for path in opened][-1] == "replica" and any(p.name.startswith(".restore-") for p in opened)
    assert not (tmp_path / "replica" / "followed.json").exists()
    assert (tmp_path / "replica" / "meta.json").exists()  # the snapshot's files, without the state naming them
    replica = await PostgresVectorStore.open(pg_dsn, "toy", DIM, tmp_path / "replica")
    assert await keyword(replica, "nodule") == ["chert:0", "chert:1", "chert:2", "flint:0", "flint:1"]
    assert replica.layout()["keyword_documents"] == 5
    await writer.aclose()
    await replica.aclose()

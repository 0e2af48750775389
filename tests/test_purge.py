"""Deleted means deleted: a unique string put in a document, in a chat, in an answer's sources and in an upload is
deleted or purged; then, once the purge has run, no file under DATA_DIR holds it (every file's bytes, SQLite
databases read through SQLite too) and the keyword index, read through Tantivy, has no entry for it.

Each canary is first shown to be in the files, so a scan that could not see it cannot pass."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from main import create_app
from rag.stores.keyword_index import KeywordIndex
from tests.conftest import make_settings
from tests.fake_upstream import FakeUpstream
from tests.servers import serve

CANARIES = {
    "document": "zqxdocumentcanary",
    "upload": "zqxuploadcanary",
    "chat": "zqxchatcanary",
    "kept": "zqxkeptcanary",  # in a document that stays: the purge must not erase what was not deleted
}


def files_holding(data_dir: Path, needle: str) -> list[str]:
    """Every file under `data_dir` whose bytes hold `needle`, and every SQLite database whose rows do."""
    import sqlite3

    found = []
    encoded = needle.encode()
    for path in sorted(p for p in data_dir.rglob("*") if p.is_file()):
        try:
            content = path.read_bytes()
        except FileNotFoundError:  # a temporary file of a running write, gone since it was listed: it holds nothing
            continue
        if encoded in content:
            found.append(str(path.relative_to(data_dir)))
        if path.suffix == ".sqlite3":
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                if any(needle in line for line in conn.iterdump()):
                    found.append(f"{path.relative_to(data_dir)} (rows)")
            finally:
                conn.close()
    return found


def keyword_entries(index_dir: Path, needle: str) -> int:
    """Documents of the keyword index (deleted ones included, until their segment is rewritten) holding the term."""
    index = KeywordIndex(index_dir)
    try:
        (term,) = index.terms(needle)
        searcher = index._index.searcher()
        return int(searcher.doc_freq("text", term))
    finally:
        index.close()


@pytest.fixture
def service(fake_upstream: FakeUpstream, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    settings = make_settings(tmp_path / "data", fake_upstream.url, purge_delay_seconds=0)  # type: ignore[attr-defined]
    with serve(create_app(settings)) as url:
        yield url, settings.data_dir


def wait_until(condition: object, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_deleted_and_purged_text_leaves_no_file(service: tuple[str, Path], upstream: FakeUpstream) -> None:
    url, data_dir = service
    http = httpx.Client(base_url=url, timeout=60)
    for doc, canary in (("canary-doc", CANARIES["document"]), ("kept-doc", CANARIES["kept"])):
        added = http.post(
            "/api/v1/documents/add",
            json={"documents": [f"The archive entry {canary} records the harbour's tide gauges."], "ids": [doc]},
        )
        assert added.status_code == 200, added.text
    upload = http.post(
        "/api/v1/documents/upload",
        files=[("files", ("notes.txt", f"Field notes: {CANARIES['upload']} marks the north buoy.".encode()))],
        data={"ids": '["upload-doc"]'},
    )
    assert upload.status_code == 202, upload.text
    wait_until(lambda: http.get(f"/api/v1/jobs/{upload.json()['id']}").json()["state"] == "done")
    # a chat of user u1 whose question holds a canary, and an answer whose kept sources quote the document
    for question in (f"What does {CANARIES['chat']} mean?", f"What does the archive entry {CANARIES['document']} say?"):
        body = {"messages": [{"role": "user", "content": question}], "chatId": "chat-1", "userId": "u1"}
        answer = http.post("/api/v1/chat", json=body | {"stream": False})
        assert answer.status_code == 200, answer.text
    assert any(s["document_id"] == "canary-doc" for s in answer.json()["sources"])

    keywords = data_dir / "store" / "keywords"
    for name, canary in CANARIES.items():
        assert files_holding(data_dir, canary), f"the scan cannot see the {name} canary"
    assert keyword_entries(keywords, CANARIES["document"]) == 1
    assert keyword_entries(keywords, CANARIES["upload"]) == 1

    assert http.delete("/api/v1/documents/canary-doc").status_code == 200
    assert http.delete("/api/v1/documents/upload-doc").status_code == 200
    purged = http.delete("/api/v1/users/u1")
    assert purged.status_code == 200 and purged.json()["chats"] == 1, purged.text

    deleted = [CANARIES[name] for name in ("document", "upload", "chat")]
    wait_until(lambda: not any(files_holding(data_dir, canary) for canary in deleted))
    for canary in deleted:
        assert files_holding(data_dir, canary) == []
    assert keyword_entries(keywords, CANARIES["document"]) == 0
    assert keyword_entries(keywords, CANARIES["upload"]) == 0
    # what was not deleted is all still there, and found
    assert files_holding(data_dir, CANARIES["kept"])
    assert keyword_entries(keywords, CANARIES["kept"]) == 1
    hits = http.get("/api/v1/documents/search", params={"query": CANARIES["kept"], "mode": "keyword"}).json()
    assert [hit["document_id"] for hit in hits["results"]] == ["kept-doc"]
    entries = http.get("/api/v1/audit").json()["entries"]
    assert {"document.delete", "user.purge"} <= {entry["action"] for entry in entries}
    assert not any(canary in str(entries) for canary in CANARIES.values())


def test_a_purge_also_runs_at_start_for_deletions_a_stop_left(fake_upstream: FakeUpstream, tmp_path: Path) -> None:
    """A deletion in a service that stops before its purge (a long delay) is purged by the next start."""
    data_dir = tmp_path / "data"
    slow = make_settings(data_dir, fake_upstream.url, purge_delay_seconds=3600)  # type: ignore[attr-defined]
    with serve(create_app(slow)) as url, httpx.Client(base_url=url, timeout=60) as http:
        # two documents in one add, so one keyword segment holds both and outlives the deletion of one
        texts = [f"The gauge log {CANARIES['document']} ends here.", "The tide log goes on."]
        assert http.post("/api/v1/documents/add", json={"documents": texts, "ids": ["d", "e"]}).status_code == 200
        assert http.delete("/api/v1/documents/d").status_code == 200
    assert keyword_entries(data_dir / "store" / "keywords", CANARIES["document"]) == 1  # not purged yet
    quick = make_settings(data_dir, fake_upstream.url, purge_delay_seconds=0)  # type: ignore[attr-defined]
    with serve(create_app(quick)):
        wait_until(lambda: not files_holding(data_dir, CANARIES["document"]))
    assert keyword_entries(data_dir / "store" / "keywords", CANARIES["document"]) == 0


def test_an_export_a_crash_left_behind_is_purged_without_another_export(
    fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """An archive left in DATA_DIR/exports (the service died while sending it) holds documents' text: the purger
    removes it once it is older than any export still in progress could be, and leaves a young one alone."""
    import os

    data_dir = tmp_path / "data"
    exports = data_dir / "exports"
    exports.mkdir(parents=True)
    left = exports / "export-left.tar"
    left.write_bytes(f"an archive holding {CANARIES['document']}".encode())
    os.utime(left, (time.time() - 7200, time.time() - 7200))
    young = exports / "export-sending.tar"
    young.write_bytes(b"an export being sent now")
    settings = make_settings(data_dir, fake_upstream.url, purge_delay_seconds=0)  # type: ignore[attr-defined]
    with serve(create_app(settings)):
        wait_until(lambda: not left.exists())
        assert young.exists()


def test_the_scan_reads_tantivy_itself(tmp_path: Path) -> None:
    """The check on the keyword index asks Tantivy for the term, so it would see one that a byte scan misses."""
    index = KeywordIndex(tmp_path / "kw")
    try:
        index.rebuild([(1, "a compressed zqxcanaryterm entry", None)])
    finally:
        index.close()
    assert keyword_entries(tmp_path / "kw", "zqxcanaryterm") == 1


def table_files_holding(pg_server: Any, database: str, needle: str) -> list[str]:
    """The files of the database's tables and indexes (after a checkpoint writes every page) holding `needle`."""
    pg_server.psql("CHECKPOINT;")
    oid = pg_server.psql(f"SELECT oid FROM pg_database WHERE datname = '{database}';").split("\n")[2].strip()
    folder = Path(pg_server.pgdata) / "base" / oid
    return sorted(p.name for p in folder.iterdir() if p.is_file() and needle.encode() in p.read_bytes())


def test_on_postgresql_no_table_file_holds_purged_text(
    pg_server: Any, fake_upstream: FakeUpstream, upstream: FakeUpstream, tmp_path: Path
) -> None:
    database = f"purge_{uuid.uuid4().hex[:8]}"
    pg_server.psql(f"CREATE DATABASE {database};")
    settings = make_settings(
        tmp_path / "data",
        fake_upstream.url,  # type: ignore[attr-defined]
        vector_store="postgres",
        database_url=pg_server.get_uri(database),
        purge_delay_seconds=0,
        pg_purge_rewrite=True,
    )
    with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=60) as http:
        texts = [f"The archive entry {CANARIES['document']} records the tides.", f"Kept: {CANARIES['kept']}."]
        assert http.post("/api/v1/documents/add", json={"documents": texts, "ids": ["d", "k"]}).status_code == 200
        question = f"What does {CANARIES['chat']} mean?"
        body = {"messages": [{"role": "user", "content": question}], "chatId": "c", "userId": "u1", "stream": False}
        assert http.post("/api/v1/chat", json=body).status_code == 200
        for canary in (CANARIES["document"], CANARIES["chat"], CANARIES["kept"]):
            assert table_files_holding(pg_server, database, canary), canary  # the scan sees each
        assert http.delete("/api/v1/documents/d").status_code == 200
        assert http.delete("/api/v1/users/u1").status_code == 200
        keywords = settings.data_dir / "pg-keywords"
        wait_until(
            lambda: (
                not table_files_holding(pg_server, database, CANARIES["document"])
                and not table_files_holding(pg_server, database, CANARIES["chat"])
                and keyword_entries(keywords, CANARIES["document"]) == 0
            )
        )
        assert files_holding(settings.data_dir, CANARIES["document"]) == []
        assert table_files_holding(pg_server, database, CANARIES["kept"])  # what stays, stays
        hits = http.get("/api/v1/documents/search", params={"query": CANARIES["kept"], "mode": "keyword"}).json()
        assert [hit["document_id"] for hit in hits["results"]] == ["k"]

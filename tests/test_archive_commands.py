"""`python -m rag.export` and `python -m rag.import` run as an operator runs them, beside live services: a knowledge
base moves from one service to another while both serve; a bad archive is refused with exit status 2 and nothing
stored; an import killed midway leaves every document whole and is finished by running it again."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pytest

from config import DEFAULT_EMBEDDING_MODEL
from main import create_app
from rag.archive.exporter import ArchiveWriter
from rag.archive.format import Manifest
from rag.stores.base import StoredDocument
from rag.types import Chunk
from tests.conftest import make_settings
from tests.fake_upstream import FakeUpstream
from tests.servers import command, serve


def finished(process: subprocess.Popen[str]) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=300)
    return process.returncode, stderr


def test_a_knowledge_base_moves_between_running_services(tmp_path: Path, upstream: FakeUpstream) -> None:
    url_of_upstream = upstream.url  # type: ignore[attr-defined]
    source = make_settings(tmp_path / "source", url_of_upstream)
    target = make_settings(tmp_path / "target", url_of_upstream)
    archive = tmp_path / "acme.tar"
    with serve(create_app(source)) as url, httpx.Client(base_url=url, timeout=60) as client:
        added = client.post(
            "/api/v1/documents/add",
            json={
                "documents": [f"Quarterly report {n}: the turbine output rose {n} percent." for n in range(6)]
                + ["Beta's own roadmap."],
                "ids": [f"report-{n}" for n in range(6)] + ["beta-roadmap"],
                "metadatas": [{"orgId": "acme"}] * 6 + [{"orgId": "beta"}],
                "access": [{"groups": ["finance"]}] + [None] * 6,
            },
        )
        assert added.status_code == 200, added.text
        code, stderr = finished(
            command("rag.export", str(archive), "--org", "acme", data_dir=source.data_dir, cwd=tmp_path)
        )
        assert code == 0, stderr
        assert "exported 6 documents" in stderr

    with serve(create_app(target)) as url, httpx.Client(base_url=url, timeout=60) as client:
        code, stderr = finished(command("rag.import", str(archive), data_dir=target.data_dir, cwd=tmp_path))
        assert code == 0, stderr
        assert "imported 6 documents" in stderr
        listed = client.get("/api/v1/documents", params={"limit": 100}).json()  # the running service sees them
        assert sorted(d["id"] for d in listed["documents"]) == [f"report-{n}" for n in range(6)]
        assert client.get("/api/v1/documents/report-0").json()["access"] == {"users": [], "groups": ["finance"]}
        found = client.get("/api/v1/documents/search", params={"query": "turbine output rose 4 percent"}).json()
        assert found["results"][0]["document_id"] == "report-4"

        code, stderr = finished(command("rag.import", str(archive), data_dir=target.data_dir, cwd=tmp_path))
        assert code == 0 and "imported 0 documents" in stderr and "6 already held unchanged" in stderr

        cut = tmp_path / "cut.tar"
        cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 3])
        code, stderr = finished(command("rag.import", str(cut), data_dir=target.data_dir, cwd=tmp_path))
        assert code == 2 and "refused, nothing stored" in stderr
        assert client.get("/api/v1/health").json()["store"]["documents"] == 6


def synthetic_archive(path: Path, documents: int, chunks_each: int) -> None:
    """An archive of the default model, written directly: enough chunks that an import takes a few seconds."""
    rng = np.random.default_rng(7)
    manifest = Manifest(DEFAULT_EMBEDDING_MODEL, 384, 1000, 200, None, "numpy", datetime.now(UTC).isoformat())
    writer = ArchiveWriter(path, manifest)
    for start in range(0, documents, 500):
        batch = []
        for n in range(start, min(start + 500, documents)):
            chunks = [
                Chunk(f"d{n}:{i}", f"d{n}", f"document {n} part {i} words", {"orgId": "acme"})
                for i in range(chunks_each)
            ]
            vectors = rng.standard_normal((chunks_each, 384)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            batch.append(StoredDocument(f"d{n}", chunks, vectors))
        writer.add(batch)
    writer.finish()


def stored_documents(catalog: Path) -> tuple[int, list[tuple[str, int, int]]]:
    """(documents, any whose chunk rows differ from its count) of a store's catalog, read while it is written."""
    with sqlite3.connect(f"file:{catalog}?mode=ro", uri=True, timeout=30) as conn:
        (count,) = conn.execute("SELECT count(*) FROM documents").fetchone()
        uneven = conn.execute(
            "SELECT d.id, d.chunks, count(c.key) FROM documents d LEFT JOIN chunks c ON c.document_id = d.id "
            "GROUP BY d.id HAVING d.chunks != count(c.key)"
        ).fetchall()
    return count, uneven


# Re-embedding with the example plug-in embedder (a user's own class), so that it runs at a test's pace
HASHING = {"EMBEDDER": "examples.plugins.hashing_embedder:HashingEmbedder", "EMBEDDER_OPTIONS": '{"dimension": 64}'}


@pytest.mark.parametrize("reembed", [False, True], ids=["vectors as archived", "re-embedding"])
def test_an_import_killed_midway_is_finished_by_running_it_again(tmp_path: Path, reembed: bool) -> None:
    archive = tmp_path / "big.tar"
    synthetic_archive(archive, documents=6000, chunks_each=5)
    data_dir = tmp_path / "data"
    catalog = data_dir / "store" / "catalog.sqlite3"
    args, env = (["--reembed"], HASHING) if reembed else ([], {})

    def run_import() -> subprocess.Popen[str]:
        return command("rag.import", str(archive), *args, data_dir=data_dir, cwd=tmp_path, env=env)

    process = run_import()
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(sqlite3.OperationalError):  # the file exists a moment before its tables
            if catalog.exists() and stored_documents(catalog)[0] > 0:
                break
        time.sleep(0.02)
    assert process.poll() is None, "the import ended before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    count, uneven = stored_documents(catalog)
    assert 0 < count < 6000 and uneven == []  # killed midway, and no document stored half
    code, stderr = finished(run_import())
    assert code == 0, stderr
    assert f"{count:,} already held unchanged" in stderr
    assert stored_documents(catalog) == (6000, [])
    if reembed:
        assert "chunks re-embedded" in stderr

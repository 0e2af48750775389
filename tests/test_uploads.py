"""Uploads and ingestion jobs over HTTP against a live server with the real embedder: every format, its metadata,
replacement of a re-uploaded file, refusals that store nothing, per-file failures, the progress stream, cancel, large
JSON adds as jobs, and job ownership between tenants."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench import sample_files
from main import create_app
from tests.conftest import make_settings
from tests.fake_upstream import FakeUpstream
from tests.servers import serve
from tests.sse import iter_data

PDF_PAGES = [
    "Page one is about the harbour and its cranes.",
    "Page two explains that the lighthouse keeper feeds his cat sardines every morning.",
    "Page three lists the tide tables for October.",
]


def upload(client: httpx.Client, files: list[tuple[str, bytes, str]], **form: str) -> httpx.Response:
    return client.post(
        "/api/v1/documents/upload",
        files=[("files", (name, data, media_type)) for name, data, media_type in files],
        data=form,
    )


def wait_for(client: httpx.Client, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/v1/jobs/{job_id}").json()
        if job["state"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} did not finish")


def accepted(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/api/v1/jobs/{job['id']}"
    assert job["state"] in ("queued", "running")
    return job


def search(client: httpx.Client, query: str, **params: Any) -> list[dict[str, Any]]:
    response = client.get("/api/v1/documents/search", params={"query": query, "top_k": 10, **params})
    assert response.status_code == 200, response.text
    return response.json()["results"]


def assert_error(response: httpx.Response, status: int, type_: str) -> str:
    assert response.status_code == status, response.text
    assert response.json()["error"]["type"] == type_
    return response.json()["error"]["message"]


def document_total(client: httpx.Client) -> int:
    return client.get("/api/v1/documents", params={"limit": 1}).json()["total"]


@pytest.fixture(scope="module")
def small_limits(fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """A service with small upload limits, so that refusals can be tried with small files."""
    settings = make_settings(
        tmp_path_factory.mktemp("limits"),
        fake_upstream.url,  # type: ignore[attr-defined]
        max_upload_bytes=200_000,
        max_upload_pages=4,
        max_unzipped_bytes=5_000_000,
        max_upload_files=3,
    )
    with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=60) as http:
        yield http


# --- every format, and what is stored ----------------------------------------------------------------


def test_every_format_is_parsed_and_cited_with_its_file_metadata(client: httpx.Client) -> None:
    files = [
        ("harbour.pdf", sample_files.pdf(PDF_PAGES), "application/pdf"),
        ("memo.docx", sample_files.docx(["The quarterly memo names Ottoline as treasurer."], [["Q3", "ledger"]]), ""),
        ("notes.md", b"# Orchard notes\n\nThe **quince** trees flower in *April*.\n", "text/markdown"),
        ("page.html", b"<html><script>var hidden='zeppelin'</script><p>Marmalade recipe with Seville oranges</p>", ""),
        ("plain.txt", b"Plain text about the bakery's sourdough starter, named Clint.", "text/plain"),
    ]
    job = accepted(upload(client, files, metadata='{"team": "archive"}'))
    assert [f["name"] for f in job["files"]] == [name for name, _, _ in files]
    finished = wait_for(client, job["id"])
    assert finished["state"] == "done", finished
    assert finished["errors"] == []
    assert finished["chunks_done"] == finished["chunks_total"] >= 7  # 3 PDF pages never share a chunk
    assert all(f["state"] == "done" and f["chunks_done"] == f["chunks_total"] for f in finished["files"])

    # Other tests share this server's store: look at this upload's hits only.
    hits = search(client, "what does the lighthouse keeper feed his cat")
    (hit,) = [h for h in hits if h["metadata"].get("filename") == "harbour.pdf" and "sardines" in h["text"]]
    meta = hit["metadata"]
    assert meta["page"] == 2 and meta["filename"] == "harbour.pdf" and meta["team"] == "archive"
    assert meta["content_type"] == "application/pdf"
    assert meta["size_bytes"] == len(files[0][1])
    assert (
        meta["sha256"] == finished["files"][0]["sha256"] and hit["document_id"] == finished["files"][0]["document_id"]
    )

    docx_hits = [
        h
        for h in search(client, "who is the treasurer in the quarterly memo")
        if h["metadata"].get("filename") == "memo.docx"
    ]
    assert docx_hits and "Q3 | ledger" in docx_hits[0]["text"]
    md_hit = next(h for h in search(client, "when do quince trees flower") if "quince" in h["text"])
    assert "**" not in md_hit["text"] and md_hit["metadata"]["content_type"] == "text/markdown"
    html_hits = search(client, "marmalade Seville oranges")
    assert any("Marmalade recipe" in h["text"] for h in html_hits)
    assert not search(client, "zeppelin", mode="keyword")  # script text is not content
    assert any("Clint" in h["text"] for h in search(client, "sourdough starter name"))


def test_the_same_file_uploaded_twice_replaces_itself(client: httpx.Client) -> None:
    data = sample_files.pdf(["A unique pamphlet about the Weybridge heron colony census."])
    first = wait_for(client, accepted(upload(client, [("heron.pdf", data, "application/pdf")]))["id"])
    total = document_total(client)
    second = wait_for(client, accepted(upload(client, [("renamed.pdf", data, "application/pdf")]))["id"])
    assert first["state"] == second["state"] == "done"
    assert first["files"][0]["document_id"] == second["files"][0]["document_id"]
    assert document_total(client) == total
    hits = [h for h in search(client, "Weybridge heron colony census") if "heron" in h["text"]]
    assert len(hits) == 1 and hits[0]["metadata"]["filename"] == "renamed.pdf"


def test_client_ids_name_the_documents(client: httpx.Client) -> None:
    files = [("a.txt", b"Alpha text about glaciers.", "text/plain"), ("b.txt", b"Beta text about dunes.", "")]
    job = wait_for(client, accepted(upload(client, files, ids='["glacier-doc", "dune-doc"]'))["id"])
    assert [f["document_id"] for f in job["files"]] == ["glacier-doc", "dune-doc"]
    assert client.delete("/api/v1/documents/dune-doc").json()["deleted_chunks"] == 1


# --- refusals that store nothing ----------------------------------------------------------------------


def test_an_unknown_type_refuses_the_whole_upload(client: httpx.Client) -> None:
    total, jobs = document_total(client), len(client.get("/api/v1/jobs").json()["jobs"])
    files = [("ok.txt", b"fine text", "text/plain"), ("tool.exe", b"MZ\x90\x00", "application/octet-stream")]
    message = assert_error(upload(client, files), 415, "unsupported_media_type")
    assert "tool.exe" in message and ".pdf" in message
    assert document_total(client) == total
    assert len(client.get("/api/v1/jobs").json()["jobs"]) == jobs


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        ({"metadata": "[1, 2]"}, "metadata must be a JSON object"),
        ({"metadata": "{nope"}, "metadata must be a JSON object"),
        ({"metadata": '{"score": NaN}'}, "metadata must be a JSON object"),
        ({"ids": '["only-one"]'}, "ids must be a JSON array of 2"),
        ({"ids": '["same", "same"]'}, "unique"),
        ({"metadata": '{"orgId": 7}'}, None),  # a plain key may set any orgId: accepted
    ],
)
def test_bad_form_fields_get_422(client: httpx.Client, form: dict[str, str], expected: str | None) -> None:
    files = [("x.txt", b"text one", "text/plain"), ("y.txt", b"text two", "text/plain")]
    response = upload(client, files, **form)
    if expected is None:
        assert wait_for(client, accepted(response)["id"])["state"] == "done"
    else:
        assert expected in assert_error(response, 422, "invalid_request")


def test_an_upload_without_files_gets_422(client: httpx.Client) -> None:
    response = client.post("/api/v1/documents/upload", data={"metadata": "{}"})
    assert response.status_code == 422 and "files" in response.json()["error"]["message"]


def test_limits_refuse_with_413_and_422(small_limits: httpx.Client) -> None:
    total = document_total(small_limits)
    big = b"word " * 50_000  # 250 KB > MAX_UPLOAD_BYTES of 200 KB
    message = assert_error(upload(small_limits, [("big.txt", big, "text/plain")]), 413, "payload_too_large")
    assert "MAX_UPLOAD_BYTES" in message
    files = [(f"{n}.txt", b"text", "text/plain") for n in range(4)]
    assert "MAX_UPLOAD_FILES" in assert_error(upload(small_limits, files), 422, "invalid_request")
    assert document_total(small_limits) == total


def test_unreadable_files_fail_by_name_and_the_others_are_stored(small_limits: httpx.Client) -> None:
    files = [
        ("good.txt", b"The one good file mentions the cartographer Ysolde.", "text/plain"),
        ("locked.pdf", sample_files.encrypted_pdf("secret plans"), "application/pdf"),
        ("broken.pdf", b"%PDF-1.7\n this is not really a pdf", "application/pdf"),
    ]
    job = wait_for(small_limits, accepted(upload(small_limits, files))["id"])
    assert job["state"] == "failed"
    states = {f["name"]: (f["state"], f["error"]) for f in job["files"]}
    assert states["good.txt"] == ("done", None)
    assert states["locked.pdf"][0] == "failed" and "encrypted" in states["locked.pdf"][1]
    assert states["broken.pdf"][0] == "failed" and "corrupt" in states["broken.pdf"][1]
    assert [e["file"] for e in job["errors"]] == ["locked.pdf", "broken.pdf"]
    assert any("Ysolde" in h["text"] for h in search(small_limits, "cartographer Ysolde"))

    more = [
        ("long.pdf", sample_files.pdf(["page"] * 5), "application/pdf"),
        ("bomb.docx", sample_files.docx_bomb(50_000_000), ""),
        ("scan.pdf", sample_files.pdf(["", ""]), "application/pdf"),
    ]
    job = wait_for(small_limits, accepted(upload(small_limits, more))["id"])
    errors = {e["file"]: e["message"] for e in job["errors"]}
    assert "5 pages" in errors["long.pdf"] and "MAX_UPLOAD_PAGES" in errors["long.pdf"]
    assert "MAX_UNZIPPED_BYTES" in errors["bomb.docx"] or "zip bomb" in errors["bomb.docx"]
    assert "no text" in errors["scan.pdf"]
    not_utf8 = [("latin.txt", "café".encode("latin-1"), "text/plain"), ("blank.md", b"  \n\n ", "")]
    job = wait_for(small_limits, accepted(upload(small_limits, not_utf8))["id"])
    errors = {e["file"]: e["message"] for e in job["errors"]}
    assert "not UTF-8" in errors["latin.txt"] and "no text" in errors["blank.md"]


# --- progress, cancel, large JSON adds -------------------------------------------------------------------


def long_text(tag: str, chunks: int) -> bytes:
    # ~1,000 characters per chunk at the default CHUNK_SIZE.
    sentence = f"Report {tag} section about topic {{}} with distinct words. "
    return "".join(sentence.format(i) * 18 for i in range(chunks)).encode()


def test_the_event_stream_reports_progress_until_done(client: httpx.Client) -> None:
    job = accepted(upload(client, [("long.txt", long_text("stream", 300), "text/plain")]))
    snapshots: list[dict[str, Any]] = []
    with client.stream("GET", f"/api/v1/jobs/{job['id']}/events", timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        data = list(iter_data(response))
    assert data[-1] == "[DONE]"
    snapshots = [json.loads(d) for d in data[:-1]]
    assert snapshots[-1]["state"] == "done"
    done = [s["chunks_done"] for s in snapshots]
    assert done == sorted(done)  # never goes back
    assert len({d for d in done if 0 < d < snapshots[-1]["chunks_total"]}) >= 2  # partial progress was reported
    assert snapshots[-1]["chunks_done"] == snapshots[-1]["chunks_total"] > 128


def test_cancel_stops_a_job_and_keeps_what_it_finished(fake_upstream: FakeUpstream, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, fake_upstream.url)  # type: ignore[attr-defined]
    with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=60) as client:
        files = [
            ("first.txt", long_text("kestrel", 3), "text/plain"),
            ("second.txt", long_text("osprey", 2000), "text/plain"),
        ]
        job = accepted(upload(client, files))
        queued = accepted(upload(client, [("later.txt", b"A queued file about merlins.", "text/plain")]))
        deadline = time.monotonic() + 60  # the files are ingested side by side: the short one ends first
        while [f["state"] for f in client.get(f"/api/v1/jobs/{job['id']}").json()["files"]] != ["done", "embedding"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.get(f"/api/v1/jobs/{queued['id']}").json()["state"] == "queued"  # one job at a time
        assert client.delete(f"/api/v1/jobs/{queued['id']}").json()["state"] == "cancelled"
        assert not (tmp_path / "uploads" / queued["id"]).exists()  # a cancelled queued job's bytes go at once

        cancelled = client.delete(f"/api/v1/jobs/{job['id']}")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        final = wait_for(client, job["id"])
        assert [f["state"] for f in final["files"]] == ["done", "cancelled"]
        assert any("kestrel" in h["text"] for h in search(client, "Report kestrel section", mode="keyword"))
        assert not search(client, "osprey", mode="keyword")
        # The runner notices at the end of the batch it is embedding, stops, and removes the job's bytes.
        deadline = time.monotonic() + 60
        while any((tmp_path / "uploads").iterdir()):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert not search(client, "osprey", mode="keyword")  # nothing of the cancelled file was written after all
        assert not search(client, "merlins", mode="keyword")
        again = client.delete(f"/api/v1/jobs/{job['id']}")  # cancelling a finished job changes nothing
        assert again.status_code == 200 and again.json()["state"] == "cancelled"


def test_a_large_json_add_becomes_a_job_and_a_small_one_does_not(client: httpx.Client) -> None:
    texts = [f"Large add document {n} about the river otter survey. " * 40 for n in range(60)]  # ~130,000 chars
    job = accepted(
        client.post("/api/v1/documents/add", json={"documents": texts, "metadatas": [{"n": n} for n in range(60)]})
    )
    finished = wait_for(client, job["id"])
    assert finished["state"] == "done" and len(finished["files"]) == 60
    doc_id = finished["files"][7]["document_id"]
    hits = [h for h in search(client, "Large add document 7 river otter", mode="keyword") if h["document_id"] == doc_id]
    assert hits and hits[0]["metadata"] == {"n": 7}

    small = client.post("/api/v1/documents/add", json={"documents": ["small add"], "ids": ["small-add"]})
    assert small.status_code == 200 and small.json()["ids"] == ["small-add"]
    forced = client.post("/api/v1/documents/add", params={"wait": "false"}, json={"documents": ["forced job"]})
    assert wait_for(client, accepted(forced)["id"])["state"] == "done"
    synchronous = client.post("/api/v1/documents/add", params={"wait": "true"}, json={"documents": texts[:30]})
    assert synchronous.status_code == 200 and len(synchronous.json()["ids"]) == 30
    empty = client.post("/api/v1/documents/add", params={"wait": "false"}, json={"documents": ["x", "  "]})
    assert "document 1 is empty" in assert_error(empty, 422, "invalid_request")


def test_unknown_jobs_are_404(client: httpx.Client) -> None:
    for method, path in [
        ("GET", "/api/v1/jobs/nope"),
        ("GET", "/api/v1/jobs/nope/events"),
        ("DELETE", "/api/v1/jobs/nope"),
    ]:
        assert_error(client.request(method, path), 404, "not_found")


# --- tenants -------------------------------------------------------------------------------------------


def test_jobs_belong_to_their_organisation(fake_upstream: FakeUpstream, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, fake_upstream.url, api_keys="key-a:org-a,key-b:org-b")  # type: ignore[attr-defined]
    with serve(create_app(settings)) as url:
        a = httpx.Client(base_url=url, headers={"X-API-Key": "key-a"}, timeout=60)
        b = httpx.Client(base_url=url, headers={"X-API-Key": "key-b"}, timeout=60)
        job = accepted(upload(a, [("a.txt", b"Org A's secret recipe for plum chutney.", "text/plain")]))
        for method, path in [("GET", ""), ("GET", "/events"), ("DELETE", "")]:
            assert_error(b.request(method, f"/api/v1/jobs/{job['id']}{path}"), 404, "not_found")
        assert b.get("/api/v1/jobs").json()["jobs"] == []
        finished = wait_for(a, job["id"])
        assert finished["state"] == "done"
        assert [j["id"] for j in a.get("/api/v1/jobs").json()["jobs"]] == [job["id"]]
        (hit,) = [h for h in search(a, "plum chutney recipe") if "chutney" in h["text"]]
        assert hit["metadata"]["orgId"] == "org-a"
        assert not [h for h in search(b, "plum chutney recipe") if "chutney" in h["text"]]
        # Naming another organisation in the upload's metadata is refused before anything is stored.
        refused = upload(b, [("b.txt", b"text", "text/plain")], metadata='{"orgId": "org-a"}')
        assert_error(refused, 403, "forbidden")
        # The same bytes from another organisation are another document, not a forbidden replacement.
        again = wait_for(b, accepted(upload(b, [("a.txt", b"Org A's secret recipe for plum chutney.", "")]))["id"])
        assert again["state"] == "done" and again["files"][0]["document_id"] != finished["files"][0]["document_id"]
        a.close()
        b.close()

"""Traces (llm/tracing.py), exported by the service as real processes to a real OTLP/HTTP receiver: a chat's spans
form one trace with the expected parents, across the service and the embeddings server it embeds through (another
instance of this service, another process); an incoming traceparent is continued; the upstream receives the
traceparent of the attempt that called it, and a failed attempt says why the next was tried; an upload job's items
get their own spans; log lines carry the trace id; with tracing off nothing is exported and no exporter imported."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.service_process import ServiceProcess
from tests.fake_upstream import FakeUpstream
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.servers import free_port, serve

HASHING = {"EMBEDDER": "examples.plugins.hashing_embedder:HashingEmbedder", "EMBEDDER_OPTIONS": '{"dimension": 64}'}
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "100"}  # the SDK's own variable: batches every 0.1 s, not 5 s
HERON = "The grey heron nests in tall trees near water, in colonies called heronries."


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[OtlpReceiver, str]]:
    otlp = OtlpReceiver()
    with serve(otlp.app) as url:
        yield otlp, url


def traced(service: str, endpoint: str, **settings: str) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_SERVICE_NAME": service, **FAST_EXPORT, **settings}


def one(spans: list[ReceivedSpan], name: str, service: str = "chat-service") -> ReceivedSpan:
    found = [s for s in spans if s.name == name and s.service == service]
    assert len(found) == 1, f"{name} in {service}: {found}"
    return found[0]


def server_span(spans: list[ReceivedSpan], service: str, route: str) -> ReceivedSpan:
    found = [s for s in spans if s.service == service and s.attributes.get("http.route") == route]
    assert len(found) == 1, f"{route} in {service}: {[(s.name, s.attributes) for s in spans]}"
    return found[0]


def test_a_chat_is_one_trace_across_the_service_its_embeddings_server_and_the_upstream(
    tmp_path: Path, receiver: tuple[OtlpReceiver, str], upstream: FakeUpstream
) -> None:
    otlp, endpoint = receiver
    dead = f"http://127.0.0.1:{free_port()}/v1"  # refuses connections: the router fails over from it
    with ServiceProcess(tmp_path / "emb", upstream.url, **traced("embeddings", endpoint), **HASHING) as embeddings:
        embeddings.wait_ready()
        upstreams = [{"base_url": dead, "name": "dead", "weight": 1e6}, {"base_url": upstream.url, "name": "fake"}]
        settings = {
            "EMBEDDER": "openai",
            "EMBEDDINGS_BASE_URL": f"{embeddings.url}/v1",
            "EMBEDDINGS_API_KEY": "unused",
            "LLM_UPSTREAMS": json.dumps(upstreams),
            "SIMILARITY_THRESHOLD": "-1",
            "LOG_LEVEL": "info",
        }
        log = tmp_path / "service.log"
        with ServiceProcess(
            tmp_path / "svc", upstream.url, log_path=log, **traced("chat-service", endpoint), **settings
        ) as service:
            service.wait_ready()
            added = httpx.post(
                f"{service.url}/api/v1/documents/add", json={"documents": [HERON], "ids": ["heron"]}, timeout=60
            )
            assert added.status_code == 200, added.text
            upstream.reset()
            trace_id, caller = secrets.token_hex(16), secrets.token_hex(8)
            body = {"messages": [{"role": "user", "content": "Where does the heron nest?"}], "stream": True}
            headers = {"traceparent": f"00-{trace_id}-{caller}-01"}
            with httpx.stream("POST", f"{service.url}/api/v1/chat", json=body, headers=headers, timeout=60) as r:
                assert r.status_code == 200
                assert "[DONE]" in r.read().decode()
            names = {"authenticate", "retrieve", "embed", "search", "search.dense", "search.keyword", "prompt"}
            spans = otlp.wait_for(trace_id, names | {"search.fuse", "llm", "llm.upstream", "stream"})
            spans = otlp.wait_for(trace_id, {"POST /v1/embeddings", "POST /api/v1/chat"})
            service.terminate()
        embeddings.terminate()

    # The service's spans: the incoming traceparent's child, then the request's steps under it.
    root = server_span(spans, "chat-service", "/api/v1/chat")
    assert root.parent_id == caller
    for name in ("authenticate", "retrieve", "prompt", "llm", "stream"):
        assert one(spans, name).parent_id == root.span_id, name
    retrieve = one(spans, "retrieve")
    assert retrieve.attributes["rag.mode"] == "hybrid" and retrieve.attributes["rag.hits"] == 1
    embed, search = one(spans, "embed"), one(spans, "search")
    assert embed.parent_id == search.parent_id == retrieve.span_id
    assert embed.attributes["rag.embedder.remote"] is True
    for leg in ("search.dense", "search.keyword", "search.fuse"):
        assert one(spans, leg).parent_id == search.span_id, leg
    # Into the embeddings server: its request span is the embed span's child, in the same trace.
    remote = server_span(spans, "embeddings", "/v1/embeddings")
    assert remote.parent_id == embed.span_id
    assert one(spans, "embed", "embeddings").parent_id == remote.span_id
    # Each upstream attempt under the llm span: the dead one failed over, with why; the upstream got the traceparent
    # of the attempt that reached it.
    llm = one(spans, "llm")
    attempts = {s.attributes["llm.upstream"]: s for s in spans if s.name == "llm.upstream"}
    assert set(attempts) == {"dead", "fake"}
    assert all(a.parent_id == llm.span_id for a in attempts.values())
    assert attempts["dead"].error and attempts["dead"].attributes["llm.failover_reason"] == "upstream_unavailable"
    assert not attempts["fake"].error and "llm.failover_reason" not in attempts["fake"].attributes
    assert upstream.request_headers[-1]["traceparent"] == f"00-{trace_id}-{attempts['fake'].span_id}-01"
    stream = one(spans, "stream")
    assert stream.attributes["llm.completion_tokens"] == 4 and stream.attributes["llm.finish_reason"] == "stop"
    # The access log line of the chat names its trace.
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert any(line.get("trace_id") == trace_id and "/api/v1/chat" in line["message"] for line in lines), lines[-5:]


def test_an_upload_jobs_items_get_spans(
    tmp_path: Path, receiver: tuple[OtlpReceiver, str], upstream: FakeUpstream
) -> None:
    otlp, endpoint = receiver
    with ServiceProcess(tmp_path / "svc", upstream.url, **traced("ingest", endpoint), **HASHING) as service:
        service.wait_ready()
        files = [
            ("files", ("heron.txt", HERON.encode(), "text/plain")),
            ("files", ("broken.pdf", b"%PDF-1.4 not a PDF", "application/pdf")),
        ]
        response = httpx.post(f"{service.url}/api/v1/documents/upload", files=files, timeout=60)
        assert response.status_code == 202, response.text
        job = response.json()["id"]
        deadline = time.monotonic() + 60
        while httpx.get(f"{service.url}/api/v1/jobs/{job}", timeout=10).json()["state"] not in ("done", "failed"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        deadline = time.monotonic() + 30
        while not [s for s in otlp.spans if s.name == "ingest.job" and s.attributes.get("rag.job") == job]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        service.terminate()
    run = next(s for s in otlp.spans if s.name == "ingest.job" and s.attributes.get("rag.job") == job)
    spans = otlp.trace(run.trace_id)
    items = sorted((s for s in spans if s.name == "ingest.item"), key=lambda s: s.attributes["rag.item"])
    assert [i.parent_id for i in items] == [run.span_id, run.span_id]
    assert [i.error for i in items] == [False, True]  # the broken PDF failed, and its span says so
    assert sorted(s.name for s in spans if s.parent_id == items[0].span_id) == ["chunk", "embed", "parse", "store"]
    assert [(s.name, s.error) for s in spans if s.parent_id == items[1].span_id] == [("parse", True)]


def test_with_tracing_off_nothing_is_exported_and_no_exporter_is_imported(
    tmp_path: Path, receiver: tuple[OtlpReceiver, str], upstream: FakeUpstream
) -> None:
    otlp, _ = receiver
    script = f"""
import sys
from starlette.testclient import TestClient
from main import create_app
from tests.conftest import make_settings
settings = make_settings({str(tmp_path)!r}, {upstream.url!r}, embedder="examples.plugins.hashing_embedder:HashingEmbedder",
                         embedder_options={{"dimension": 64}})
with TestClient(create_app(settings)) as client:
    response = client.post("/api/v1/chat", json={{"messages": [{{"role": "user", "content": "Hi"}}], "stream": False}},
                           headers={{"traceparent": "00-{"ab" * 16}-{"cd" * 8}-01"}})
    assert response.status_code == 200, response.text
loaded = sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter")))
print(loaded)
"""
    before = len(otlp.spans)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1]
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert upstream.request_headers[-1].get("traceparent") is None  # nothing made up, nothing passed on
    assert len(otlp.spans) == before and otlp.trace("ab" * 16) == []

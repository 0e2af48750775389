"""Bad input, generated (schemathesis, from our own OpenAPI schema) and hand-written: never a 5xx, always the
error body, and nothing already stored is lost."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import response_schema_conformance

from main import create_app
from tests.conftest import make_settings
from tests.fake_upstream import FakeUpstream
from tests.servers import serve


@pytest.fixture(scope="module")
def fuzzed_url(fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # A server of its own: generated requests add and delete documents.
    settings_ = make_settings(tmp_path_factory.mktemp("fuzz"), fake_upstream.url)  # type: ignore[attr-defined]
    with serve(create_app(settings_)) as url:
        yield url


def not_a_server_error(ctx, response, case) -> bool | None:
    if response.status_code >= 500:
        raise AssertionError(f"{case.method} {case.path} answered {response.status_code}: {response.text[:300]}")
    return None


def test_generated_requests(fuzzed_url: str, fake_upstream: FakeUpstream) -> None:
    """Bounded: 15 generated requests per operation. (Schemathesis' pytest plugin does not load under pytest 9, so
    the operations are driven through its Python API.)"""
    api = schemathesis.openapi.from_url(f"{fuzzed_url}/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 12

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=15, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
        )
        def check(case) -> None:
            fake_upstream.reset()
            response = case.call(base_url=fuzzed_url, timeout=30)
            case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
            if response.status_code >= 400:  # every error is our JSON error body
                assert isinstance(json.loads(response.content)["error"]["message"], str)

        check()


@pytest.fixture
def client(fuzzed_url: str, fake_upstream: FakeUpstream) -> Iterator[httpx.Client]:
    fake_upstream.reset()
    with httpx.Client(base_url=fuzzed_url, timeout=30) as http:
        yield http


JSON = {"content-type": "application/json"}


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/api/v1/chat", b'{"messages": [{"role": "user", "content": "\xff\xfe invalid utf-8"}]}'),
        ("/api/v1/chat", b"\xff\xfe\xfd"),
        ("/api/v1/chat", b'{"messages": '),
        ("/api/v1/chat", b""),
        ("/api/v1/chat", b"null"),
        ("/api/v1/chat", b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'),
        ("/api/v1/chat", b'{"messages": [{"role": "user", "content": "hi"}], "top_k": Infinity}'),
        ("/api/v1/documents/add", b'{"documents": ["a"], "metadatas": [{"score": NaN}]}'),
        ("/api/v1/documents/add", b'{"documents": [null]}'),
        ("/v1/embeddings", b'{"input": NaN}'),
        ("/v1/embeddings", b'{"input": [NaN, "x"]}'),
        ("/v1/chat/completions", b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}'),
        ("/stream", b'{"userId": "u", "question": 12}'),
    ],
)
def test_malformed_bodies(client: httpx.Client, fake_upstream: FakeUpstream, path: str, raw: bytes) -> None:
    response = client.post(path, content=raw, headers=JSON)
    assert response.status_code in (400, 422), response.text
    assert response.json()["error"]["message"]
    assert fake_upstream.requests == []


def test_huge_and_empty_strings(client: httpx.Client) -> None:
    huge = client.post("/api/v1/chat", json={"messages": [{"role": "user", "content": "x" * 5_000_000}]})
    assert huge.status_code == 413
    long_message = client.post("/api/v1/chat", json={"messages": [{"role": "user", "content": "x" * 40_000}]})
    assert long_message.status_code == 422
    assert "MAX_MESSAGE_CHARS" in long_message.json()["error"]["message"]
    assert client.post("/api/v1/chat", json={"messages": [{"role": "user", "content": ""}]}).status_code == 422
    assert client.get("/api/v1/documents/search", params={"query": ""}).status_code == 422


def test_unicode_is_kept_exactly(client: httpx.Client) -> None:
    text = "Zürich 東京 🚀 — \u200b zero-width, RTL \u202e text, and a NUL-free control \u0007 char."
    added = client.post("/api/v1/documents/add", json={"documents": [text], "ids": ["unicode-✓"]})
    assert added.status_code == 200
    hits = client.get("/api/v1/documents/search", params={"query": "Zürich 東京 🚀", "top_k": 50}).json()["results"]
    assert [h["text"] for h in hits if h["document_id"] == "unicode-✓"] == [text]
    assert client.delete("/api/v1/documents/unicode-✓").status_code == 200


def test_bad_input_never_loses_stored_documents(client: httpx.Client) -> None:
    assert (
        client.post("/api/v1/documents/add", json={"documents": ["survivor"], "ids": ["survivor"]}).status_code == 200
    )
    for body in ({"documents": ["a", ""]}, {"documents": ["a"], "ids": ["survivor", "x"]}, {"documents": [5]}):
        assert client.post("/api/v1/documents/add", json=body).status_code == 422
    assert client.delete("/api/v1/documents/does-not-exist").status_code == 404
    ids = {d["id"] for d in client.get("/api/v1/documents", params={"limit": 1000}).json()["documents"]}
    assert "survivor" in ids

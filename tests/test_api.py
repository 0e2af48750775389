"""Every /api/v1 route, good and bad input, over HTTP against a live server whose LLM is the fake upstream."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest

from tests.fake_upstream import FakeUpstream, Script
from tests.sse import read_stream

ASK = {"messages": [{"role": "user", "content": "What does the lighthouse keeper feed his cat?"}]}


def add(client: httpx.Client, texts: list[str], **extra: object) -> dict:
    response = client.post("/api/v1/documents/add", json={"documents": texts, **extra})
    assert response.status_code == 200, response.text
    return response.json()


def assert_error(response: httpx.Response, status: int, type_: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if type_:
        assert body["error"]["type"] == type_
    return body["error"]


# --- health and docs ------------------------------------------------------------------------------


def test_health_describes_the_service(client: httpx.Client) -> None:
    body = client.get("/api/v1/health").json()
    assert body["status"] == "ok"
    assert body["embedder"] == {"model": "sentence-transformers/all-MiniLM-L6-v2", "dimension": 384}
    assert body["store"]["backend"] == "numpy"
    assert isinstance(body["store"]["chunks"], int)
    assert body["llm"] == {"provider": "openai", "model": "gpt-4o"}


def test_openapi_docs_are_served(client: httpx.Client) -> None:
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/api/v1/chat", "/api/v1/documents/add", "/api/v1/documents/search", "/api/v1/health"):
        assert path in paths


# --- documents ------------------------------------------------------------------------------------


def test_add_search_list_delete(client: httpx.Client) -> None:
    tag = uuid.uuid4().hex
    long_text = " ".join(f"Clause {i} of the {tag} contract covers liability." for i in range(80))
    body = add(client, [f"The {tag} lighthouse keeper feeds his cat sardines.", long_text],
               metadatas=[{"tag": tag, "kind": "note"}, {"tag": tag, "kind": "contract"}],
               ids=[f"{tag}-note", f"{tag}-contract"])  # fmt: skip
    assert body["ids"] == [f"{tag}-note", f"{tag}-contract"]
    assert body["documents"][0] == {"id": f"{tag}-note", "chunks": 1}
    assert body["documents"][1]["chunks"] > 1

    results = client.get("/api/v1/documents/search", params={"query": "what does the cat eat", "top_k": 3}).json()
    top = results["results"][0]
    assert top["document_id"] == f"{tag}-note"
    assert set(top) == {"id", "document_id", "text", "metadata", "score", "found_by", "keyword_score", "fused_score"}
    assert top["metadata"] == {"tag": tag, "kind": "note"}
    assert "dense" in top["found_by"] and top["fused_score"] is not None  # hybrid by default
    for mode, legs in (("dense", ["dense"]), ("keyword", ["keyword"])):
        only = client.get("/api/v1/documents/search", params={"query": f"{tag} sardines", "mode": mode}).json()
        assert only["results"][0]["document_id"] == f"{tag}-note"
        assert {tuple(r["found_by"]) for r in only["results"]} == {tuple(legs)}
    bad = client.get("/api/v1/documents/search", params={"query": "cat", "mode": "fuzzy"})
    assert bad.status_code == 422 and bad.json()["error"]["type"]

    filtered = client.get(
        "/api/v1/documents/search",
        params={"query": "contract liability", "top_k": 10, "filters": f'{{"tag": "{tag}", "kind": "contract"}}'},
    ).json()["results"]
    assert filtered and {r["document_id"] for r in filtered} == {f"{tag}-contract"}

    listed = client.get("/api/v1/documents", params={"limit": 1000}).json()
    mine = {d["id"]: d for d in listed["documents"] if d["id"].startswith(tag)}
    assert set(mine) == {f"{tag}-note", f"{tag}-contract"}
    assert listed["total"] >= 2

    deleted = client.delete(f"/api/v1/documents/{tag}-contract").json()
    assert deleted == {"id": f"{tag}-contract", "deleted_chunks": body["documents"][1]["chunks"]}
    again = client.get("/api/v1/documents/search", params={"query": "liability clause", "top_k": 50}).json()
    assert all(r["document_id"] != f"{tag}-contract" for r in again["results"])


def test_list_is_paged(client: httpx.Client) -> None:
    add(client, [f"paging document {i}" for i in range(3)])
    total = client.get("/api/v1/documents").json()["total"]
    page = client.get("/api/v1/documents", params={"offset": total - 2, "limit": 5}).json()
    assert len(page["documents"]) == 2
    assert (page["offset"], page["limit"], page["total"]) == (total - 2, 5, total)


def test_same_id_replaces_the_document(client: httpx.Client) -> None:
    doc_id = uuid.uuid4().hex
    add(client, ["first version about zebras"], ids=[doc_id])
    add(client, ["second version about giraffes"], ids=[doc_id])
    hits = client.get("/api/v1/documents/search", params={"query": "zebras giraffes", "top_k": 50}).json()["results"]
    assert [h["text"] for h in hits if h["document_id"] == doc_id] == ["second version about giraffes"]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"documents": []},
        {"documents": "not a list"},
        {"documents": [""]},
        {"documents": ["   "]},
        {"documents": ["a", "b"], "metadatas": [{}]},
        {"documents": ["a", "b"], "ids": ["x"]},
        {"documents": ["a", "b"], "ids": ["x", "x"]},
        {"documents": ["a"], "ids": [""]},
        {"documents": [3]},
        {"documents": ["a"], "metadatas": ["not an object"]},
    ],
)
def test_bad_add_is_422_and_stores_nothing(client: httpx.Client, body: dict) -> None:
    before = client.get("/api/v1/health").json()["store"]["chunks"]
    assert_error(client.post("/api/v1/documents/add", json=body), 422)
    assert client.get("/api/v1/health").json()["store"]["chunks"] == before


def test_invalid_json_is_422(client: httpx.Client) -> None:
    response = client.post("/api/v1/documents/add", content=b"{not json", headers={"content-type": "application/json"})
    assert_error(response, 422, "validation_error")


@pytest.mark.parametrize(
    "params",
    [{}, {"query": ""}, {"query": "x", "top_k": 0}, {"query": "x", "top_k": 10_000}, {"query": "x", "top_k": "many"},
     {"query": "x", "filters": "{oops"}, {"query": "x", "filters": "[1]"}, {"query": "x", "filters": '{"a": {"$gt": 1}}'}],
)  # fmt: skip
def test_bad_search_is_422(client: httpx.Client, params: dict) -> None:
    assert_error(client.get("/api/v1/documents/search", params=params), 422)


def test_unknown_document_is_404(client: httpx.Client) -> None:
    assert_error(client.delete("/api/v1/documents/no-such-document"), 404, "not_found")


def test_unknown_route_and_method(client: httpx.Client) -> None:
    assert_error(client.get("/api/v1/nothing-here"), 404)
    assert_error(client.get("/api/v1/chat"), 405)


# --- chat -----------------------------------------------------------------------------------------


def test_chat_streams_seed_format(client: httpx.Client, upstream: FakeUpstream) -> None:
    tag = uuid.uuid4().hex
    add(client, [f"The lighthouse keeper {tag} feeds his cat sardines every morning."], ids=[tag])
    with client.stream("POST", "/api/v1/chat", json=ASK) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        payloads, done = read_stream(response)
    assert done
    assert all(isinstance(p["content"], str) for p in payloads)
    assert payloads[0]["content"] == ""
    assert tag in {source["document_id"] for source in payloads[0]["sources"]}  # other tests add similar documents
    assert "".join(p["content"] for p in payloads) == "Hello, world!"
    usage = [p["usage"] for p in payloads if "usage" in p]
    assert usage == [{"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}]
    # The retrieved chunk reached the model's prompt, numbered, before the conversation. Its number is its rank,
    # which an earlier test's lighthouse document (its random tag embedded beside the words) may take first.
    system, user = upstream.requests[0]["messages"]
    assert system["role"] == "system"
    assert re.search(rf"\[\d\] \(source: {tag}\)", system["content"])
    assert "sardines" in system["content"]
    assert user == ASK["messages"][0]


def test_chat_without_stream_returns_one_object(client: httpx.Client, upstream: FakeUpstream) -> None:
    response = client.post("/api/v1/chat", json=ASK | {"stream": False, "top_k": 2})
    assert response.status_code == 200
    body = response.json()
    assert body["content"] == "Hello, world!"
    assert isinstance(body["sources"], list) and len(body["sources"]) <= 2
    assert body["usage"]["total_tokens"] == 11


def test_chat_passes_conversation_system_and_options(client: httpx.Client, upstream: FakeUpstream) -> None:
    messages = [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Where is the cat?"},
    ]
    client.post("/api/v1/chat", json={"messages": messages, "stream": False, "max_tokens": 5, "temperature": 0.1})
    sent = upstream.requests[0]
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "user"]
    assert "Answer in French." in sent["messages"][0]["content"]
    assert (sent["max_tokens"], sent["temperature"]) == (5, 0.1)


def test_reasoning_travels_as_extra_key(client: httpx.Client, upstream: FakeUpstream) -> None:
    upstream.reset(Script(reasoning=["hmm"], tokens=["ok"]))
    with client.stream("POST", "/api/v1/chat", json=ASK) as response:
        payloads, done = read_stream(response)
    assert done
    assert {"content": "", "reasoning": "hmm"} in payloads
    assert "".join(p["content"] for p in payloads) == "ok"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"messages": []},
        {"messages": [{"role": "robot", "content": "hi"}]},
        {"messages": [{"role": "user"}]},
        {"messages": [{"role": "user", "content": 5}]},
        {"messages": [{"role": "assistant", "content": "no question here"}]},
        {"messages": [{"role": "user", "content": "   "}]},
        ASK | {"top_k": 0},
        ASK | {"top_k": 100_000},
        ASK | {"filters": {"a": {"$bogus": 1}}},
        ASK | {"temperature": 9},
    ],
)
def test_bad_chat_is_422_and_never_reaches_upstream(client: httpx.Client, upstream: FakeUpstream, body: dict) -> None:
    assert_error(client.post("/api/v1/chat", json=body), 422)
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("script", "status", "type_"),
    [
        (Script(status=500), 502, "upstream_unavailable"),
        (Script(status=401), 502, "upstream_unavailable"),
        (Script(status=429, retry_after="12"), 429, "upstream_rate_limited"),
        (Script(hang=True), 504, "upstream_timeout"),
    ],
)
@pytest.mark.parametrize("stream", [True, False])
def test_upstream_failure_before_first_token_is_a_status(
    client: httpx.Client, upstream: FakeUpstream, script: Script, status: int, type_: str, stream: bool
) -> None:
    upstream.reset(script)
    response = client.post("/api/v1/chat", json=ASK | {"stream": stream})
    error = assert_error(response, status, type_)
    assert "scripted failure" not in error["message"]  # never the upstream's own body
    if status == 429:
        assert response.headers["retry-after"] == "12"


def test_upstream_cut_after_first_token_is_a_final_error_event(client: httpx.Client, upstream: FakeUpstream) -> None:
    upstream.reset(Script(tokens=["one", " two", " three"], cut_after=2))
    with client.stream("POST", "/api/v1/chat", json=ASK) as response:
        assert response.status_code == 200
        payloads, done = read_stream(response)
    assert done
    assert "".join(p["content"] for p in payloads) == "one two"
    assert payloads[-1]["content"] == ""
    assert payloads[-1]["error"]["type"] in {"upstream_unavailable", "upstream_protocol_error"}
    assert sum("error" in p for p in payloads) == 1


def test_upstream_cut_without_streaming_is_502(client: httpx.Client, upstream: FakeUpstream) -> None:
    upstream.reset(Script(tokens=["one", " two", " three"], cut_after=2))
    assert_error(client.post("/api/v1/chat", json=ASK | {"stream": False}), 502)

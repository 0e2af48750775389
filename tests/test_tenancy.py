"""Tenants proven by credentials: scoped API keys and signed user tokens against a live server, on every route and
transport. Every attempt to reach another organisation or user is refused or scoped, and nothing of the other
tenant shows up in any response, source or prompt sent upstream (the fake upstream records every prompt)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt
import openai
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from main import create_app
from tests.conftest import make_settings
from tests.fake_upstream import FakeUpstream
from tests.servers import serve

SECRET = "tenancy-test-secret-0123456789-abcdefghijklmnop"
AUDIENCE = "rag-service"
TRUSTED, KEY_A, KEY_B = "trusted-key-000000", "key-a-111111111", "key-b-222222222"
SECRET_A, SECRET_B = "vault code 1111", "vault code 2222"  # what each organisation's document holds


def token(sub: str = "alice", org: str | None = "orgA", **claims: Any) -> str:
    payload: dict[str, Any] = {"sub": sub, "exp": int(time.time()) + 300, "aud": AUDIENCE}
    if org is not None:
        payload["orgId"] = org
    return jwt.encode(payload | claims, SECRET, algorithm="HS256")


@pytest.fixture(scope="module")
def tenant_url(fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = make_settings(
        tmp_path_factory.mktemp("tenancy"),
        fake_upstream.url,  # type: ignore[attr-defined]
        api_keys=[TRUSTED, f"{KEY_A}:orgA", f"{KEY_B}:orgB"],
        jwt_secret=SECRET,
        jwt_audience=AUDIENCE,
    )
    with serve(create_app(settings)) as url:
        trusted = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TRUSTED}"}, timeout=60)
        for org, text in (("orgA", SECRET_A), ("orgB", SECRET_B)):
            response = trusted.post(
                "/api/v1/documents/add",
                json={
                    "documents": [f"The lighthouse {text} opens the archive of {org}."],
                    "metadatas": [{"orgId": org}],
                    "ids": [f"doc-{org}"],
                },
            )
            assert response.status_code == 200, response.text
        yield url


def client_for(url: str, credential: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {credential}"}, timeout=60)


# Minted when a test asks, not at collection: a token minted then expires (5 minutes) before a slow run gets here.
CREDENTIALS: dict[str, Callable[[], str]] = {"scoped key": lambda: KEY_A, "token": token}


@pytest.fixture(params=list(CREDENTIALS))
def org_a(request: pytest.FixtureRequest, tenant_url: str, upstream: FakeUpstream) -> Iterator[httpx.Client]:
    """A client whose credential belongs to organisation A (a scoped key, or alice's token)."""
    with client_for(tenant_url, CREDENTIALS[request.param]()) as client:
        yield client


def assert_forbidden(response: httpx.Response) -> None:
    assert response.status_code == 403, response.text
    assert response.json()["error"]["type"] == "forbidden"
    assert "2222" not in response.text


def prompts(upstream: FakeUpstream) -> str:
    return json.dumps(upstream.requests)


ASK = {"messages": [{"role": "user", "content": "What is the lighthouse vault code?"}], "stream": False}


# --- documents ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"filters": json.dumps({"orgId": "orgB"})},
        {"filters": json.dumps({"orgId": {"$in": ["orgA", "orgB"]}})},
        {"filters": json.dumps({"orgId": {"$ne": "orgA"}})},
        {"mode": "keyword"},
        {"mode": "dense"},
    ],
)
def test_search_sees_only_the_credentials_organisation(org_a: httpx.Client, params: dict) -> None:
    response = org_a.get("/api/v1/documents/search", params={"query": "lighthouse vault code", "top_k": 10} | params)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert results and {r["metadata"]["orgId"] for r in results} == {"orgA"}
    assert "2222" not in response.text


def test_naming_another_organisation_is_refused(org_a: httpx.Client, upstream: FakeUpstream) -> None:
    assert_forbidden(org_a.get("/api/v1/documents/search", params={"query": "vault", "orgId": "orgB"}))
    assert_forbidden(org_a.get("/api/v1/documents", params={"orgId": "orgB"}))
    assert_forbidden(org_a.post("/api/v1/chat", json=ASK | {"orgId": "orgB"}))
    assert_forbidden(org_a.post("/api/v1/chat", json=ASK | {"orgId": "orgB", "stream": True}))
    assert_forbidden(org_a.get("/api/v1/chats", params={"userId": "alice", "orgId": "orgB"}))
    assert upstream.requests == []
    # naming its own organisation is fine
    own = org_a.get("/api/v1/documents/search", params={"query": "lighthouse vault code", "orgId": "orgA"})
    assert own.status_code == 200 and "1111" in own.text


def test_listing_and_deleting_stay_inside_the_organisation(org_a: httpx.Client, tenant_url: str) -> None:
    page = org_a.get("/api/v1/documents", params={"limit": 1000}).json()
    assert page["total"] == len(page["documents"]) >= 1
    assert {d["metadata"]["orgId"] for d in page["documents"]} == {"orgA"}
    missing = org_a.delete("/api/v1/documents/doc-orgB")
    assert missing.status_code == 404  # another organisation's document does not exist for this credential
    with client_for(tenant_url, TRUSTED) as trusted:
        assert trusted.get("/api/v1/documents", params={"orgId": "orgB"}).json()["total"] == 1


def test_adds_are_stamped_and_cannot_reach_another_organisation(org_a: httpx.Client, tenant_url: str) -> None:
    added = org_a.post("/api/v1/documents/add", json={"documents": ["Tide tables for the harbour."]})
    assert added.status_code == 200
    doc_id = added.json()["ids"][0]
    with client_for(tenant_url, TRUSTED) as trusted:
        page = trusted.get("/api/v1/documents", params={"orgId": "orgA", "limit": 1000}).json()
        assert doc_id in {d["id"] for d in page["documents"]}
        assert_forbidden(
            org_a.post("/api/v1/documents/add", json={"documents": ["x"], "metadatas": [{"orgId": "orgB"}]})
        )
        # replacing organisation B's document by its id would delete it: refused, and B's document is intact
        assert_forbidden(org_a.post("/api/v1/documents/add", json={"documents": ["overwrite"], "ids": ["doc-orgB"]}))
        hits = trusted.get("/api/v1/documents/search", params={"query": "vault code", "orgId": "orgB"}).json()
        assert [h["document_id"] for h in hits["results"]] == ["doc-orgB"] and "2222" in hits["results"][0]["text"]
    assert org_a.delete(f"/api/v1/documents/{doc_id}").status_code == 200


# --- chat transports ------------------------------------------------------------------------------------


@pytest.mark.parametrize("filters", [None, {"orgId": "orgB"}, {"orgId": {"$in": ["orgB"]}}])
def test_chat_prompts_carry_only_the_organisations_documents(
    org_a: httpx.Client, upstream: FakeUpstream, filters: dict | None
) -> None:
    response = org_a.post("/api/v1/chat", json=ASK | {"filters": filters})
    assert response.status_code == 200, response.text
    assert {s["metadata"]["orgId"] for s in response.json()["sources"]} == {"orgA"}
    assert "1111" in prompts(upstream) and "2222" not in prompts(upstream)


def test_legacy_stream_route_is_scoped(tenant_url: str, upstream: FakeUpstream) -> None:
    with client_for(tenant_url, token("alice", "orgA")) as alice:
        body = {"userId": "alice", "question": "What is the lighthouse vault code?"}
        assert_forbidden(alice.post("/stream", json=body | {"orgId": "orgB"}))
        assert_forbidden(alice.post("/stream", json=body | {"userId": "bob"}))
        assert upstream.requests == []
        with alice.stream("POST", "/stream", json=body) as response:
            assert response.status_code == 200
            text = "".join(response.iter_text())
        assert "2222" not in text and "1111" in prompts(upstream) and "2222" not in prompts(upstream)


def test_openai_api_extra_body_is_scoped(tenant_url: str, upstream: FakeUpstream) -> None:
    client = openai.OpenAI(base_url=f"{tenant_url}/v1", api_key=KEY_A, max_retries=0)
    messages = [{"role": "user", "content": "What is the lighthouse vault code?"}]
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="m", messages=messages, extra_body={"orgId": "orgB"})
    assert upstream.requests == []
    answer = client.chat.completions.create(
        model="m", messages=messages, extra_body={"filters": {"orgId": "orgB"}}, stream=True
    )
    chunks = [chunk.model_dump_json() for chunk in answer]
    assert "2222" not in "".join(chunks)
    assert "1111" in prompts(upstream) and "2222" not in prompts(upstream)


def test_websocket_questions_are_scoped_by_the_token_at_connect(tenant_url: str, upstream: FakeUpstream) -> None:
    ws_url = tenant_url.replace("http", "ws") + "/api/v1/ws/chat"
    with pytest.raises(InvalidStatus), connect(ws_url, open_timeout=10):  # no credential: refused at connect
        pass
    with connect(f"{ws_url}?access_token={token('alice', 'orgA')}", open_timeout=10) as ws:
        ws.send(json.dumps({"question": "What is the lighthouse vault code?", "orgId": "orgB", "id": 1}))
        error = json.loads(ws.recv(timeout=10))
        assert error["type"] == "error" and error["error"]["type"] == "forbidden", error
        assert json.loads(ws.recv(timeout=10))["type"] == "done"
        assert upstream.requests == []
        ws.send(json.dumps({"question": "What is the lighthouse vault code?", "filters": {"orgId": "orgB"}, "id": 2}))
        frames = []
        while not frames or frames[-1]["type"] != "done":
            frames.append(json.loads(ws.recv(timeout=10)))
    sources = [s for f in frames if f["type"] == "sources" for s in f["sources"]]
    assert sources and {s["metadata"]["orgId"] for s in sources} == {"orgA"}
    assert "2222" not in json.dumps(frames) and "2222" not in prompts(upstream)


# --- chats ----------------------------------------------------------------------------------------------


def test_a_token_reads_only_its_users_chats(tenant_url: str, upstream: FakeUpstream) -> None:
    alice, bob = client_for(tenant_url, token("alice", "orgA")), client_for(tenant_url, token("bob", "orgA"))
    started = alice.post("/api/v1/chat", json=ASK | {"chatId": "alice-chat"})  # userId filled in from the token
    assert started.status_code == 200, started.text
    mine = alice.get("/api/v1/chats").json()["chats"]
    assert [(c["chatId"], c["userId"], c["orgId"]) for c in mine] == [("alice-chat", "alice", "orgA")]
    assert alice.get("/api/v1/chats/alice-chat").status_code == 200

    assert bob.get("/api/v1/chats/alice-chat").status_code == 404
    assert_forbidden(bob.get("/api/v1/chats/alice-chat", params={"userId": "alice"}))
    assert_forbidden(bob.get("/api/v1/chats", params={"userId": "alice"}))
    assert_forbidden(bob.post("/api/v1/chat", json=ASK | {"chatId": "alice-chat", "userId": "alice"}))
    assert bob.delete("/api/v1/chats/alice-chat").status_code == 404
    # the same user name in another organisation is another user
    elsewhere = client_for(tenant_url, token("alice", "orgB"))
    assert elsewhere.get("/api/v1/chats/alice-chat").status_code == 404
    assert alice.get("/api/v1/chats/alice-chat").status_code == 200


def test_an_ingestion_job_is_its_users_only(tenant_url: str, upstream: FakeUpstream) -> None:
    alice, bob = client_for(tenant_url, token("alice", "orgA")), client_for(tenant_url, token("bob", "orgA"))
    files = [("files", ("notes.txt", b"Alice's notes on the orchard's pear trees.", "text/plain"))]
    accepted = alice.post("/api/v1/documents/upload", files=files)
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["id"]
    for method, path in [("GET", ""), ("GET", "/events"), ("DELETE", "")]:
        assert bob.request(method, f"/api/v1/jobs/{job_id}{path}").status_code == 404  # same organisation, not his
    assert bob.get("/api/v1/jobs").json()["jobs"] == []
    assert [j["id"] for j in alice.get("/api/v1/jobs").json()["jobs"]] == [job_id]
    deadline = time.monotonic() + 60
    while alice.get(f"/api/v1/jobs/{job_id}").json()["state"] != "done":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    # The documents belong to the organisation (anyone in it may search them), the job to its user.
    hits = bob.get("/api/v1/documents/search", params={"query": "orchard pear trees"}).json()["results"]
    assert any(h["metadata"].get("filename") == "notes.txt" and h["metadata"]["orgId"] == "orgA" for h in hits)
    # A trusted key may act for any tenant, and so sees every job.
    assert client_for(tenant_url, TRUSTED).get(f"/api/v1/jobs/{job_id}").status_code == 200


# --- bad tokens -----------------------------------------------------------------------------------------


def _none_alg_token() -> str:
    header = jwt.utils.base64url_encode(json.dumps({"alg": "none", "typ": "JWT"}).encode()).decode()
    body = {"sub": "alice", "orgId": "orgB", "exp": int(time.time()) + 300, "aud": AUDIENCE}
    return f"{header}.{jwt.utils.base64url_encode(json.dumps(body).encode()).decode()}."


BAD_TOKENS = {
    "expired": token(exp=int(time.time()) - 3600),
    "not yet valid": token(nbf=int(time.time()) + 3600),
    "wrong signature": jwt.encode(
        {"sub": "alice", "orgId": "orgA", "exp": int(time.time()) + 300, "aud": AUDIENCE},
        "another-secret-0123456789-abcdefghijklmnopq",
        algorithm="HS256",
    ),
    "alg none": _none_alg_token(),
    "wrong audience": token(aud="someone-else"),
    "no audience": jwt.encode({"sub": "alice", "orgId": "orgA", "exp": int(time.time()) + 300}, SECRET),
    "no expiry": jwt.encode({"sub": "alice", "orgId": "orgA", "aud": AUDIENCE}, SECRET),
    "no organisation": token(org=None),
    "malformed": "eyJhbGciOiJIUzI1NiJ9.not-json.sig",
    "garbage": "eyJ.x.y",
}


@pytest.mark.parametrize("name", list(BAD_TOKENS))
def test_bad_tokens_are_401_with_the_error_body(tenant_url: str, upstream: FakeUpstream, name: str) -> None:
    with client_for(tenant_url, BAD_TOKENS[name]) as client:
        for response in (
            client.get("/api/v1/documents/search", params={"query": "vault"}),
            client.post("/api/v1/chat", json=ASK),
            client.get("/v1/models"),
        ):
            assert response.status_code == 401, (name, response.text)
            assert response.json()["error"]["message"]
            assert "2222" not in response.text and "1111" not in response.text
    assert upstream.requests == []
    ws_url = tenant_url.replace("http", "ws") + f"/api/v1/ws/chat?access_token={BAD_TOKENS[name]}"
    with pytest.raises(InvalidStatus), connect(ws_url, open_timeout=10):
        pass


# --- asymmetric keys ------------------------------------------------------------------------------------


def test_es256_tokens_verify_with_the_public_key_and_alg_confusion_fails(
    fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key_file = tmp_path_factory.mktemp("keys") / "public.pem"
    key_file.write_bytes(public_pem)
    settings = make_settings(
        tmp_path_factory.mktemp("es256"),
        fake_upstream.url,  # type: ignore[attr-defined]
        jwt_public_key=str(key_file),
    )
    claims = {"sub": "carol", "orgId": "orgC", "exp": int(time.time()) + 300}
    with serve(create_app(settings)) as url:
        good = jwt.encode(claims, private, algorithm="ES256")
        with client_for(url, good) as client:
            assert client.get("/api/v1/documents").status_code == 200
            assert_forbidden(client.get("/api/v1/documents", params={"orgId": "orgA"}))
        # an HS256 token "signed" with the public key as its secret must not pass for a token of ours
        forged = _hs256_with(public_pem, claims)
        with client_for(url, forged) as client:
            assert client.get("/api/v1/documents").status_code == 401


def _hs256_with(key: bytes, claims: dict) -> str:
    """An HS256 token whose secret is `key` (PyJWT refuses PEM keys as HMAC secrets, so it is built by hand)."""
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{b64(json.dumps(claims).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


# --- generated requests with authentication on --------------------------------------------------------


def test_generated_requests_with_a_token_never_get_a_5xx(tenant_url: str, fake_upstream: FakeUpstream) -> None:
    """schemathesis over every operation, each request carrying alice's token: tenant fields and filters are
    generated freely, so most name other organisations and users; none may cause a server error."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    from tests.test_bad_input import not_a_server_error

    api = schemathesis.openapi.from_url(f"{tenant_url}/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    headers = {"Authorization": f"Bearer {token()}"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=8, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
        )
        def check(case: Any) -> None:
            fake_upstream.reset()
            response = case.call(base_url=tenant_url, headers=headers, timeout=30)
            case.validate_response(response, checks=[not_a_server_error])
            assert response.status_code != 401, response.text  # the token itself is always accepted
            if response.status_code >= 400:
                assert isinstance(json.loads(response.content)["error"]["message"], str)
            assert SECRET_B not in response.text

        check()

"""Feedback on answers (rag/chats/feedback.py, api/feedback.py), on both backends, through the live service: a user
rates an answer of their chat and reads the rating back; the rating is kept with the answer's question, sources and
settings; an organisation's admin lists it as JSON, CSV or a questions file; another user or organisation sees none
of it on any route; bad ratings are 422; a deleted chat takes its feedback with it; an older chat database gains the
column that answers' details need without losing a message."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from llm.types import Message
from main import create_app
from rag.chats.sqlite import ChatOwner, ConversationStore
from tests.conftest import make_settings
from tests.fake_upstream import FakeUpstream
from tests.servers import serve

ROOT = {"Authorization": "Bearer root-key"}
ACME = {"Authorization": "Bearer acme-key"}
OTHER = {"Authorization": "Bearer other-key"}
ALICE = ACME | {"X-On-Behalf-Of": "alice"}
BOB = ACME | {"X-On-Behalf-Of": "bob"}
MALLORY = OTHER | {"X-On-Behalf-Of": "alice"}  # the same user name in another organisation
HERON = "The grey heron nests in tall trees near water, in colonies called heronries."


def settings_for(path: Path, upstream: FakeUpstream, **overrides: Any) -> Any:
    values = {
        "api_keys": ["root-key", "acme-key:acme", "other-key:other"],
        "embedder": "examples.plugins.hashing_embedder:HashingEmbedder",
        "embedder_options": {"dimension": 64},
        "similarity_threshold": -1.0,
    }
    return make_settings(path, upstream.url, **(values | overrides))


@pytest.fixture(params=["embedded", "postgres"])
def service(request: pytest.FixtureRequest, tmp_path: Path, upstream: FakeUpstream) -> Any:
    extra: dict[str, Any] = {}
    if request.param == "postgres":
        extra = {"vector_store": "postgres", "database_url": request.getfixturevalue("pg_dsn")}
    with (
        serve(create_app(settings_for(tmp_path / "data", upstream, **extra))) as url,
        httpx.Client(base_url=url, timeout=30) as http,
    ):
        for headers, doc in ((ACME, "heron-guide"), (OTHER, "other-heron")):
            added = http.post("/api/v1/documents/add", json={"documents": [HERON], "ids": [doc]}, headers=headers)
            assert added.status_code == 200, added.text
        yield http


def ask(http: httpx.Client, headers: dict[str, str], chat_id: str, question: str) -> None:
    body = {"messages": [{"role": "user", "content": question}], "stream": False, "chatId": chat_id}
    response = http.post("/api/v1/chat", json=body, headers=headers)
    assert response.status_code == 200, response.text


def rate(http: httpx.Client, headers: dict[str, str], chat_id: str, **body: Any) -> httpx.Response:
    return http.post(f"/api/v1/chats/{chat_id}/feedback", json=body, headers=headers)


def listed(http: httpx.Client, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    response = http.get("/api/v1/feedback", params=params, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["feedback"]  # type: ignore[no-any-return]


def test_a_rating_is_kept_with_its_answer_question_sources_and_settings(service: httpx.Client) -> None:
    chat = uuid.uuid4().hex
    ask(service, ALICE, chat, "Where does the heron nest?")
    ask(service, ALICE, chat, "And in what groups?")
    response = rate(service, ALICE, chat, rating="down", reason="incomplete", comment="No word on the season.")
    assert response.status_code == 200, response.text
    rated = response.json()
    assert rated["message_index"] == 3  # the last answer by default
    assert rated["question"] == "And in what groups?"
    assert rated["answer"] == "Hello, world!"
    assert (rated["user_id"], rated["org_id"], rated["rating"]) == ("alice", "acme", "down")
    assert (rated["reason"], rated["comment"]) == ("incomplete", "No word on the season.")
    details = rated["details"]
    assert [s["document_id"] for s in details["sources"]] == ["heron-guide"]  # never the other organisation's
    assert details["mode"] == "hybrid" and details["top_k"] == 5 and details["model"]
    assert details["retrieval_query"]

    # The first answer, by its index; then the last again, changed: one rating per answer, the latest wins.
    assert rate(service, ALICE, chat, rating="up", messageIndex=1).json()["question"] == "Where does the heron nest?"
    assert rate(service, ALICE, chat, rating="up").json()["comment"] is None
    stored = service.get(f"/api/v1/chats/{chat}", headers=ALICE).json()["messages"]
    assert [m["rating"] for m in stored] == [None, "up", None, "up"]
    ratings = listed(service, ACME)
    assert sorted((f["message_index"], f["rating"]) for f in ratings) == [(1, "up"), (3, "up")]


def test_no_one_else_sees_or_rates_a_users_feedback(service: httpx.Client) -> None:
    chat = uuid.uuid4().hex
    ask(service, ALICE, chat, "Where does the heron nest?")
    assert rate(service, ALICE, chat, rating="down", comment="secret remark").status_code == 200
    for stranger in (BOB, MALLORY, OTHER | {"X-On-Behalf-Of": "bob"}):
        response = rate(service, stranger, chat, rating="up")
        assert response.status_code == 404, response.text
        assert "secret remark" not in response.text
        assert service.get(f"/api/v1/chats/{chat}", headers=stranger).status_code == 404
    assert listed(service, OTHER) == []  # another organisation's admin: nothing of acme's
    assert listed(service, ROOT, orgId="other") == []
    for headers, params in ((OTHER, {"orgId": "acme"}), (ALICE, {}), (BOB, {"orgId": "acme"})):
        response = service.get("/api/v1/feedback", params=params, headers=headers)
        assert response.status_code == 403, response.text
        assert response.json()["error"]["type"] == "forbidden"
        assert "secret remark" not in response.text
    for headers in (ACME, ROOT):
        assert [f["comment"] for f in listed(service, headers)] == ["secret remark"]
    assert listed(service, ROOT, orgId="acme", rating="up") == []
    assert len(listed(service, ROOT, orgId="acme", rating="down")) == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"rating": "meh"}, "rating"),
        ({}, "rating"),
        ({"rating": 1}, "rating"),
        ({"rating": "up", "messageIndex": -1}, "messageIndex"),
        ({"rating": "up", "comment": "x" * 4001}, "comment"),
        ({"rating": "up", "reason": ""}, "reason"),
        ({"rating": "up", "stars": 5}, "stars"),
        ({"rating": "up", "messageIndex": 0}, "messageIndex"),  # the question, not an answer
        ({"rating": "up", "messageIndex": 2}, "messageIndex"),  # past the last message
    ],
)
def test_bad_ratings_are_422_naming_the_field(service: httpx.Client, body: dict[str, Any], field: str) -> None:
    chat = uuid.uuid4().hex
    ask(service, ALICE, chat, "Where does the heron nest?")
    response = rate(service, ALICE, chat, **body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] in ("validation_error", "invalid_request") and field in error["message"]
    assert listed(service, ACME) == []


def test_exports_and_a_deleted_chat_takes_its_feedback(service: httpx.Client) -> None:
    chat = uuid.uuid4().hex
    ask(service, ALICE, chat, "Where does the heron nest, exactly?")
    rate(service, ALICE, chat, rating="down", reason="wrong", comment='said "Hello", nothing more')
    response = service.get("/api/v1/feedback", headers=ACME | {"Accept": "text/csv"})
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == 1
    assert rows[0]["question"] == "Where does the heron nest, exactly?"
    assert (rows[0]["rating"], rows[0]["comment"], rows[0]["documents"]) == (
        "down", 'said "Hello", nothing more', "heron-guide",
    )  # fmt: skip
    questions = service.get("/api/v1/feedback", params={"format": "questions", "rating": "down"}, headers=ACME)
    lines = [json.loads(line) for line in questions.text.splitlines()]
    assert lines == [
        {
            "question": "Where does the heron nest, exactly?",
            "rating": "down",
            "rated_answer": "Hello, world!",
            "answer_documents": ["heron-guide"],
            "reason": "wrong",
            "comment": 'said "Hello", nothing more',
            "chat_id": chat,
        }
    ]
    assert listed(service, ACME, **{"from": "2000-01-01", "to": "2000-01-31"}) == []
    for params in ({"from": "yesterday"}, {"format": "xml"}, {"from": "2030-01-02", "to": "2030-01-01"}):
        bad = service.get("/api/v1/feedback", params=params, headers=ACME)
        assert bad.status_code == 422 and bad.json()["error"]["type"] == "invalid_request", params
    assert service.delete(f"/api/v1/chats/{chat}", headers=ALICE).status_code == 204
    assert listed(service, ACME) == []
    assert rate(service, ALICE, chat, rating="up").status_code == 404


async def test_an_older_chat_database_gains_the_details_column(tmp_path: Path) -> None:
    path = tmp_path / "chats.sqlite3"
    with sqlite3.connect(path) as db:  # the schema before answers kept their details
        db.executescript(
            "CREATE TABLE chats (chat_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, org_id TEXT, title TEXT NOT NULL "
            "DEFAULT '', created_at REAL NOT NULL, updated_at REAL NOT NULL);"
            "CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, chat_id TEXT NOT NULL REFERENCES chats "
            "(chat_id) ON DELETE CASCADE, role TEXT NOT NULL, content TEXT NOT NULL, created_at REAL NOT NULL);"
            "INSERT INTO chats VALUES ('c1', 'alice', NULL, 'old', 1, 1);"
            "INSERT INTO messages (chat_id, role, content, created_at) VALUES ('c1', 'user', 'old question', 1), "
            "('c1', 'assistant', 'old answer', 1);"
        )
    store = await ConversationStore.open(path)
    owner = ChatOwner("alice")
    await store.append("c1", owner, [Message("user", "new question"), Message("assistant", "new answer")])
    _, messages = await store.get("c1", owner)
    assert [m.content for m in messages] == ["old question", "old answer", "new question", "new answer"]
    rated = await store.rate("c1", owner, "down", message_index=1)
    assert (rated.question, rated.answer, rated.details) == ("old question", "old answer", {})

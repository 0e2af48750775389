from __future__ import annotations

from pathlib import Path

import pytest

from llm.types import Message
from rag.chats.sqlite import ChatForbidden, ChatNotFound, ChatOwner, ConversationStore
from rag.history import condense_by_rule, fit_history

TURN = [Message("user", "What's the weather?"), Message("assistant", "It's sunny outside.")]


async def test_chats_survive_reopening(tmp_path: Path) -> None:
    store = await ConversationStore.open(tmp_path / "chats.sqlite3")
    await store.append("01", ChatOwner("testuser", "1"), TURN, title="test1")
    reopened = await ConversationStore.open(tmp_path / "chats.sqlite3")
    chat, messages = await reopened.get("01", ChatOwner("testuser", "1"))
    assert (chat.title, chat.user_id, chat.org_id) == ("test1", "testuser", "1")
    assert [(m.role, m.content) for m in messages] == [
        ("user", "What's the weather?"),
        ("assistant", "It's sunny outside."),
    ]
    assert await reopened.history("01", ChatOwner("testuser")) == TURN


async def test_list_is_per_user_newest_first(tmp_path: Path) -> None:
    store = await ConversationStore.open(tmp_path / "c.sqlite3")
    await store.append("a", ChatOwner("u1"), TURN)
    await store.append("b", ChatOwner("u1"), TURN)
    await store.append("x", ChatOwner("u2"), TURN)
    await store.append("a", ChatOwner("u1"), TURN)  # a is now the most recent
    assert [c.chat_id for c in await store.list_chats(ChatOwner("u1"))] == ["a", "b"]
    assert [c.chat_id for c in await store.list_chats(ChatOwner("u2"))] == ["x"]
    assert (await store.list_chats(ChatOwner("u1")))[1].title == "What's the weather?"


async def test_other_users_cannot_read_write_or_delete(tmp_path: Path) -> None:
    store = await ConversationStore.open(tmp_path / "c.sqlite3")
    await store.append("secret", ChatOwner("alice", "org1"), TURN)
    with pytest.raises(ChatNotFound):
        await store.get("secret", ChatOwner("bob"))
    with pytest.raises(ChatNotFound):
        await store.get("secret", ChatOwner("alice", "org2"))
    with pytest.raises(ChatNotFound):
        await store.delete("secret", ChatOwner("bob"))
    with pytest.raises(ChatForbidden):
        await store.append("secret", ChatOwner("bob"), TURN)
    with pytest.raises(ChatForbidden):
        await store.history("secret", ChatOwner("bob"))
    _, messages = await store.get("secret", ChatOwner("alice"))
    assert len(messages) == 2


async def test_delete_removes_messages(tmp_path: Path) -> None:
    store = await ConversationStore.open(tmp_path / "c.sqlite3")
    await store.append("c", ChatOwner("u"), TURN)
    await store.delete("c", ChatOwner("u"))
    with pytest.raises(ChatNotFound):
        await store.get("c", ChatOwner("u"))
    assert await store.history("c", ChatOwner("u")) == []


def test_history_budget_drops_oldest_turns_first() -> None:
    system = Message("system", "Be brief.")
    turns = [Message("user" if i % 2 == 0 else "assistant", f"turn {i} " + "x" * 400) for i in range(10)]
    question = Message("user", "latest question")
    fitted = fit_history([system, *turns, question], budget_tokens=350)
    assert fitted[0] == system
    assert fitted[-1] == question
    kept = fitted[1:-1]
    assert kept == turns[-len(kept) :]
    assert 0 < len(kept) < len(turns)
    assert kept[0].role == "user"


def test_history_budget_keeps_the_question_even_when_alone_too_long() -> None:
    question = Message("user", "y" * 10_000)
    assert fit_history([Message("user", "old"), question], budget_tokens=100) == [question]


@pytest.mark.parametrize(
    ("messages", "query"),
    [
        ([Message("user", "What is the capital of France?")], "What is the capital of France?"),
        (
            [Message("user", "What is the weather in London?"), Message("assistant", "Rainy."),
             Message("user", "and what about Paris?")],
            "What is the weather in London? and what about Paris?",
        ),
        (
            [Message("user", "Who wrote Hamlet?"), Message("assistant", "Shakespeare."),
             Message("user", "Explain the main causes of the French revolution in detail please")],
            "Explain the main causes of the French revolution in detail please",
        ),
    ],
)  # fmt: skip
def test_follow_up_condensing(messages: list[Message], query: str) -> None:
    assert condense_by_rule(messages) == query

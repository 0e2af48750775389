"""Conversations kept in SQLite (WAL mode) under DATA_DIR: chats owned by a user (and an org), their messages, and
the users' ratings of the answers (rag/chats/feedback.py).

Only the question and the final answer of each turn are stored, never the reasoning; beside an answer, what produced
it (its sources' ids, the retrieval settings, the model). All SQL runs in worker threads
on short-lived connections, so that a slow disk never stalls the event loop and several workers can share the file.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import anyio

from llm.types import Message
from rag.chats.feedback import AnswerDetails, Feedback, Rating, answer_position
from rag.errors import RAGError

SCHEMA = """
CREATE TABLE IF NOT EXISTS chats (
    chat_id    TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    org_id     TEXT,
    title      TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS chats_by_user ON chats (user_id, updated_at);
CREATE TABLE IF NOT EXISTS messages (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    chat_id    TEXT NOT NULL REFERENCES chats (chat_id) ON DELETE CASCADE,
    role       TEXT NOT NULL,
    content    TEXT NOT NULL,
    created_at REAL NOT NULL,
    details    TEXT
);
CREATE INDEX IF NOT EXISTS messages_by_chat ON messages (chat_id, id);
CREATE TABLE IF NOT EXISTS feedback (
    message_id INTEGER PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
    chat_id    TEXT NOT NULL,
    rating     TEXT NOT NULL,
    reason     TEXT,
    comment    TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_by_time ON feedback (updated_at);
"""
# Chats stored before answers kept their details: the column is added in place (SQLite has no ADD COLUMN IF NOT
# EXISTS, so the table's columns are read first).
MESSAGE_DETAILS = "ALTER TABLE messages ADD COLUMN details TEXT"
_FEEDBACK_COLUMNS = """f.chat_id,
    (SELECT COUNT(*) FROM messages p WHERE p.chat_id = f.chat_id AND p.id < f.message_id),
    c.user_id, c.org_id, f.rating, f.reason, f.comment,
    COALESCE((SELECT q.content FROM messages q WHERE q.chat_id = f.chat_id AND q.id < f.message_id AND q.role = 'user'
              ORDER BY q.id DESC LIMIT 1), ''),
    m.content, m.details, f.created_at, f.updated_at
    FROM feedback f JOIN messages m ON m.id = f.message_id JOIN chats c ON c.chat_id = f.chat_id"""


class ChatNotFound(RAGError):
    """No such chat for this user (another user's chat looks the same: its existence is not revealed)."""

    error_type = "not_found"


class ChatForbidden(RAGError):
    """The chat id is taken by another user or organisation."""

    error_type = "forbidden"


@dataclass(frozen=True, slots=True)
class ChatOwner:
    user_id: str
    org_id: str | None = None


@dataclass(frozen=True, slots=True)
class ChatSummary:
    chat_id: str
    user_id: str
    org_id: str | None
    title: str
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class StoredMessage:
    role: str
    content: str
    created_at: float
    rating: str | None = None  # the owner's rating of an answer, if any


class Conversations(Protocol):
    """Where chats live: SQLite under DATA_DIR (`ConversationStore`), or PostgreSQL when DATABASE_URL is set
    (`rag.chats.postgres.PgConversationStore`, shared by replicas). Both answer the same questions the same way."""

    async def get(self, chat_id: str, owner: ChatOwner) -> tuple[ChatSummary, list[StoredMessage]]: ...

    async def history(self, chat_id: str, owner: ChatOwner) -> list[Message]: ...

    async def list_chats(self, owner: ChatOwner, limit: int = 50, offset: int = 0) -> list[ChatSummary]: ...

    async def append(
        self,
        chat_id: str,
        owner: ChatOwner,
        messages: list[Message],
        title: str | None = None,
        details: AnswerDetails | None = None,
    ) -> None:
        """Add a turn; `details` are kept beside its answer (the assistant message)."""
        ...

    async def delete(self, chat_id: str, owner: ChatOwner) -> None: ...

    async def chats_of_org(self, org_id: str) -> list[ChatSummary]:
        """Every chat of an organisation, whoever's (an organisation's purge)."""
        ...

    async def rate(
        self,
        chat_id: str,
        owner: ChatOwner,
        rating: Rating,
        reason: str | None = None,
        comment: str | None = None,
        message_index: int | None = None,
    ) -> Feedback:
        """Rate an answer of the owner's chat (the last by default); rating it again replaces the rating."""
        ...

    async def feedback(
        self,
        since: float,
        until: float,
        org_id: str | None = None,
        user_id: str | None = None,
        rating: Rating | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Feedback]:
        """Ratings given in [since, until), newest first; an organisation's (or a user's) when named, else all."""
        ...

    async def aclose(self) -> None: ...


class ConversationStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    async def open(cls, path: Path) -> ConversationStore:
        store = cls(path)
        await anyio.to_thread.run_sync(store._init)
        return store

    def _init(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            columns = {row[1] for row in db.execute("PRAGMA table_info(messages)")}
            if columns and "details" not in columns:
                db.execute(MESSAGE_DETAILS)
            db.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30)
        try:
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA synchronous=FULL")  # an acknowledged turn survives a power cut
            db.execute("PRAGMA secure_delete=ON")  # deleted text is zeroed, not left in free pages (rag/purge.py)
            with db:  # one transaction: commit on success, roll back on error
                yield db
        finally:
            db.close()

    # --- reading ---------------------------------------------------------------------------------

    def _owned(self, db: sqlite3.Connection, chat_id: str, owner: ChatOwner) -> ChatSummary:
        row = db.execute(
            "SELECT chat_id, user_id, org_id, title, created_at, updated_at FROM chats WHERE chat_id = ?", (chat_id,)
        ).fetchone()
        if row is None or row[1] != owner.user_id or (owner.org_id is not None and row[2] != owner.org_id):
            raise ChatNotFound(f"no chat {chat_id!r} for this user")
        return ChatSummary(*row)

    def _get(self, chat_id: str, owner: ChatOwner) -> tuple[ChatSummary, list[StoredMessage]]:
        with self._connect() as db:
            chat = self._owned(db, chat_id, owner)
            rows = db.execute(
                "SELECT m.role, m.content, m.created_at, f.rating FROM messages m "
                "LEFT JOIN feedback f ON f.message_id = m.id WHERE m.chat_id = ? ORDER BY m.id",
                (chat_id,),
            ).fetchall()
        return chat, [StoredMessage(*row) for row in rows]

    async def get(self, chat_id: str, owner: ChatOwner) -> tuple[ChatSummary, list[StoredMessage]]:
        return await anyio.to_thread.run_sync(self._get, chat_id, owner)

    async def history(self, chat_id: str, owner: ChatOwner) -> list[Message]:
        """The stored turns of a chat the owner may use; empty for a chat that does not exist yet."""
        try:
            _, messages = await self.get(chat_id, owner)
        except ChatNotFound:
            await anyio.to_thread.run_sync(self._check_free, chat_id, owner)
            return []
        return [Message(m.role, m.content) for m in messages if m.role in ("user", "assistant")]  # type: ignore[arg-type]

    def _check_free(self, chat_id: str, owner: ChatOwner) -> None:
        with self._connect() as db:
            if db.execute("SELECT 1 FROM chats WHERE chat_id = ?", (chat_id,)).fetchone():
                raise ChatForbidden(f"chat {chat_id!r} belongs to another user")

    def _list(self, owner: ChatOwner, limit: int, offset: int) -> list[ChatSummary]:
        query = "SELECT chat_id, user_id, org_id, title, created_at, updated_at FROM chats WHERE user_id = ?"
        params: list[object] = [owner.user_id]
        if owner.org_id is not None:
            query += " AND org_id = ?"
            params.append(owner.org_id)
        query += " ORDER BY updated_at DESC LIMIT ? OFFSET ?"
        with self._connect() as db:
            return [ChatSummary(*row) for row in db.execute(query, [*params, limit, offset]).fetchall()]

    async def list_chats(self, owner: ChatOwner, limit: int = 50, offset: int = 0) -> list[ChatSummary]:
        return await anyio.to_thread.run_sync(self._list, owner, limit, offset)

    # --- writing ---------------------------------------------------------------------------------

    def _append(
        self, chat_id: str, owner: ChatOwner, title: str | None, messages: list[Message], details: str | None
    ) -> None:
        now = time.time()
        with self._connect() as db:
            row = db.execute("SELECT user_id, org_id FROM chats WHERE chat_id = ?", (chat_id,)).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO chats (chat_id, user_id, org_id, title, created_at, updated_at) VALUES (?,?,?,?,?,?)",
                    (chat_id, owner.user_id, owner.org_id, title or title_from(messages), now, now),
                )
            elif row[0] != owner.user_id or (owner.org_id is not None and row[1] != owner.org_id):
                raise ChatForbidden(f"chat {chat_id!r} belongs to another user")
            else:
                db.execute(
                    "UPDATE chats SET updated_at = ?, title = COALESCE(NULLIF(?, ''), title) WHERE chat_id = ?",
                    (now, title or "", chat_id),
                )
            db.executemany(
                "INSERT INTO messages (chat_id, role, content, created_at, details) VALUES (?,?,?,?,?)",
                [(chat_id, m.role, m.content, now, details if m.role == "assistant" else None) for m in messages],
            )

    async def append(
        self,
        chat_id: str,
        owner: ChatOwner,
        messages: list[Message],
        title: str | None = None,
        details: AnswerDetails | None = None,
    ) -> None:
        """Add a turn to a chat, creating the chat for `owner` when it is new."""
        text = details.to_json() if details is not None else None
        await anyio.to_thread.run_sync(self._append, chat_id, owner, title, messages, text)

    def _delete(self, chat_id: str, owner: ChatOwner) -> None:
        with self._connect() as db:
            self._owned(db, chat_id, owner)
            db.execute("DELETE FROM chats WHERE chat_id = ?", (chat_id,))

    async def delete(self, chat_id: str, owner: ChatOwner) -> None:
        await anyio.to_thread.run_sync(self._delete, chat_id, owner)

    def _chats_of_org(self, org_id: str) -> list[ChatSummary]:
        with self._connect() as db:
            return [
                ChatSummary(*row)
                for row in db.execute(
                    "SELECT chat_id, user_id, org_id, title, created_at, updated_at FROM chats WHERE org_id = ?",
                    (org_id,),
                ).fetchall()
            ]

    async def chats_of_org(self, org_id: str) -> list[ChatSummary]:
        return await anyio.to_thread.run_sync(self._chats_of_org, org_id)

    # --- feedback --------------------------------------------------------------------------------

    def _rate(
        self,
        chat_id: str,
        owner: ChatOwner,
        rating: str,
        reason: str | None,
        comment: str | None,
        message_index: int | None,
    ) -> Feedback:
        now = time.time()
        with self._connect() as db:
            self._owned(db, chat_id, owner)
            messages = db.execute("SELECT id, role FROM messages WHERE chat_id = ? ORDER BY id", (chat_id,)).fetchall()
            message_id = messages[answer_position([role for _, role in messages], message_index)][0]
            db.execute(
                "INSERT INTO feedback (message_id, chat_id, rating, reason, comment, created_at, updated_at) "
                "VALUES (?,?,?,?,?,?,?) ON CONFLICT (message_id) DO UPDATE SET rating = excluded.rating, "
                "reason = excluded.reason, comment = excluded.comment, updated_at = excluded.updated_at",
                (message_id, chat_id, rating, reason, comment, now, now),
            )
            row = db.execute(f"SELECT {_FEEDBACK_COLUMNS} WHERE f.message_id = ?", (message_id,)).fetchone()
        return Feedback.from_row(row)

    async def rate(
        self,
        chat_id: str,
        owner: ChatOwner,
        rating: Rating,
        reason: str | None = None,
        comment: str | None = None,
        message_index: int | None = None,
    ) -> Feedback:
        return await anyio.to_thread.run_sync(self._rate, chat_id, owner, rating, reason, comment, message_index)

    def _feedback(
        self,
        since: float,
        until: float,
        org_id: str | None,
        user_id: str | None,
        rating: str | None,
        limit: int,
        offset: int,
    ) -> list[Feedback]:
        query = f"SELECT {_FEEDBACK_COLUMNS} WHERE f.updated_at >= ? AND f.updated_at < ?"
        params: list[object] = [since, until]
        for column, value in (("c.org_id", org_id), ("c.user_id", user_id), ("f.rating", rating)):
            if value is not None:
                query += f" AND {column} = ?"
                params.append(value)
        query += " ORDER BY f.updated_at DESC, f.message_id DESC LIMIT ? OFFSET ?"
        with self._connect() as db:
            return [Feedback.from_row(row) for row in db.execute(query, [*params, limit, offset]).fetchall()]

    async def feedback(
        self,
        since: float,
        until: float,
        org_id: str | None = None,
        user_id: str | None = None,
        rating: Rating | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Feedback]:
        return await anyio.to_thread.run_sync(self._feedback, since, until, org_id, user_id, rating, limit, offset)

    async def aclose(self) -> None:
        """Nothing to close: connections live only as long as each call."""


def title_from(messages: list[Message]) -> str:
    first = next((m.content for m in messages if m.role == "user"), "")
    return first[:80]

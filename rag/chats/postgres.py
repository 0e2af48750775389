"""Conversations in PostgreSQL, for replicas that share a database (DATABASE_URL set): a chat started on one
replica continues on any other. The same tables, rules and answers as the SQLite `ConversationStore`: only the
question and the final answer of each turn are stored (with what produced the answer), and the users' ratings of
answers; another user's chat looks like no chat at all.
"""

from __future__ import annotations

import time
from contextlib import AbstractAsyncContextManager

import asyncpg

from llm.types import Message
from rag.chats.feedback import AnswerDetails, Feedback, Rating, answer_position
from rag.chats.sqlite import (
    ChatForbidden,
    ChatNotFound,
    ChatOwner,
    ChatSummary,
    StoredMessage,
    title_from,
)
from rag.stores.pg_pool import pooled_connection

SCHEMA_LOCK = 0x52414702  # pg_advisory_xact_lock key for this schema
SCHEMA = """
CREATE TABLE IF NOT EXISTS rag_chats (
    chat_id text PRIMARY KEY, user_id text NOT NULL, org_id text, title text NOT NULL DEFAULT '',
    created_at double precision NOT NULL, updated_at double precision NOT NULL);
CREATE INDEX IF NOT EXISTS rag_chats_by_user ON rag_chats (user_id, updated_at);
CREATE TABLE IF NOT EXISTS rag_messages (
    id bigserial PRIMARY KEY, chat_id text NOT NULL REFERENCES rag_chats (chat_id) ON DELETE CASCADE,
    role text NOT NULL, content text NOT NULL, created_at double precision NOT NULL);
CREATE INDEX IF NOT EXISTS rag_messages_by_chat ON rag_messages (chat_id, id);
ALTER TABLE rag_messages ADD COLUMN IF NOT EXISTS details text;
CREATE TABLE IF NOT EXISTS rag_feedback (
    message_id bigint PRIMARY KEY REFERENCES rag_messages (id) ON DELETE CASCADE, chat_id text NOT NULL,
    rating text NOT NULL, reason text, comment text,
    created_at double precision NOT NULL, updated_at double precision NOT NULL);
CREATE INDEX IF NOT EXISTS rag_feedback_by_time ON rag_feedback (updated_at);
"""
_FEEDBACK_COLUMNS = """f.chat_id,
    (SELECT count(*) FROM rag_messages p WHERE p.chat_id = f.chat_id AND p.id < f.message_id)::int,
    c.user_id, c.org_id, f.rating, f.reason, f.comment,
    COALESCE((SELECT q.content FROM rag_messages q WHERE q.chat_id = f.chat_id AND q.id < f.message_id
              AND q.role = 'user' ORDER BY q.id DESC LIMIT 1), ''),
    m.content, m.details, f.created_at, f.updated_at
    FROM rag_feedback f JOIN rag_messages m ON m.id = f.message_id JOIN rag_chats c ON c.chat_id = f.chat_id"""
_CHAT_COLUMNS = "chat_id, user_id, org_id, title, created_at, updated_at"


def _owns(row: asyncpg.Record | None, owner: ChatOwner) -> bool:
    return (
        row is not None and row["user_id"] == owner.user_id and (owner.org_id is None or row["org_id"] == owner.org_id)
    )


class PgConversationStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, dsn: str, pool_size: int = 5) -> PgConversationStore:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=pool_size)
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
            await conn.execute(SCHEMA)
        return cls(pool)

    def _connection(self) -> AbstractAsyncContextManager[asyncpg.Connection]:
        return pooled_connection(self._pool)

    async def get(self, chat_id: str, owner: ChatOwner) -> tuple[ChatSummary, list[StoredMessage]]:
        async with self._connection() as conn:
            row = await conn.fetchrow(f"SELECT {_CHAT_COLUMNS} FROM rag_chats WHERE chat_id = $1", chat_id)
            if not _owns(row, owner):
                raise ChatNotFound(f"no chat {chat_id!r} for this user")
            messages = await conn.fetch(
                "SELECT m.role, m.content, m.created_at, f.rating FROM rag_messages m "
                "LEFT JOIN rag_feedback f ON f.message_id = m.id WHERE m.chat_id = $1 ORDER BY m.id",
                chat_id,
            )
        return ChatSummary(*row), [StoredMessage(*m) for m in messages]  # type: ignore[misc]

    async def history(self, chat_id: str, owner: ChatOwner) -> list[Message]:
        """The stored turns of a chat the owner may use; empty for a chat that does not exist yet."""
        try:
            _, messages = await self.get(chat_id, owner)
        except ChatNotFound:
            async with self._connection() as conn:
                if await conn.fetchval("SELECT 1 FROM rag_chats WHERE chat_id = $1", chat_id):
                    raise ChatForbidden(f"chat {chat_id!r} belongs to another user") from None
            return []
        return [Message(m.role, m.content) for m in messages if m.role in ("user", "assistant")]  # type: ignore[arg-type]

    async def list_chats(self, owner: ChatOwner, limit: int = 50, offset: int = 0) -> list[ChatSummary]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                f"SELECT {_CHAT_COLUMNS} FROM rag_chats WHERE user_id = $1 AND ($2::text IS NULL OR org_id = $2) "
                "ORDER BY updated_at DESC LIMIT $3 OFFSET $4",
                owner.user_id,
                owner.org_id,
                limit,
                min(offset, 2**62),
            )
        return [ChatSummary(*row) for row in rows]

    async def append(
        self,
        chat_id: str,
        owner: ChatOwner,
        messages: list[Message],
        title: str | None = None,
        details: AnswerDetails | None = None,
    ) -> None:
        """Add a turn to a chat, creating the chat for `owner` when it is new (one transaction)."""
        now = time.time()
        async with self._connection() as conn, conn.transaction():
            created = await conn.fetchval(
                f"INSERT INTO rag_chats ({_CHAT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $5) "
                "ON CONFLICT (chat_id) DO NOTHING RETURNING chat_id",
                chat_id,
                owner.user_id,
                owner.org_id,
                title or title_from(messages),
                now,
            )
            if created is None:
                row = await conn.fetchrow(
                    f"SELECT {_CHAT_COLUMNS} FROM rag_chats WHERE chat_id = $1 FOR UPDATE", chat_id
                )
                if not _owns(row, owner):
                    raise ChatForbidden(f"chat {chat_id!r} belongs to another user")
                await conn.execute(
                    "UPDATE rag_chats SET updated_at = $2, title = COALESCE(NULLIF($3, ''), title) WHERE chat_id = $1",
                    chat_id,
                    now,
                    title or "",
                )
            text = details.to_json() if details is not None else None
            await conn.executemany(
                "INSERT INTO rag_messages (chat_id, role, content, created_at, details) VALUES ($1, $2, $3, $4, $5)",
                [(chat_id, m.role, m.content, now, text if m.role == "assistant" else None) for m in messages],
            )

    async def delete(self, chat_id: str, owner: ChatOwner) -> None:
        async with self._connection() as conn, conn.transaction():
            row = await conn.fetchrow(f"SELECT {_CHAT_COLUMNS} FROM rag_chats WHERE chat_id = $1", chat_id)
            if not _owns(row, owner):
                raise ChatNotFound(f"no chat {chat_id!r} for this user")
            await conn.execute("DELETE FROM rag_chats WHERE chat_id = $1", chat_id)

    async def chats_of_org(self, org_id: str) -> list[ChatSummary]:
        async with self._connection() as conn:
            rows = await conn.fetch(f"SELECT {_CHAT_COLUMNS} FROM rag_chats WHERE org_id = $1", org_id)
        return [ChatSummary(*row) for row in rows]  # type: ignore[misc]

    async def rate(
        self,
        chat_id: str,
        owner: ChatOwner,
        rating: Rating,
        reason: str | None = None,
        comment: str | None = None,
        message_index: int | None = None,
    ) -> Feedback:
        now = time.time()
        async with self._connection() as conn, conn.transaction():
            row = await conn.fetchrow(f"SELECT {_CHAT_COLUMNS} FROM rag_chats WHERE chat_id = $1", chat_id)
            if not _owns(row, owner):
                raise ChatNotFound(f"no chat {chat_id!r} for this user")
            messages = await conn.fetch("SELECT id, role FROM rag_messages WHERE chat_id = $1 ORDER BY id", chat_id)
            message_id = messages[answer_position([m["role"] for m in messages], message_index)]["id"]
            await conn.execute(
                "INSERT INTO rag_feedback (message_id, chat_id, rating, reason, comment, created_at, updated_at) "
                "VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT (message_id) DO UPDATE SET rating = excluded.rating, "
                "reason = excluded.reason, comment = excluded.comment, updated_at = excluded.updated_at",
                message_id,
                chat_id,
                rating,
                reason,
                comment,
                now,
            )
            stored = await conn.fetchrow(f"SELECT {_FEEDBACK_COLUMNS} WHERE f.message_id = $1", message_id)
        return Feedback.from_row(tuple(stored))

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
        async with self._connection() as conn:
            rows = await conn.fetch(
                f"SELECT {_FEEDBACK_COLUMNS} WHERE f.updated_at >= $1 AND f.updated_at < $2 "
                "AND ($3::text IS NULL OR c.org_id = $3) AND ($4::text IS NULL OR c.user_id = $4) "
                "AND ($5::text IS NULL OR f.rating = $5) ORDER BY f.updated_at DESC, f.message_id DESC "
                "LIMIT $6 OFFSET $7",
                since,
                until,
                org_id,
                user_id,
                rating,
                limit,
                min(offset, 2**62),
            )
        return [Feedback.from_row(tuple(row)) for row in rows]

    async def aclose(self) -> None:
        await self._pool.close()

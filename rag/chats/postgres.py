"""Conversations in PostgreSQL, for replicas that share a database (DATABASE_URL set): a chat started on one
replica continues on any other. The same tables, rules and answers as the SQLite `ConversationStore`: only the
question and the final answer of each turn are stored; another user's chat looks like no chat at all.
"""

from __future__ import annotations

import time
from contextlib import AbstractAsyncContextManager

import asyncpg

from llm.types import Message
from rag.chats.sqlite import ChatForbidden, ChatNotFound, ChatOwner, ChatSummary, StoredMessage, title_from
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
"""
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
                "SELECT role, content, created_at FROM rag_messages WHERE chat_id = $1 ORDER BY id", chat_id
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

    async def append(self, chat_id: str, owner: ChatOwner, messages: list[Message], title: str | None = None) -> None:
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
            await conn.executemany(
                "INSERT INTO rag_messages (chat_id, role, content, created_at) VALUES ($1, $2, $3, $4)",
                [(chat_id, m.role, m.content, now) for m in messages],
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

    async def aclose(self) -> None:
        await self._pool.close()

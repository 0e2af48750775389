"""Usage rows in the database (`usage.sqlite3` in DATA_DIR, or PostgreSQL): one row per day, organisation, user, key,
model and kind, whose counts each batch adds to; and the per-organisation limits an admin set.

A row's key parts are '' where there is none (an open service has no organisation): SQL's NULL would make every
batch a new row instead of adding to one.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any, Literal

from config import Settings
from rag.database import Database, open_database

Kind = Literal["answer", "embedding", "upload"]
SCHEMA = [
    """CREATE TABLE IF NOT EXISTS rag_usage (
        day text NOT NULL, org_id text NOT NULL, user_id text NOT NULL, key_id text NOT NULL, model text NOT NULL,
        kind text NOT NULL, requests bigint NOT NULL DEFAULT 0, prompt_tokens bigint NOT NULL DEFAULT 0,
        completion_tokens bigint NOT NULL DEFAULT 0, estimated bigint NOT NULL DEFAULT 0,
        chunks bigint NOT NULL DEFAULT 0, embedded_tokens bigint NOT NULL DEFAULT 0, bytes bigint NOT NULL DEFAULT 0,
        PRIMARY KEY (day, org_id, user_id, key_id, model, kind))""",
    """CREATE TABLE IF NOT EXISTS rag_quota_limits (
        org_id text PRIMARY KEY, tokens_per_day bigint, tokens_per_month bigint, user_tokens_per_day bigint,
        user_tokens_per_month bigint, upload_bytes_per_day bigint, chunks bigint,
        updated_at double precision NOT NULL)""",
]
COUNTS = ("requests", "prompt_tokens", "completion_tokens", "estimated", "chunks", "embedded_tokens", "bytes")
GROUPS = {"user": "user_id", "key": "key_id", "model": "model", "day": "day", "org": "org_id", "kind": "kind"}


@dataclass(frozen=True, slots=True)
class RowKey:
    day: str  # YYYY-MM-DD, UTC
    org_id: str
    user_id: str
    key_id: str
    model: str
    kind: Kind


@dataclass(frozen=True, slots=True)
class Limits:
    """An organisation's limits; None: none."""

    tokens_per_day: int | None = None
    tokens_per_month: int | None = None
    user_tokens_per_day: int | None = None
    user_tokens_per_month: int | None = None
    upload_bytes_per_day: int | None = None
    chunks: int | None = None  # chunks stored, at any moment

    def over(self, other: Limits) -> Limits:
        """These limits, with `other`'s where these have none."""
        return Limits(*(getattr(self, f.name) if getattr(self, f.name) is not None else getattr(other, f.name)
                        for f in fields(Limits)))  # fmt: skip

    def as_dict(self) -> dict[str, int | None]:
        return {f.name: getattr(self, f.name) for f in fields(Limits)}


LIMIT_NAMES = tuple(f.name for f in fields(Limits))


class UsageLedger:
    def __init__(self, db: Database) -> None:
        self.db = db

    @classmethod
    async def open(cls, settings: Settings) -> UsageLedger:
        return cls(await open_database(settings, "usage.sqlite3", SCHEMA))

    async def aclose(self) -> None:
        await self.db.aclose()

    async def add(self, rows: Iterable[tuple[RowKey, dict[str, int]]]) -> None:
        """Add one batch's counts, in one transaction."""
        columns = ", ".join(COUNTS)
        added = ", ".join(f"{c} = rag_usage.{c} + excluded.{c}" for c in COUNTS)
        sql = (
            f"INSERT INTO rag_usage (day, org_id, user_id, key_id, model, kind, {columns}) VALUES "
            f"($1, $2, $3, $4, $5, $6, {', '.join(f'${n}' for n in range(7, 7 + len(COUNTS)))}) "
            f"ON CONFLICT (day, org_id, user_id, key_id, model, kind) DO UPDATE SET {added}"
        )
        values = [
            (key.day, key.org_id, key.user_id, key.key_id, key.model, key.kind, *(counts.get(c, 0) for c in COUNTS))
            for key, counts in rows
        ]
        if values:
            async with self.db.transaction() as tx:
                await tx.executemany(sql, values)

    async def spent_since(self, first_day: str) -> list[tuple[str, str, str, int, int]]:
        """Per day, organisation and user since `first_day`: (day, org, user, tokens, bytes)."""
        rows = await self.db.fetch(
            "SELECT day, org_id, user_id, sum(prompt_tokens + completion_tokens), sum(bytes) FROM rag_usage "
            "WHERE day >= $1 GROUP BY day, org_id, user_id",
            first_day,
        )
        return [(day, org, user, int(tokens or 0), int(size or 0)) for day, org, user, tokens, size in rows]

    async def totals(
        self, first_day: str, last_day: str, org_id: str | None, user_id: str | None, group_by: list[str]
    ) -> list[dict[str, Any]]:
        """Summed counts over [first_day, last_day], of one organisation (None: all) and user (None: all), by the
        `group_by` columns (of GROUPS)."""
        columns = [GROUPS[name] for name in group_by]
        where, args = ["day >= $1", "day <= $2"], [first_day, last_day]
        for column, value in (("org_id", org_id), ("user_id", user_id)):
            if value is not None:
                args.append(value)
                where.append(f"{column} = ${len(args)}")
        selected = ", ".join([*columns, *(f"sum({c})" for c in COUNTS)])
        sql = f"SELECT {selected} FROM rag_usage WHERE {' AND '.join(where)}"
        if columns:
            sql += f" GROUP BY {', '.join(columns)} ORDER BY {', '.join(columns)}"
        rows = await self.db.fetch(sql, *args)
        names = [*group_by, *COUNTS]
        return [
            {name: (int(value or 0) if name in COUNTS else value) for name, value in zip(names, row, strict=True)}
            for row in rows
            if columns or any(row)
        ]

    async def limits(self) -> dict[str, Limits]:
        rows = await self.db.fetch(f"SELECT org_id, {', '.join(LIMIT_NAMES)} FROM rag_quota_limits")
        return {row[0]: Limits(*(None if v is None else int(v) for v in row[1:])) for row in rows}

    async def set_limits(self, org_id: str, limits: Limits) -> None:
        names = ", ".join(LIMIT_NAMES)
        placeholders = ", ".join(f"${n}" for n in range(2, 2 + len(LIMIT_NAMES)))
        updates = ", ".join(f"{name} = excluded.{name}" for name in LIMIT_NAMES)
        await self.db.execute(
            f"INSERT INTO rag_quota_limits (org_id, {names}, updated_at) VALUES ($1, {placeholders}, "
            f"${2 + len(LIMIT_NAMES)}) ON CONFLICT (org_id) DO UPDATE SET {updates}, updated_at = excluded.updated_at",
            org_id,
            *(getattr(limits, name) for name in LIMIT_NAMES),
            time.time(),
        )

    async def knows_org(self, org_id: str) -> bool:
        return bool(await self.db.fetch("SELECT 1 FROM rag_usage WHERE org_id = $1 LIMIT 1", org_id))

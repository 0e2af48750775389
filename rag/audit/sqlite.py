"""The audit log in SQLite (`audit.sqlite3` under DATA_DIR): one table, appended to, each write durable."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import anyio

from rag.audit import AuditEntry

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL,
    org_id TEXT, actor_kind TEXT NOT NULL, actor_user TEXT, details TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_by_org ON audit (org_id, at);
"""
_COLUMNS = "at, action, target, org_id, actor_kind, actor_user, details"


class SqliteAuditLog:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def _record(self, values: tuple[Any, ...]) -> None:
        with self._lock:
            self._db.execute(f"INSERT INTO audit ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", values)

    async def record(
        self,
        action: str,
        target: str,
        org_id: str | None,
        actor_kind: str,
        actor_user: str | None,
        details: dict[str, Any] | None = None,
    ) -> None:
        values = (time.time(), action, target, org_id, actor_kind, actor_user, json.dumps(details or {}))
        await anyio.to_thread.run_sync(self._record, values)

    def _entries(self, org_id: str | None, limit: int, before: float | None) -> list[AuditEntry]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM audit WHERE (? IS NULL OR org_id = ?) AND (? IS NULL OR at < ?) "
                "ORDER BY at DESC, id DESC LIMIT ?",
                (org_id, org_id, before, before, limit),
            ).fetchall()
        return [AuditEntry(row[0], row[1], row[2], row[3], row[4], row[5], json.loads(row[6])) for row in rows]

    async def entries(self, org_id: str | None, limit: int, before: float | None = None) -> list[AuditEntry]:
        return await anyio.to_thread.run_sync(self._entries, org_id, limit, before)

    def _forget_org(self, org_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM audit WHERE org_id = ? AND action <> 'org.purge'", (org_id,))

    async def forget_org(self, org_id: str) -> None:
        await anyio.to_thread.run_sync(self._forget_org, org_id)

    async def aclose(self) -> None:
        self._db.close()

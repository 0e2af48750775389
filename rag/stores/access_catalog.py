"""Access lists in the embedded store's catalog: the tables, their writes (inside the catalog's transactions) and
the reads a search, a list and a fetch make.

    access_lists   one row per restricted document: its organisation and its list (as JSON, for display)
    access_grants  (document, grantee) pairs: `u:<user>` and `g:<group>` (see `rag/access.py`)
    document_adders  the user who added each document, when a user did: what a user's purge deletes

A document without a row is readable by its whole organisation. Every write that changes which chunks a reader may
read moves `access_generation` in the catalog's meta table (and the store's generation, so other processes notice);
a search keys its cache of forbidden chunk keys by it, so a change holds from the next search in every process.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable

import numpy as np

from rag.access import AccessList, Reader
from rag.stores.base import AccessByDocument
from rag.types import Chunk, tenant_of

SCHEMA = """
CREATE TABLE IF NOT EXISTS access_lists (
    document_id TEXT PRIMARY KEY, org TEXT, users TEXT NOT NULL, groups TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS access_lists_by_org ON access_lists (org);
CREATE TABLE IF NOT EXISTS access_grants (
    document_id TEXT NOT NULL, grantee TEXT NOT NULL, PRIMARY KEY (document_id, grantee)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS access_grants_by_grantee ON access_grants (grantee, document_id);
CREATE TABLE IF NOT EXISTS document_adders (document_id TEXT PRIMARY KEY, user_id TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS document_adders_by_user ON document_adders (user_id);
"""
GENERATION = "access_generation"


def generation(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (GENERATION,)).fetchone()
    return 0 if row is None else int(row[0])


def bump_generation(conn: sqlite3.Connection) -> None:
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, '1') "
        "ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1",
        (GENERATION,),
    )


def lists_of(conn: sqlite3.Connection, document_ids: Iterable[str]) -> dict[str, AccessList]:
    """The access lists of those documents that have one (a query per 500 ids, not one per document)."""
    ids = list(document_ids)
    lists: dict[str, AccessList] = {}
    for start in range(0, len(ids), 500):
        part = ids[start : start + 500]
        rows = conn.execute(
            f"SELECT document_id, users, groups FROM access_lists WHERE document_id IN ({','.join('?' * len(part))})",
            part,
        )
        for doc_id, users, groups in rows:
            lists[doc_id] = AccessList(tuple(json.loads(users)), tuple(json.loads(groups)))
    return lists


def may_read(conn: sqlite3.Connection, document_id: str, reader: Reader | None) -> bool:
    """Whether `reader` may read the document (true for a document without a list, and for no reader)."""
    if reader is None:
        return True
    if conn.execute("SELECT 1 FROM access_lists WHERE document_id = ?", (document_id,)).fetchone() is None:
        return True
    marks = ",".join("?" * len(reader.grantees))
    return (
        conn.execute(
            f"SELECT 1 FROM access_grants WHERE document_id = ? AND grantee IN ({marks}) LIMIT 1",
            (document_id, *reader.grantees),
        ).fetchone()
        is not None
    )


def set_adder(conn: sqlite3.Connection, document_ids: list[str], user_id: str | None) -> None:
    """Record who added (or last replaced) these documents."""
    conn.executemany("DELETE FROM document_adders WHERE document_id = ?", ((doc,) for doc in document_ids))
    if user_id is not None:
        conn.executemany(
            "INSERT INTO document_adders (document_id, user_id) VALUES (?, ?)", ((doc, user_id) for doc in document_ids)
        )


def remove(conn: sqlite3.Connection, document_ids: Iterable[str]) -> bool:
    """Drop the lists of these documents; True when one had a list."""
    ids = [(doc_id,) for doc_id in document_ids]
    before = conn.total_changes
    conn.executemany("DELETE FROM access_lists WHERE document_id = ?", ids)
    had = conn.total_changes > before
    if had:
        conn.executemany("DELETE FROM access_grants WHERE document_id = ?", ids)
    return had


def put(conn: sqlite3.Connection, document_id: str, org: str | None, access: AccessList | None) -> None:
    """Set one document's list (None: no list), replacing the one it had."""
    remove(conn, [document_id])
    if access is not None:
        insert(conn, document_id, org, access)


def insert(conn: sqlite3.Connection, document_id: str, org: str | None, access: AccessList) -> None:
    """Give a document without a list its list."""
    conn.execute(
        "INSERT INTO access_lists (document_id, org, users, groups) VALUES (?, ?, ?, ?)",
        (document_id, org, json.dumps(list(access.users)), json.dumps(list(access.groups))),
    )
    conn.executemany(
        "INSERT INTO access_grants (document_id, grantee) VALUES (?, ?)",
        ((document_id, grantee) for grantee in access.grantees),
    )


def reader_condition(reader: Reader | None, document_column: str) -> tuple[str, list[str]]:
    """A SQL condition (and its parameters) true for the documents `reader` may read."""
    if reader is None:
        return "1", []
    marks = ",".join("?" * len(reader.grantees))
    return (
        f"(NOT EXISTS (SELECT 1 FROM access_lists l WHERE l.document_id = {document_column}) OR EXISTS "
        f"(SELECT 1 FROM access_grants g WHERE g.document_id = {document_column} AND g.grantee IN ({marks})))",
        list(reader.grantees),
    )


def restricted_keys(conn: sqlite3.Connection, org: str | None) -> np.ndarray:
    """Sorted chunk keys of every document with a list, of `org` (of every organisation when None)."""
    where = "l.org = ?" if org is not None else "1"
    rows = conn.execute(
        f"SELECT c.key FROM access_lists l JOIN chunks c ON c.document_id = l.document_id WHERE {where} ORDER BY c.key",
        [org] if org is not None else [],
    )
    return np.fromiter((key for (key,) in rows), dtype=np.int64)


def granted_keys(conn: sqlite3.Connection, org: str | None, reader: Reader) -> np.ndarray:
    """Chunk keys of the documents (of `org`) whose lists name `reader` or one of its groups: from the grantee
    index, so the cost follows what the reader is granted, not how many lists there are."""
    marks = ",".join("?" * len(reader.grantees))
    where = "AND l.org = ?" if org is not None else ""
    rows = conn.execute(
        "SELECT c.key FROM access_grants g JOIN access_lists l ON l.document_id = g.document_id "
        f"JOIN chunks c ON c.document_id = g.document_id WHERE g.grantee IN ({marks}) {where}",
        [*reader.grantees, *([org] if org is not None else [])],
    )
    return np.fromiter((key for (key,) in rows), dtype=np.int64)


def write_for_add(
    conn: sqlite3.Connection, chunks: list[Chunk], document_ids: list[str], access: AccessByDocument
) -> None:
    """The access lists of an add's documents: the one given, else the one a replaced document had. An add
    without lists, of documents that had none, costs one query."""
    had = lists_of(conn, document_ids)
    listed = {doc: access[doc] if doc in access else had.get(doc) for doc in document_ids}
    restricted = {doc: found for doc, found in listed.items() if found is not None}
    if not had and not restricted:
        return
    remove(conn, had)
    org_of = {chunk.document_id: tenant_of(chunk.metadata) for chunk in chunks}
    for doc, found in restricted.items():
        insert(conn, doc, org_of[doc], found)
    # the forbidden chunk keys moved: new keys of a restricted document, or a list changed
    bump_generation(conn)

"""Online backup of DATA_DIR: `python -m rag.backup DEST`, while the service runs and writes go on.

DEST becomes a directory that the service starts on as it is (`DATA_DIR=DEST`): restoring is starting on it.
It holds every write acknowledged before the backup began, and no document half, because each part is copied as
of one commit:
- the embedded store: its catalog (the commit point of every add, delete and access change) is read in one SQLite
  read transaction begun under the store's write lock, and in that same moment the files that state names are
  hard-linked aside: the vector segments (immutable) and the keyword index's committed files (immutable too; its
  `meta.json` says which). The lock is held for that moment only, never while bytes are copied, so a write waits
  for a few links, not for the copy (`bench/backup.py` measures it);
- the chats, answers, jobs and audit SQLite databases, each by SQLite's online backup (one read transaction);
- the files of jobs not yet run (`uploads/`), copied before the jobs database, so every job it holds finds its
  files.

With embedding spaces (rag/spaces/), the store backed up is the active space's (`store/`, or `spaces/<name>/store`),
and the backup's registry keeps that space alone: a space being built, or kept to switch back to, is asked for again
after a restore (its store would not be of the same moment as the active one). A switch during the backup fails it.

A backup is written beside DEST under another name and renamed to DEST once complete and fsynced: a backup killed
midway leaves no DEST, and the store untouched (its aside links are removed by the next backup). One backup at a
time per DATA_DIR. On PostgreSQL the store, the chats and the audit log live in the database: back it up with its
own tools (docs/deployment.md, "Backup and restore"); this command then copies the local parts only.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import shutil
import sqlite3
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rag.durable import fsync_path
from rag.spaces.registry import DEFAULT_SPACE
from rag.stores import space_location
from rag.stores.segments import codes_file, segment_files

logger = logging.getLogger(__name__)

SPACES = "spaces.sqlite3"  # the embedding spaces' registry (rag/spaces/registry.py)
CATALOG = "catalog.sqlite3"
KEYWORDS = "keywords"
STORE_WRITE_LOCK = ".lock"  # as rag/stores/numpy_store.py names it
BACKUP_LOCK = ".backup.lock"
ASIDE_PREFIX = ".backup-"  # the store's hard links of one backup in progress
UPLOADS = "uploads"
MANIFEST = "backup.json"
LINK_ATTEMPTS = 50  # the keyword index's merges may swap files while they are linked: tries before giving up


class BackupError(Exception):
    """A backup that cannot be made (DEST exists, another backup runs, a file cannot be read)."""


@dataclass
class BackupReport:
    """What a backup holds, and how long it made the store's writers wait."""

    destination: str
    started_at: float
    seconds: float = 0.0
    store_generation: int | None = None
    chunks: int | None = None
    documents: int | None = None
    write_lock_ms: float = 0.0  # the longest the store's write lock was held (writes wait at most this long)
    databases: list[str] = field(default_factory=list)
    files: int = 0
    bytes: int = 0


@contextlib.contextmanager
def _flock(path: Path, mode: int) -> Iterator[None]:
    with open(path, "a+b") as handle:
        fcntl.flock(handle, mode)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        shutil.copy2(source, target)  # a file system without hard links: a copy (the lock is held longer)


def _link_keyword_files(index: Path, aside: Path) -> None:
    """Link the keyword index's committed state into `aside`: `meta.json` as read, and every file of the segments
    it names. A merge that ends meanwhile replaces `meta.json` and removes the files it merged; then the attempt
    starts again, so what is linked is exactly one committed state."""
    for _ in range(LINK_ATTEMPTS):
        shutil.rmtree(aside, ignore_errors=True)
        aside.mkdir(parents=True)
        try:
            meta = (index / "meta.json").read_bytes()
        except FileNotFoundError:
            return  # no index yet: the service builds it from the catalog
        segments = {entry["segment_id"].replace("-", "") for entry in json.loads(meta)["segments"]}
        try:
            for path in index.iterdir():
                if path.name.split(".", 1)[0] in segments:
                    _link_or_copy(path, aside / path.name)
        except FileNotFoundError:
            continue
        if (index / "meta.json").read_bytes() == meta:
            (aside / "meta.json").write_bytes(meta)
            return
    raise BackupError(f"the keyword index at {index} kept changing; try again")


def _store_aside(store: Path, aside: Path, report: BackupReport) -> sqlite3.Connection:
    """Under the store's write lock: begin a read transaction on its catalog and link the files of that state into
    `aside`. Returns the connection, whose transaction the caller copies the catalog from."""
    conn = sqlite3.connect(store / CATALOG, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 30000")
    try:
        # shared: searches catching up still pass; every writer of the store takes it exclusively
        with _flock(store / STORE_WRITE_LOCK, fcntl.LOCK_SH):
            held = time.perf_counter()
            conn.execute("BEGIN")
            files = [row[0] for row in conn.execute("SELECT file FROM segments")]
            counters = dict(conn.execute("SELECT key, value FROM meta"))
            for name in files:
                codes = codes_file(store, name)
                for path in (*segment_files(store, name), *([codes] if codes.exists() else [])):  # small: no codes
                    _link_or_copy(path, aside / path.name)
            _link_keyword_files(store / KEYWORDS, aside / KEYWORDS)
            report.write_lock_ms = max(report.write_lock_ms, (time.perf_counter() - held) * 1000)
    except BaseException:
        conn.close()
        raise
    report.store_generation = int(counters.get("generation", 0))
    report.chunks = int(counters.get("chunks", 0))
    report.documents = int(counters.get("documents", 0))
    return conn


def _copy_database(source: sqlite3.Connection, target: Path) -> None:
    """SQLite's online backup of `source` (as of its open read transaction, if any) into a new file `target`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(target)) as copy:
        source.backup(copy)


def _copy_tree(source: Path, target: Path) -> None:
    """Copy a folder of files that may vanish while it is read (a job's files, removed when it ends)."""
    for path in sorted(source.rglob("*")):
        with contextlib.suppress(FileNotFoundError):
            if path.is_file() and not path.is_symlink():
                destination = target / path.relative_to(source)
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, destination)


def _move_tree(source: Path, target: Path) -> None:
    for path in sorted(source.rglob("*")):
        if path.is_file():
            destination = target / path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(path, destination)  # a rename on the same file system, else a copy


def _fsync_tree(root: Path, report: BackupReport) -> None:
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        fsync_path(path)
        if path.is_file():
            report.files += 1
            report.bytes += path.stat().st_size
    fsync_path(root)


def remove_asides(store: Path) -> None:
    """Remove the links of backups that were killed midway (the caller holds the backup lock)."""
    if store.is_dir():
        for path in store.glob(f"{ASIDE_PREFIX}*"):
            shutil.rmtree(path, ignore_errors=True)


def _active_space(registry: Path) -> str | None:
    if not registry.exists():
        return None
    with contextlib.closing(sqlite3.connect(registry)) as conn:
        try:
            row = conn.execute("SELECT name FROM rag_spaces WHERE state = 'active'").fetchone()
        except sqlite3.OperationalError:  # no table yet
            return None
    return None if row is None else str(row[0])


def _keep_only_active_space(registry: Path, active: str | None) -> None:
    """The backup's registry: the space backed up, alone (see the module's text)."""
    if _active_space(registry) != active:
        raise BackupError("the active embedding space switched during the backup; run it again")
    with contextlib.closing(sqlite3.connect(registry, isolation_level=None)) as conn:
        conn.execute("DELETE FROM rag_spaces WHERE state <> 'active'")
        conn.execute("DELETE FROM rag_space_ledger")


def backup(data_dir: Path, destination: Path, store_backend: str = "numpy") -> BackupReport:
    """Write a consistent backup of `data_dir` to `destination`, which must not exist (or be an empty folder)."""
    destination = destination.resolve()
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise BackupError(f"{destination} exists and is not an empty folder")
    data_dir = data_dir.resolve()
    if destination.is_relative_to(data_dir):
        raise BackupError(f"{destination} is inside DATA_DIR ({data_dir}); back up to another folder")
    if not data_dir.is_dir():
        raise BackupError(f"DATA_DIR {data_dir} does not exist")
    report = BackupReport(str(destination), time.time())
    started = time.perf_counter()
    partial = destination.parent / f".{destination.name}.partial-{uuid.uuid4().hex[:8]}"
    active = _active_space(data_dir / SPACES)
    folder = space_location(None if active in (None, DEFAULT_SPACE) else active).folder
    store = data_dir / folder
    try:
        with open(data_dir / BACKUP_LOCK, "a+b") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BackupError(f"another backup of {data_dir} is running") from None
            remove_asides(store)
            partial.mkdir(parents=True)
            if store_backend == "numpy" and (store / CATALOG).exists():
                aside = store / f"{ASIDE_PREFIX}{uuid.uuid4().hex[:8]}"
                try:
                    with contextlib.closing(_store_aside(store, aside, report)) as catalog:
                        _copy_database(catalog, partial / folder / CATALOG)
                    _move_tree(aside, partial / folder)
                finally:
                    shutil.rmtree(aside, ignore_errors=True)
            if (data_dir / UPLOADS).is_dir():
                _copy_tree(data_dir / UPLOADS, partial / UPLOADS)  # before jobs.sqlite3: see the docstring
            for database in sorted(data_dir.glob("*.sqlite3")):
                with contextlib.closing(sqlite3.connect(database, check_same_thread=False)) as source:
                    source.execute("PRAGMA busy_timeout = 30000")
                    _copy_database(source, partial / database.name)
                report.databases.append(database.name)
            if (partial / SPACES).exists():
                _keep_only_active_space(partial / SPACES, active)
            report.seconds = time.perf_counter() - started
            (partial / MANIFEST).write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")
            _fsync_tree(partial, report)
            if destination.exists():
                destination.rmdir()  # empty, checked above
            os.rename(partial, destination)
            fsync_path(destination.parent)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    report.seconds = time.perf_counter() - started
    return report


def main(argv: list[str] | None = None) -> int:
    from config import settings_or_exit

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("destination", type=Path, help="a folder that does not exist yet (or is empty)")
    args = parser.parse_args(argv)
    settings = settings_or_exit()
    try:
        report = backup(settings.data_dir, args.destination, settings.vector_store)
    except (BackupError, OSError, sqlite3.Error) as exc:
        print(f"error: backup failed: {exc}", file=sys.stderr)
        return 1
    if settings.vector_store != "numpy":
        print(
            f"note: VECTOR_STORE={settings.vector_store}: the documents, chats and audit log are in the database; "
            "back it up with its own tools (docs/deployment.md, 'Backup and restore')",
            file=sys.stderr,
        )
    print(
        f"backed up {settings.data_dir} to {report.destination} in {report.seconds:.1f} s: "
        f"{report.documents or 0:,} documents, {report.chunks or 0:,} chunks, {report.files} files, "
        f"{report.bytes / 1e6:,.1f} MB; writes waited at most {report.write_lock_ms:.1f} ms",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the embedded store does for embedding spaces (rag/spaces/): the marker file that refuses writes to a space
switched away from, and tells a reader still on it to move (the PostgreSQL store's twin is pg_spaces.py)."""

from __future__ import annotations

from pathlib import Path

from rag.durable import fsync_path
from rag.errors import SpaceRetired

RETIRED = "RETIRED"  # the marker file, in the store's folder


def is_retired(directory: Path) -> bool:
    """One stat: cheap enough to ask before every read."""
    return (directory / RETIRED).exists()


def check_writable(directory: Path) -> None:
    """Under the write lock, before a write: refused once the store's space was switched away from."""
    if is_retired(directory):
        raise SpaceRetired("this store's embedding space was switched away from; write to the active one")


def mark_retired(directory: Path, retired: bool) -> None:
    """Set or clear the marker; the switch does it while it holds every process's writes off."""
    marker = directory / RETIRED
    if retired:
        marker.touch()
    else:
        marker.unlink(missing_ok=True)
    fsync_path(directory)

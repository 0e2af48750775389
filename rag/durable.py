"""Making a write durable: fsync of a file or a folder (a rename is durable once its folder is fsynced).

Shared by the embedded store's segments, the job runner's uploads and the ONNX export.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: Path) -> None:
    """fsync a file's contents, or a folder's entries."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

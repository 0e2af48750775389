"""Crash test of the PostgreSQL backend: concurrent writers add documents through two replicas while every
PostgreSQL process is killed with SIGKILL at a random moment; PostgreSQL is started again (crash recovery), and
every document whose add was acknowledged (HTTP 200) must be there.

    .venv/bin/python bench/pg_crash.py --runs 10

The replicas stay up across the kill: during the outage they answer 503, and they reconnect by themselves once the
database is back. Prints, per run and in total, acknowledged documents, lost ones (must be 0), 503s seen during the
outage, and other failures (must be 0); exits 1 if any document was lost.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import sys
import tempfile
import threading
import time
import uuid
import warnings
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.service_process import ServiceProcess

UNUSED_UPSTREAM = "http://127.0.0.1:9/v1"


def kill_postgres(server: object) -> None:
    """SIGKILL the postmaster and every backend it started, then clear the stale pid file (the processes are gone;
    on machines whose init does not reap, they linger as zombies, which would make PostgreSQL think it still runs)."""
    import psutil

    postmaster = psutil.Process(server.get_pid())  # type: ignore[attr-defined]
    for process in [postmaster, *postmaster.children(recursive=True)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
    time.sleep(0.2)
    pgdata = Path(server.pgdata)  # type: ignore[attr-defined]
    for stale in [pgdata / "postmaster.pid", *pgdata.glob(".s.PGSQL.*.lock")]:
        stale.unlink(missing_ok=True)


def writer(urls: list[str], acknowledged: set[str], lock: threading.Lock, stop: threading.Event, stats: dict) -> None:
    rng = random.Random()
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            ids = [uuid.uuid4().hex for _ in range(rng.randint(1, 3))]
            texts = [f"crash test document {doc_id} " + "lorem ipsum " * rng.randint(1, 40) for doc_id in ids]
            try:
                response = client.post(
                    f"{rng.choice(urls)}/api/v1/documents/add", json={"documents": texts, "ids": ids}
                )
            except httpx.HTTPError:
                with lock:
                    stats["transport errors"] += 1
                time.sleep(0.05)
                continue
            with lock:
                if response.status_code == 200:
                    acknowledged.update(ids)
                elif response.status_code == 503:
                    stats["503"] += 1
                    time.sleep(0.05)
                else:
                    stats["other"] += 1


def stored_ids(url: str) -> set[str]:
    ids: set[str] = set()
    offset = 0
    while True:
        page = httpx.get(f"{url}/api/v1/documents", params={"offset": offset, "limit": 1000}, timeout=30).json()
        ids.update(doc["id"] for doc in page["documents"])
        offset += len(page["documents"])
        if not page["documents"]:
            return ids


def wait_serving(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/api/v1/documents", params={"limit": 1}, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not recover")


def run(runs: int, writers: int, seed: int) -> int:
    warnings.simplefilter("ignore")
    import pgserver

    rng = random.Random(seed)
    acknowledged: set[str] = set()
    lock = threading.Lock()
    lost_total = 0
    with tempfile.TemporaryDirectory() as tmp:
        server = pgserver.get_server(Path(tmp) / "pg", cleanup_mode="stop")
        dsn = server.get_uri()
        services = [
            ServiceProcess(Path(tmp) / f"replica{i}", UNUSED_UPSTREAM, vector_store="postgres", database_url=dsn)
            for i in range(2)
        ]
        try:
            for service in services:
                service.wait_ready()
            print(f"two replicas up on {dsn}", flush=True)
            urls = [service.url for service in services]
            for n in range(1, runs + 1):
                stats = {"503": 0, "other": 0, "transport errors": 0}
                before = len(acknowledged)
                stop = threading.Event()
                threads = [
                    threading.Thread(target=writer, args=(urls, acknowledged, lock, stop, stats))
                    for _ in range(writers)
                ]
                for thread in threads:
                    thread.start()
                killed_after = rng.uniform(0.5, 3.0)
                time.sleep(killed_after)
                kill_postgres(server)
                time.sleep(0.5)  # writers meet the outage
                server.ensure_postgres_running()  # crash recovery
                for url in urls:
                    wait_serving(url)
                stop.set()
                for thread in threads:
                    thread.join(timeout=60)
                present = stored_ids(urls[n % 2])
                lost = acknowledged - present
                lost_total += len(lost)
                print(
                    f"run {n:2}: killed after {killed_after:.2f} s, {len(acknowledged) - before:4} acknowledged, "
                    f"{len(lost)} lost, {stats['503']} answered 503 during the outage, "
                    f"{stats['other']} other failures",
                    flush=True,
                )
        finally:
            for service in services:
                service.__exit__()
            server.cleanup()
    print(f"total: {len(acknowledged)} acknowledged documents, {lost_total} lost")
    return lost_total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--writers", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    sys.exit(1 if run(args.runs, args.writers, args.seed) else 0)


if __name__ == "__main__":
    main()

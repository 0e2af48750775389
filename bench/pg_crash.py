"""Crash test of the PostgreSQL backend: concurrent writers add documents through two replicas, and keyword searches
keep both replicas' keyword indexes catching up, while one replica and then every PostgreSQL process are killed with
SIGKILL at random moments; PostgreSQL is started again (crash recovery), the killed replica too, and every document
whose add was acknowledged (HTTP 200) must be there, and found by a keyword search for its id on both replicas.

    .venv/bin/python bench/pg_crash.py --runs 10

The other replica stays up across the kill: during the outage it answers 503, and it reconnects by itself once the
database is back. The killed replica starts on the keyword index its kill left (cut mid-write, or mid-merge) and
catches up from there. Prints, per run and in total, acknowledged documents, lost ones (must be 0), keyword index
disagreements (must be 0: an acknowledged document not found, or an index holding another count than the table),
503s seen during the outage, and other failures; exits 1 if any document was lost or any disagreement found.
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

from bench.crash import keyword_disagreements
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


def searcher(urls: list[str], stop: threading.Event) -> None:
    """Keyword searches on both replicas: each one catches the replica's index up with the writes."""
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            for url in list(urls):
                with contextlib.suppress(httpx.HTTPError):
                    client.get(f"{url}/api/v1/documents/search", params={"query": "crash", "mode": "keyword"})
            time.sleep(0.01)


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
    lost_total = disagreements_total = 0
    with tempfile.TemporaryDirectory() as tmp:
        server = pgserver.get_server(Path(tmp) / "pg", cleanup_mode="stop")
        dsn = server.get_uri()

        def replica(i: int) -> ServiceProcess:
            return ServiceProcess(Path(tmp) / f"replica{i}", UNUSED_UPSTREAM, vector_store="postgres", database_url=dsn)

        services = [replica(i) for i in range(2)]
        try:
            for service in services:
                service.wait_ready()
            print(f"two replicas up on {dsn}", flush=True)
            urls = [service.url for service in services]
            for n in range(1, runs + 1):
                stats = {"503": 0, "other": 0, "transport errors": 0}
                before = len(acknowledged)
                stop = threading.Event()
                earlier = set(acknowledged)
                threads = [
                    threading.Thread(target=writer, args=(urls, acknowledged, lock, stop, stats))
                    for _ in range(writers)
                ] + [threading.Thread(target=searcher, args=(urls, stop))]
                for thread in threads:
                    thread.start()
                victim = n % 2
                replica_killed_after = rng.uniform(0.3, 2.0)
                time.sleep(replica_killed_after)
                services[victim].kill()  # mid-write, mid-search, mid-catch-up: wherever it is
                killed_after = replica_killed_after + rng.uniform(0.2, 1.0)
                time.sleep(killed_after - replica_killed_after)
                kill_postgres(server)
                time.sleep(0.5)  # writers meet the outage
                server.ensure_postgres_running()  # crash recovery
                services[victim] = replica(victim)
                services[victim].wait_ready()
                urls[victim] = services[victim].url
                for url in urls:
                    wait_serving(url)
                stop.set()
                for thread in threads:
                    thread.join(timeout=60)
                present = stored_ids(urls[n % 2])
                lost = acknowledged - present
                lost_total += len(lost)
                expected = (acknowledged - earlier) | set(rng.sample(sorted(earlier), min(100, len(earlier))))
                wrong = set().union(*(keyword_disagreements(url, expected, set(), rng) for url in urls))
                disagreements_total += len(wrong)
                print(
                    f"run {n:2}: replica {victim} killed after {replica_killed_after:.2f} s, PostgreSQL after "
                    f"{killed_after:.2f} s, {len(acknowledged) - before:4} acknowledged, {len(lost)} lost, "
                    f"{len(wrong)} keyword index disagreements, {stats['503']} answered 503 during the outage, "
                    f"{stats['other']} other failures",
                    flush=True,
                )
        finally:
            for service in services:
                service.__exit__()
            server.cleanup()
    print(
        f"total: {len(acknowledged)} acknowledged documents, {lost_total} lost, "
        f"{disagreements_total} keyword index disagreements"
    )
    return lost_total + disagreements_total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--writers", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    sys.exit(1 if run(args.runs, args.writers, args.seed) else 0)


if __name__ == "__main__":
    main()

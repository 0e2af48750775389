"""Crash test: concurrent writers add documents, the server is killed with SIGKILL at a random moment, restarted,
and every document whose add was acknowledged (HTTP 200) must be there, in a store that loads.

    .venv/bin/python bench/crash.py --runs 20

Prints, per run and in total, the acknowledged documents, the lost ones (must be 0) and the load failures (must
be 0); exits 1 if either is not. The store grows across runs, so later runs also kill writes to a bigger store.
Everything runs on 127.0.0.1; the service needs no LLM for adds (its upstream address is never called).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.service_process import ServiceProcess

UNUSED_UPSTREAM = "http://127.0.0.1:9/v1"  # discard port: adds never talk to the LLM


@dataclass
class RunResult:
    acknowledged: set[str] = field(default_factory=set)
    lost: set[str] = field(default_factory=set)
    load_failed: bool = False
    killed_after: float = 0.0


def writer(url: str, acknowledged: set[str], lock: threading.Lock, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.is_set():
            ids = [uuid.uuid4().hex for _ in range(rng.randint(1, 3))]
            texts = [f"crash test document {doc_id} " + "lorem ipsum " * rng.randint(1, 60) for doc_id in ids]
            try:
                response = client.post("/api/v1/documents/add", json={"documents": texts, "ids": ids})
            except httpx.HTTPError:
                return  # the server is gone
            if response.status_code == 200:
                with lock:
                    acknowledged.update(ids)


def stored_ids(url: str) -> set[str]:
    ids: set[str] = set()
    offset = 0
    with httpx.Client(base_url=url, timeout=30) as client:
        while True:
            page = client.get("/api/v1/documents", params={"offset": offset, "limit": 1000}).json()
            ids.update(doc["id"] for doc in page["documents"])
            offset += len(page["documents"])
            if offset >= page["total"] or not page["documents"]:
                return ids


def one_run(data_dir: Path, writers: int, rng: random.Random, all_acknowledged: set[str]) -> RunResult:
    result = RunResult()
    with ServiceProcess(data_dir, UNUSED_UPSTREAM) as service:
        service.wait_ready()
        lock, stop = threading.Lock(), threading.Event()
        threads = [
            threading.Thread(target=writer, args=(service.url, result.acknowledged, lock, stop, rng.random()))
            for _ in range(writers)
        ]
        for thread in threads:
            thread.start()
        result.killed_after = rng.uniform(0.3, 3.0)
        time.sleep(result.killed_after)
        service.kill()  # SIGKILL: no shutdown code runs
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    all_acknowledged |= result.acknowledged
    with ServiceProcess(data_dir, UNUSED_UPSTREAM) as service:
        try:
            service.wait_ready()
            present = stored_ids(service.url)
        except (RuntimeError, TimeoutError, httpx.HTTPError):
            result.load_failed = True
            return result
        result.lost = all_acknowledged - present
        service.terminate()
    return result


def run(runs: int, writers: int, seed: int, data_dir: Path | None = None) -> tuple[int, int, int]:
    """Returns (acknowledged documents, lost documents, load failures) over all runs."""
    rng = random.Random(seed)
    all_acknowledged: set[str] = set()
    lost: set[str] = set()
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        directory = data_dir or Path(tmp)
        for n in range(1, runs + 1):
            result = one_run(directory, writers, rng, all_acknowledged)
            lost |= result.lost
            failures += result.load_failed
            print(
                f"run {n:2}: killed after {result.killed_after:.2f} s, {len(result.acknowledged):4} acknowledged, "
                f"{len(result.lost)} lost, load {'FAILED' if result.load_failed else 'ok'}",
                flush=True,
            )
    print(f"total: {len(all_acknowledged)} acknowledged documents, {len(lost)} lost, {failures} load failures")
    return len(all_acknowledged), len(lost), failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--writers", type=int, default=6, help="concurrent writer threads")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    _, lost, failures = run(args.runs, args.writers, args.seed)
    sys.exit(1 if lost or failures else 0)


if __name__ == "__main__":
    main()

"""The job store and the runner, without HTTP: claims and leases between two runners, cancel, the sweep that forgets
old jobs and removes bytes nobody will read, and a job's items ingested side by side."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import numpy as np
import pytest

from config import Settings
from rag.embedders.onnx import OnnxEmbedder
from rag.ingest.indexer import Indexer, prepare_documents
from rag.ingest.jobs import JobStore, NewItem
from rag.ingest.parser_pool import ParserPool
from rag.ingest.parsers import ParseLimits
from rag.ingest.runner import JobRunner
from rag.stores.numpy_store import NumpyVectorStore


def item(name: str = "a.txt") -> NewItem:
    return NewItem(name, "text", "text/plain", 4, "0" * 64, f"doc-{name}", {})


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path / "jobs.sqlite3", tmp_path / "uploads")


def test_a_job_is_claimed_once_and_again_only_after_its_lease_lapses(store: JobStore) -> None:
    store.create("j1", [item()], org_id="org", user_id="u")
    claimed = store.claim("runner-a", lease_seconds=0.2)
    assert claimed is not None and claimed.state == "running" and claimed.attempts == 1
    assert store.claim("runner-b", lease_seconds=0.2) is None  # held
    assert store.update_item("j1", 0, "runner-a", 0.2, state="parsing")  # renewing works while held
    time.sleep(0.3)
    taken = store.claim("runner-b", lease_seconds=60)  # runner-a stopped renewing: as if its process died
    assert taken is not None and taken.attempts == 2
    assert not store.update_item("j1", 0, "runner-a", 60, state="embedding")  # the old runner learns it lost it
    assert store.get("j1").items[0].state == "parsing"  # type: ignore[union-attr]


def test_cancel_ends_a_queued_or_running_job_and_leaves_a_finished_one(store: JobStore) -> None:
    store.create("q", [item()], None, None)
    assert store.cancel("q").state == "cancelled"  # type: ignore[union-attr]
    assert store.claim("r", 60) is None  # a cancelled job is never claimed
    store.create("d", [item()], None, None)
    store.claim("r", 60)
    store.mark_item("d", 0, state="done", chunks_done=1)
    assert store.finish("d", "r").state == "done"  # type: ignore[union-attr]
    assert store.cancel("d").state == "done"  # type: ignore[union-attr]


def test_release_hands_a_running_job_back_to_the_queue(store: JobStore) -> None:
    store.create("j", [item("a.txt"), item("b.txt")], None, None)
    store.claim("r", 60)
    store.mark_item("j", 0, state="done", chunks_done=1)
    store.update_item("j", 1, "r", 60, state="embedding")
    store.release("j", "r")
    job = store.get("j")
    assert job is not None and job.state == "queued"
    assert [i.state for i in job.items] == ["done", "queued"]  # done stays done; the rest is redone


def test_the_sweep_forgets_old_jobs_and_removes_bytes_nobody_will_read(store: JobStore, tmp_path: Path) -> None:
    uploads = tmp_path / "uploads"
    for job_id in ("old", "running", "orphan", "fresh-orphan"):
        (uploads / job_id).mkdir(parents=True)
        (uploads / job_id / "0").write_bytes(b"data")
    store.create("old", [item()], None, None)
    store.claim("r", 60)
    store.mark_item("old", 0, state="done", chunks_done=1)
    store.finish("old", "r")
    store.create("running", [item()], None, None)
    store.claim("r", 60)
    hours_ago = time.time() - 2 * 3600
    os.utime(uploads / "orphan", (hours_ago, hours_ago))  # a submission that died before its job was recorded

    runner = JobRunner(store, indexer=None, parsers=ParserPool(ParseLimits()))  # type: ignore[arg-type]
    runner._sweep(cutoff=time.time() + 1)  # everything finished before now is old enough to forget
    assert store.get("old") is None
    assert store.get("running") is not None
    assert sorted(p.name for p in uploads.iterdir()) == ["fresh-orphan", "running"]


class WatchedEmbedder(OnnxEmbedder):
    """The real ONNX embedder, counting how many `embed_documents` calls run at once."""

    running = 0
    most_at_once = 0

    async def embed_documents(self, texts: list[str]) -> np.ndarray:
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            # A one-chunk note embeds in milliseconds, less than a parse's round trip: held a moment, as a larger
            # document would be, so that whether the runner starts the next item meanwhile is what is seen.
            await asyncio.sleep(0.2)
            return await super().embed_documents(texts)
        finally:
            self.running -= 1


async def test_a_jobs_documents_are_ingested_side_by_side(tmp_path: Path) -> None:
    """A job of one-chunk documents embeds two at a time (one per core), through the embedder's ingestion road."""
    settings = Settings(_env_file=None)
    embedder = await WatchedEmbedder.load(settings.embedding_model, settings.onnx_dir, 4, 2)
    vectors = await NumpyVectorStore.open(tmp_path / "store", embedder.model_name, embedder.dimension)
    jobs = JobStore(tmp_path / "jobs.sqlite3", tmp_path / "uploads")
    runner = JobRunner(
        jobs,
        Indexer(embedder, vectors, 1000, 200),
        ParserPool(ParseLimits(), size=2),
        items_at_once=2,
        poll_seconds=0.05,
    )
    await runner.start()
    texts = [f"Field note {n}: the {bird} was seen at the {n}th marker." for n, bird in enumerate(["heron"] * 8)]
    ids = [f"note-{n}" for n in range(len(texts))]
    job = await runner.submit_documents(texts, prepare_documents(texts, None, ids, None), None, None)
    deadline = time.monotonic() + 120
    while not (current := jobs.get(job.id)) or not current.finished:
        assert time.monotonic() < deadline
        await runner.wait_for_change(0.5)
    assert current.state == "done"
    assert [i.state for i in current.items] == ["done"] * len(texts)
    assert embedder.most_at_once == 2
    total, listed = await vectors.list_documents(0, 20, None)
    assert total == len(texts) and sorted(d.id for d in listed) == sorted(ids)
    await runner.aclose()
    await vectors.aclose()
    await embedder.aclose()


def test_an_item_interrupted_by_three_crashes_is_failed_instead_of_taken_up_again(store: JobStore) -> None:
    store.create("j", [item("poison.pdf"), item("good.txt"), item("later.txt")], None, None)
    for attempt in range(1, 4):
        job = store.claim(f"runner-{attempt}", lease_seconds=0.05, max_interruptions=3)
        assert job is not None and job.attempts == attempt
        assert [i.state for i in job.items] == [
            "queued" if attempt == 1 else "parsing",
            "done" if attempt > 1 else "queued",
            "queued",
        ]
        store.update_item("j", 0, f"runner-{attempt}", 0.05, state="parsing")
        if attempt == 1:
            store.mark_item("j", 1, state="done", chunks_done=1)
        time.sleep(0.1)  # the runner's process died: its lease lapses with the poison file in progress
    job = store.claim("runner-4", lease_seconds=60, max_interruptions=3)
    assert job is not None
    poison, good, later = job.items
    assert poison.state == "failed"
    assert poison.error is not None and "stopped 3 times while processing this file" in poison.error
    assert (good.state, later.state) == ("done", "queued")  # the rest of the job goes on


def test_a_graceful_shutdown_is_not_counted_as_an_interruption(store: JobStore) -> None:
    store.create("j", [item()], None, None)
    for n in range(4):
        store.claim(f"r{n}", 60, max_interruptions=3)
        store.update_item("j", 0, f"r{n}", 60, state="parsing")
        store.release("j", f"r{n}")  # SIGTERM: the job is handed back, the item goes back to the queue
    job = store.claim("r", 60, max_interruptions=3)
    assert job is not None and job.items[0].state == "queued" and job.items[0].error is None

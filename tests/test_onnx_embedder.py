"""The default ONNX embedder against its reference, sentence-transformers on torch, with the same bundled weights."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from config import PROJECT_DIR, Settings
from rag.embedders.base import resolve_model_path
from rag.embedders.local import SentenceTransformerEmbedder
from rag.embedders.onnx import OnnxEmbedder, forward_passes
from rag.embedders.onnx_export import GRAPH, INT8_GRAPH, WEIGHTS, export, onnx_file

SCIFACT = PROJECT_DIR.parent / "shared" / "datasets" / "scifact" / "corpus.jsonl"


@pytest.fixture(scope="module")
async def onnx_embedder() -> OnnxEmbedder:
    settings = Settings(_env_file=None)
    return await OnnxEmbedder.load(settings.embedding_model, settings.onnx_dir, 32)


# More texts than LocalEmbedder.COALESCE_MAX_TEXTS, so an embed of them is an ingestion.
INGESTION = [f"chunk {i} of an ingestion, {'long ' * i}" for i in range(20)]


def passages(n: int) -> list[str]:
    with SCIFACT.open(encoding="utf-8") as handle:
        docs = [json.loads(line) for _, line in zip(range(n), handle, strict=False)]
    # chunk-sized texts, as the service embeds them; several are longer than the model's 256-token window
    return [f"{d['title']} {d['text']}"[:1000] for d in docs]


@pytest.mark.skipif(not SCIFACT.exists(), reason="needs ../shared/datasets/scifact")
async def test_onnx_vectors_match_sentence_transformers_on_500_passages(
    onnx_embedder: OnnxEmbedder, embedder: SentenceTransformerEmbedder
) -> None:
    texts = passages(500)
    ours = await onnx_embedder.embed(texts)
    reference = await embedder.embed(texts)
    assert ours.shape == reference.shape == (500, 384)
    cosine = np.sum(ours * reference, axis=1)
    assert cosine.min() >= 0.9999, cosine.min()
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


async def test_ingestion_order_survives_length_sorting_and_questions_coalesce(onnx_embedder: OnnxEmbedder) -> None:
    texts = [("word " * (i % 37 + 1)) + str(i) for i in range(150)]  # lengths shuffled against the order
    together = await onnx_embedder.embed(texts)
    for i in (0, 5, 77, 149):
        alone = (await onnx_embedder.embed([texts[i]]))[0]
        np.testing.assert_allclose(together[i], alone, atol=1e-5)


def test_forward_passes_stay_within_the_token_budget() -> None:
    lengths = [300, 12, 40, 256, 12, 90, 41, 5]
    groups = forward_passes(lengths, 256)
    assert sorted(i for group in groups for i in group) == list(range(len(lengths)))  # each text once
    order = [i for group in groups for i in group]
    assert [lengths[i] for i in order] == sorted(lengths)  # shortest first: each pass pads to about its texts
    for group in groups:
        longest = max(lengths[i] for i in group)
        assert len(group) * longest <= 256 or len(group) == 1  # a text over the budget goes alone
    assert [lengths[i] for i in groups[-1]] == [300]
    assert forward_passes([], 256) == []


async def test_long_chunks_run_one_per_forward_pass_with_the_same_vectors(onnx_embedder: OnnxEmbedder) -> None:
    """Chunks near the model's 256-token window each get a pass of their own (attention memory grows with
    texts x length^2), and a vector does not depend on what it was batched with."""
    chunks = [f"{i} " + "cells respond to signalling molecules " * 60 for i in range(6)]
    short = "a short question?"
    before = onnx_embedder.forward_passes
    together = await onnx_embedder.embed([*chunks, short])
    passes = onnx_embedder.forward_passes - before
    assert passes == len(chunks) + 1  # every long chunk alone, and the question
    alone = (await onnx_embedder.embed([short]))[0]
    np.testing.assert_allclose(together[-1], alone, atol=1e-5)


@pytest.mark.parametrize("threads", [1, 2, 64])
async def test_questions_use_the_configured_threads_and_ingestion_a_one_thread_session(threads: int) -> None:
    """A question's pass uses EMBEDDING_THREADS cores (capped at the CPUs); an ingestion runs one-thread passes, one
    per core, on a session opened for it the first time (the questions' own when that is one thread too)."""
    settings = Settings(_env_file=None)
    embedder = await OnnxEmbedder.load(settings.embedding_model, settings.onnx_dir, 4, threads)
    cpus = os.cpu_count() or 1
    questions = embedder._session.get_session_options()
    assert questions.intra_op_num_threads == min(threads, cpus)
    assert questions.get_session_config_entry("session.force_spinning_stop") == "1"  # no spinning between passes
    question = await embedder.embed(["one question", "and another"])
    assert (embedder._ingestion_session is embedder._session) == (min(threads, cpus) == 1)

    texts = INGESTION
    vectors = await embedder.embed(texts)
    ingestion = embedder._ingestion_session
    assert ingestion is not None
    assert ingestion.get_session_options().intra_op_num_threads == 1
    assert embedder._ingest_lane.total_tokens == cpus
    # the two sessions give the same vectors
    np.testing.assert_allclose(vectors[:2], (await embedder.embed(texts[:2])), atol=1e-5)
    np.testing.assert_allclose(question, await embedder.embed(["one question", "and another"]), atol=1e-6)
    await embedder.aclose()


@pytest.fixture
async def two_sessions() -> AsyncIterator[OnnxEmbedder]:
    """An embedder whose questions and ingestions have sessions of their own (two-thread questions, on 2+ CPUs)."""
    settings = Settings(_env_file=None)
    embedder = await OnnxEmbedder.load(settings.embedding_model, settings.onnx_dir, 4, 2)
    if embedder._ingestion_session is embedder._session:
        await embedder.aclose()
        pytest.skip("one CPU: ingestion shares the questions' one-thread session, which stays open")
    yield embedder
    await embedder.aclose()


async def test_texts_to_store_take_the_ingestion_session_however_few(two_sessions: OnnxEmbedder) -> None:
    """One chunk to store is ingestion (the add path calls `embed_documents`); one question is not."""
    embedder = two_sessions
    question = await embedder.embed(["one chunk to store"])
    assert embedder._ingestion_session is None
    stored = await embedder.embed_documents(["one chunk to store"])
    assert embedder._ingestion_session is not None
    np.testing.assert_allclose(stored, question, atol=1e-5)
    assert (await embedder.embed_documents([])).shape == (0, embedder.dimension)


async def test_the_ingestion_session_closes_when_idle_and_reopens_for_the_next_ingestion(
    two_sessions: OnnxEmbedder,
) -> None:
    embedder = two_sessions
    embedder.INGESTION_SESSION_IDLE_SECONDS = 1.0
    texts = INGESTION
    first = await embedder.embed(texts)
    assert embedder._ingestion_session is not None
    await asyncio.sleep(0.05)
    assert embedder._ingestion_session is not None  # not idle long enough yet

    second = await embedder.embed(texts)  # restarts the idle clock
    await asyncio.sleep(0.3)
    assert embedder._ingestion_session is not None
    for _ in range(100):
        if embedder._ingestion_session is None:
            break
        await asyncio.sleep(0.05)
    assert embedder._ingestion_session is None
    assert (await embedder.embed(["a question meanwhile"])).shape == (1, embedder.dimension)  # its own session

    third = await embedder.embed(texts)  # opens a new one
    assert embedder._ingestion_session is not None
    np.testing.assert_allclose(first, second, atol=1e-6)
    np.testing.assert_allclose(first, third, atol=1e-6)


def test_the_default_path_never_imports_torch(tmp_path: Path) -> None:
    """A service process with default settings (ONNX embedder) serves a search without torch in memory."""
    code = f"""
import sys
from fastapi.testclient import TestClient
from config import Settings
from main import create_app
settings = Settings(_env_file=None, data_dir={str(tmp_path)!r}, llm_provider="openai",
                    openai_base_url="http://127.0.0.1:9/v1", openai_api_key="unused")
with TestClient(create_app(settings)) as client:
    assert client.post("/api/v1/documents/add", json={{"documents": ["torch-free text"]}}).status_code == 200
    assert client.get("/api/v1/documents/search", params={{"query": "text"}}).status_code == 200
print("torch" in sys.modules, "sentence_transformers" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["False", "False"]


def test_the_service_does_not_import_httpx_for_the_web_pages_installer() -> None:
    """`api.web_vendor` downloads the page's modules with httpx at install time; the service imports that module
    only for its folder, and httpx (with the rich and pygments its command line pulls in) cost it 5 MiB."""
    code = "import sys, main; main.create_app(); print(sorted({'httpx', 'rich', 'pygments'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[-2] == "[]"


def test_export_keeps_the_weights_beside_the_graph_and_replaces_the_one_file_format(tmp_path: Path) -> None:
    """The export writes a folder (graph + mapped weights) in one rename; an older single-file export is removed, and
    an export that finds the folder already there (another process won the race) keeps it."""
    settings = Settings(_env_file=None)
    model_dir = Path(resolve_model_path(settings.embedding_model))
    target = onnx_file(tmp_path, settings.embedding_model)
    legacy = tmp_path / (target.parent.name + ".onnx")
    legacy.write_bytes(b"an old single-file graph")

    export(model_dir, target)
    assert sorted(p.name for p in target.parent.iterdir()) == [GRAPH, WEIGHTS]
    assert target.stat().st_size < 1_000_000 < (target.parent / WEIGHTS).stat().st_size
    assert not legacy.exists()
    assert [p.name for p in tmp_path.iterdir()] == [target.parent.name]  # no temp folder left

    weights = (target.parent / WEIGHTS).stat()
    export(model_dir, target)  # loses the race to the folder already there: no error, the first export stays
    assert (target.parent / WEIGHTS).stat().st_mtime_ns == weights.st_mtime_ns
    assert [p.name for p in tmp_path.iterdir()] == [target.parent.name]


@pytest.mark.skipif(not SCIFACT.exists(), reason="needs ../shared/datasets/scifact")
async def test_the_int8_graph_is_made_once_and_is_another_model_to_a_store(
    tmp_path: Path, onnx_embedder: OnnxEmbedder
) -> None:
    """EMBEDDER_PRECISION=int8: the quantized graph is made from the float32 one beside it (here in a fresh folder,
    where the float32 graph is exported first), its vectors stay close to float32's, and a store made with one
    refuses the other (they are different models to it)."""
    from rag.errors import StoreIncompatible
    from rag.stores import open_store

    settings = Settings(_env_file=None)
    int8 = await OnnxEmbedder.load(settings.embedding_model, tmp_path, 32, precision="int8")
    try:
        assert sorted(p.name for p in onnx_file(tmp_path, settings.embedding_model).parent.iterdir()) == [
            INT8_GRAPH, GRAPH, WEIGHTS,
        ]  # fmt: skip
        assert int8.model_name == f"{settings.embedding_model}@int8" and int8.dimension == 384
        texts = passages(100)
        cosine = np.sum(await int8.embed_documents(texts) * await onnx_embedder.embed_documents(texts), axis=1)
        assert cosine.mean() >= 0.985 and cosine.min() >= 0.97, (cosine.mean(), cosine.min())
        scratch = settings.model_copy(update={"data_dir": tmp_path / "data"})
        store = await open_store(scratch, onnx_embedder.model_name, onnx_embedder.dimension)
        await store.aclose()
        with pytest.raises(StoreIncompatible):
            await open_store(scratch, int8.model_name, int8.dimension)
    finally:
        await int8.aclose()

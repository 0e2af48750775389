"""The default embedder's figures, each beside the bare encoder doing the same work, in one run.

    .venv/bin/python bench/embedding.py

- a question alone: p50 of 200 single-question `embed()` calls through `OnnxEmbedder` (worker thread, lane,
  coalescing) against a bare ONNX Runtime session (default options) called inline with the same tokenization, in
  blocks of 25 calls taking turns;
- ingestion: chunks per second embedding 2,000 SciFact chunks (the service's chunker, as an add would) through
  `OnnxEmbedder.embed` against the bare session over the same texts, in order, one chunk per run and in padded
  batches of EMBEDDING_BATCH_SIZE; with the resident memory each left behind (ONNX Runtime's arena keeps what the
  largest run needed);
- the sentence-transformers (torch) backend on the same question and chunks, for comparison;
- the service's resident memory after start-up with the default settings (`python main.py`: ONNX embedder, the
  local SmolLM2 model, loaded for the first answer, an empty store), and with the local model loaded at start-up
  (LOCAL_KEEP_ALIVE_SECONDS=-1, what it holds while answering), read from /proc once /api/v1/health answers.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.load import rss_mib
from bench.retrieval import DEFAULT_DATASET
from bench.service_process import ServiceProcess
from config import Settings
from rag.chunking import split_text
from rag.embedders.base import resolve_model_path
from rag.embedders.onnx import DEFAULT_MAX_TOKENS, OnnxEmbedder
from rag.embedders.onnx_export import onnx_file

QUESTION = "Does vitamin D supplementation reduce the risk of fractures in older adults?"


def chunk_texts(settings: Settings, limit: int) -> list[str]:
    texts: list[str] = []
    with (DEFAULT_DATASET / "corpus.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            doc = json.loads(line)
            texts += split_text(f"{doc['title']} {doc['text']}", settings.chunk_size, settings.chunk_overlap)
            if len(texts) >= limit:
                return texts[:limit]
    return texts


def default_service_rss(data_dir: Path, **settings: str) -> float:
    """Resident MiB of `python main.py` with the default settings (but `settings`), once it answers its health check."""
    with ServiceProcess(data_dir, None, **settings) as service:
        service.wait_ready()
        rss = rss_mib(service.process.pid)
        service.terminate()
    return rss


def bare_session(graph: Path, model_dir: Path) -> Callable[[list[str]], np.ndarray]:
    """ONNX Runtime and the tokenizer file used as their documentation shows: a session with the default options
    (one thread per physical core), a batch tokenized with padding to its longest text, one `run`. Nothing of ours
    around it (no pass splitting, no thread, no lane, no second session)."""
    import onnxruntime
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.enable_truncation(DEFAULT_MAX_TOKENS)
    tokenizer.enable_padding()
    session = onnxruntime.InferenceSession(str(graph), providers=["CPUExecutionProvider"])

    def encode(texts: list[str]) -> np.ndarray:
        encodings = tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        (vectors,) = session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
        return np.asarray(vectors)

    return encode


def rate_of(encode: Callable[[list[str]], object], texts: list[str], batch: int) -> float:
    started = time.perf_counter()
    for i in range(0, len(texts), batch):
        encode(texts[i : i + batch])
    return len(texts) / (time.perf_counter() - started)


async def run() -> None:
    settings = Settings(_env_file=None)
    embedder = await OnnxEmbedder.load(settings.embedding_model, settings.onnx_dir, settings.embedding_batch_size)
    graph = onnx_file(settings.onnx_dir, settings.embedding_model)
    bare = bare_session(graph, Path(resolve_model_path(settings.embedding_model)))

    bare(["warm up"])
    await embedder.embed([QUESTION])
    # In alternating blocks rather than call by call: the bare session's workers keep spinning for a while after
    # each run (the library's default), which would steal a core from the call right after it.
    bare_times, ours = [], []
    for _ in range(8):
        for _ in range(25):
            started = time.perf_counter()
            bare([QUESTION])
            bare_times.append(time.perf_counter() - started)
        await asyncio.sleep(0.05)
        for _ in range(25):
            started = time.perf_counter()
            await embedder.embed([QUESTION])
            ours.append(time.perf_counter() - started)
    q_bare, q_ours = statistics.median(bare_times) * 1000, statistics.median(ours) * 1000
    print(
        f"question alone, p50:  OnnxEmbedder {q_ours:.2f} ms   bare session {q_bare:.2f} ms   ({q_ours / q_bare:.2f}x)"
    )

    # Ours first: ONNX Runtime's arena only grows, so the growth measured after each run is what that run added.
    texts = chunk_texts(settings, 2000)
    before = rss_mib(os.getpid())
    started = time.perf_counter()
    vectors = await embedder.embed(texts)
    our_rate = len(texts) / (time.perf_counter() - started)
    our_growth = rss_mib(os.getpid()) - before
    assert vectors.shape == (len(texts), embedder.dimension)
    one_rate = rate_of(bare, texts, 1)
    before = rss_mib(os.getpid())
    batch_rate = rate_of(bare, texts, settings.embedding_batch_size)
    batch_growth = rss_mib(os.getpid()) - before
    print(f"ingestion, {len(texts)} chunks:  OnnxEmbedder {our_rate:.1f} chunks/s (resident +{our_growth:.0f} MiB)")
    print(f"  bare session, one chunk per run, in order:  {one_rate:.1f} chunks/s   ({our_rate / one_rate:.2f}x)")
    print(
        f"  bare session, batches of EMBEDDING_BATCH_SIZE={settings.embedding_batch_size}, in order:  "
        f"{batch_rate:.1f} chunks/s   ({our_rate / batch_rate:.2f}x; resident +{batch_growth:.0f} MiB more)"
    )

    from rag.embedders.local import SentenceTransformerEmbedder

    torch_embedder = await SentenceTransformerEmbedder.load(settings.embedding_model, settings.embedding_batch_size)
    await torch_embedder.embed([QUESTION])
    times = []
    for _ in range(50):
        started = time.perf_counter()
        await torch_embedder.embed([QUESTION])
        times.append(time.perf_counter() - started)
    started = time.perf_counter()
    reference = await torch_embedder.embed(texts)
    torch_rate = len(texts) / (time.perf_counter() - started)
    cosine = float(np.min(np.sum(vectors * reference, axis=1)))
    print(
        f"torch backend (sentence-transformers):  question p50 {statistics.median(times) * 1000:.2f} ms, "
        f"ingestion {torch_rate:.1f} chunks/s; lowest cosine to ONNX over the chunks {cosine:.6f}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        rss = default_service_rss(Path(tmp))
    with tempfile.TemporaryDirectory() as tmp:
        loaded = default_service_rss(Path(tmp), local_keep_alive_seconds="-1")
    print(
        f"service resident memory after start-up (defaults: the local model loads for the first answer): {rss:.0f} MiB"
        f"   with the local model loaded (LOCAL_KEEP_ALIVE_SECONDS=-1): {loaded:.0f} MiB"
    )


if __name__ == "__main__":
    # On uvloop, as in the service (uvicorn runs on it): the hop to the embedder's thread and back goes through the
    # event loop, and asyncio's own loop made it about 0.1 ms dearer (0.46 against 0.37 ms over the bare session,
    # three runs each).
    uvloop.run(run())

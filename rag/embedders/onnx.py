"""The default embedder: the bundled all-MiniLM-L6-v2 as one ONNX graph run by ONNX Runtime, tokenized by
`tokenizers`. torch is never imported here (only `rag/embedders/onnx_export.py` needs it, once, to produce the graph).

Threads, chosen for serving on a few cores. Questions and ingestion want different things, so each has its session:
- **Questions** (EMBEDDING_THREADS, default 2, capped at the CPU count): a question's pass is a few small matrix
  products per layer, too short to share between cores without spinning. ONNX Runtime's workers spin between the
  operators of a pass (handing work over through a futex instead cost as much as it saved: 4.27 against 4.48 ms)
  and stop as soon as the pass ends (`session.force_spinning_stop`), so an idle service burns nothing.
- **Ingestion** (one thread per pass, one pass per core at once): many passes in parallel use the cores better than
  one pass split across them (two one-thread passes side by side ingested about 50 chunks/s here, one two-thread
  pass at a time about 40). An ingestion is whatever is embedded to be stored (`embed_documents`, however few the
  texts), or an `embed` of more than a few texts. Its session is opened on the first one (about 0.3 s, and 40 MiB
  for its repacked weights) and closed a minute after the last one, with the arena its passes grew and the pages
  of the embedding table it read: a service that only answers questions never holds it, and one that ingests now
  and then gets the memory back.

The bare session on one question, p50 (p90), two runs on the 2-core machine, with other processes keeping cores busy:

| other busy processes | 1 thread | 2 threads |
|---|---|---|
| none | 3.73-4.13 (4.05-4.40) ms | 2.68-2.69 (2.90-3.02) ms |
| 1 | 3.76-3.83 (4.05-4.13) ms | 3.23-3.67 (6.73-9.38) ms |
| 2 (every core taken) | 4.36-4.84 (12.8) ms | 7.74-8.58 (12.6-13.5) ms |

With every core taken a question's pass takes about 1.8 times as long at the median as with one thread, the same
at p90: a cost, but not the pathology of torch's OpenMP pool (17 times slower per question with two threads under
contention). Questions have a lane of their own (one batch at a time, coalesced), so an ingestion of thousands of
chunks, which fills the ingestion lane, never makes a question wait behind it.

Ingestion batches are formed after sorting the texts by length, so that each thread gets texts of about the same
length; the vectors are put back in the caller's order.

Each forward pass holds at most FORWARD_PASS_TOKENS padded tokens: a batch handed to `_run` is cut into passes
of texts of about the same length. Attention's memory grows with texts x length^2, and ONNX Runtime's memory arena
keeps what its largest pass needed for the life of the process. Passes of 64 chunks of 256 tokens (the batches
before this) left 1.6 GiB resident per ingestion thread after the first ingestion, and ran slower, their attention
tensors far outside the caches: 256 SciFact chunks of up to 1,000 characters, one thread, in one run:

| padded tokens per pass | chunks/s | resident after |
|---|---|---|
| 16,384 (64 chunks) | 11.7 | +1,622 MiB |
| 1,024 | 15.2 | +152 MiB |
| 256 (one chunk) | 20.3 | +77 MiB |
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from llm.memory import release_free_memory
from rag.embedders.base import resolve_model_path
from rag.embedders.local import LocalEmbedder
from rag.embedders.onnx_export import Precision, ensure_graph
from rag.errors import EmbeddingError

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length; a model's own sentence_bert_config.json wins
FORWARD_PASS_TOKENS = 256  # padded tokens per forward pass, at most (one text longer than this goes alone)


def _max_tokens(model_dir: Path) -> int:
    try:
        config = json.loads((model_dir / "sentence_bert_config.json").read_text(encoding="utf-8"))
        return int(config.get("max_seq_length", DEFAULT_MAX_TOKENS))
    except (OSError, ValueError):
        return DEFAULT_MAX_TOKENS


class OnnxEmbedder(LocalEmbedder):
    # The ingestion session and the arena its passes grew hold about 130 MiB; a service that ingests now and then
    # gets them back a minute after its last ingestion, and pays about 0.3 s to open the session at the next one.
    INGESTION_SESSION_IDLE_SECONDS = 60.0

    def __init__(
        self, session: Any, tokenizer: Any, model_name: str, dimension: int, batch_size: int, graph: Path, threads: int
    ) -> None:
        super().__init__(batch_size, anyio.CapacityLimiter(1), anyio.CapacityLimiter(os.cpu_count() or 1))
        self._session = session
        self._tokenizer = tokenizer
        self._graph = graph
        # Ingestion's one-thread session: the questions' own when that is one thread too, else opened on first use
        # and closed again once no ingestion has run for INGESTION_SESSION_IDLE_SECONDS.
        self._ingestion_session: Any = session if threads == 1 else None
        self._ingestion_session_lock = threading.Lock()
        self._ingestions_running = 0
        self._idle_timer: asyncio.TimerHandle | None = None
        self.model_name = model_name
        self.dimension = dimension
        self._background: ThreadPoolExecutor | None = None

    def run_below(self, nice: int) -> None:
        """Run this embedder's ingestion passes in threads of their own at `nice` (Linux: a thread's own priority),
        so that a background job's embedding (a space being built) yields the cores to questions whenever they
        want them, and takes them whole otherwise. Threads cannot be raised back without privilege, hence their own."""

        def lower() -> None:
            with contextlib.suppress(OSError):  # not Linux, or not allowed: the default priority
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)

        self._background = ThreadPoolExecutor(os.cpu_count() or 1, "embed-background", initializer=lower)

    @classmethod
    async def load(
        cls, model_name: str, onnx_dir: Path, batch_size: int, threads: int = 2, precision: Precision = "float32"
    ) -> OnnxEmbedder:
        """`threads`: the cores a question's forward pass may use, capped at the CPU count. `precision`: int8 runs
        the quantized graph, whose vectors a store takes for another model's (`model_name` + "@int8")."""
        return await anyio.to_thread.run_sync(cls._open, model_name, onnx_dir, batch_size, threads, precision)

    @classmethod
    def _open(
        cls, model_name: str, onnx_dir: Path, batch_size: int, threads: int, precision: Precision
    ) -> OnnxEmbedder:
        model_dir = Path(resolve_model_path(model_name))
        if not model_dir.is_dir():
            raise EmbeddingError(
                f"the ONNX backend needs a local model directory, and {model_name!r} is not one: "
                "give EMBEDDING_MODEL a path, or set EMBEDDER_BACKEND=torch"
            )
        graph = ensure_graph(model_dir, onnx_dir, model_name, precision)
        if precision != "float32":
            # Not the float32 vectors (a mean cosine of 0.99 to them): another model to a store, which then refuses
            # to mix them, and an embedding space moves a store from one to the other.
            model_name = f"{model_name}@{precision}"

        from tokenizers import Tokenizer

        threads = min(threads, os.cpu_count() or 1)
        session = open_session(graph, threads)
        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        tokenizer.enable_truncation(_max_tokens(model_dir))
        tokenizer.no_padding()  # the file may ask for padding; `_run` pads each forward pass to its own length
        probe = cls(session, tokenizer, model_name, 0, batch_size, graph, threads)
        dimension = int(probe._encode(["dimension probe"]).shape[1])
        return cls(session, tokenizer, model_name, dimension, batch_size, graph, threads)

    def _encode(self, texts: list[str]) -> np.ndarray:
        """Questions (and `embed` calls of a few texts): the session whose passes use EMBEDDING_THREADS cores."""
        return self._run(self._session, texts)

    def _encode_ingestion(self, texts: list[str]) -> np.ndarray:
        """One batch of an ingestion, in a worker thread: the one-thread session, opened the first time."""
        with self._ingestion_session_lock:
            if self._ingestion_session is None:
                self._ingestion_session = open_session(self._graph, 1)
            session = self._ingestion_session
        return self._run(session, texts)

    def _close_ingestion_session(self) -> None:
        """In a worker thread: drop the ingestion session (a pass still running keeps it until it ends) and hand
        the memory it freed back to the system."""
        with self._ingestion_session_lock:
            if self._ingestions_running:  # one started after the timer fired: it keeps the session
                return
            session, self._ingestion_session = self._ingestion_session, None
        del session
        release_free_memory()

    def _close_if_idle(self) -> None:
        self._idle_timer = None
        if self._ingestions_running == 0 and self._ingestion_session is not None:
            asyncio.get_running_loop().run_in_executor(None, self._close_ingestion_session)

    def _run(self, session: Any, texts: list[str]) -> np.ndarray:
        """One batch through the graph, in forward passes of at most FORWARD_PASS_TOKENS padded tokens, each of
        texts of about the same length; the vectors come back in the order of `texts`."""
        token_ids = [encoding.ids for encoding in self._tokenizer.encode_batch(texts)]
        out: np.ndarray | None = None
        for group in forward_passes([len(ids) for ids in token_ids], FORWARD_PASS_TOKENS):
            longest = len(token_ids[group[-1]])
            ids = np.zeros((len(group), longest), dtype=np.int64)
            mask = np.zeros((len(group), longest), dtype=np.int64)
            for row, index in enumerate(group):
                ids[row, : len(token_ids[index])] = token_ids[index]
                mask[row, : len(token_ids[index])] = 1
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            (vectors,) = session.run(None, feed)
            self.forward_passes += 1
            if out is None:
                out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
            out[group] = vectors
        assert out is not None  # `texts` is never empty here
        return out

    async def _encode_many(self, texts: list[str]) -> np.ndarray:
        """Ingestion: batches of similar lengths, one per core at once, in the caller's order."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        batches = [order[i : i + self._batch_size] for i in range(0, len(order), self._batch_size)]
        out = np.empty((len(texts), self.dimension), dtype=np.float32)

        async def run(batch: list[int]) -> None:
            chosen = [texts[i] for i in batch]
            if self._background is not None:
                async with self._ingest_lane:
                    vectors = await asyncio.get_running_loop().run_in_executor(
                        self._background, self._encode_ingestion, chosen
                    )
            else:
                vectors = await anyio.to_thread.run_sync(self._encode_ingestion, chosen, limiter=self._ingest_lane)
            out[batch] = vectors

        self._ingestions_running += 1
        try:
            async with anyio.create_task_group() as group:
                for batch in batches:
                    group.start_soon(run, batch)
        finally:
            self._ingestions_running -= 1
            if self._ingestion_session is not self._session:  # its own session (None while closed), not the questions'
                if self._idle_timer is not None:
                    self._idle_timer.cancel()
                loop = asyncio.get_running_loop()
                self._idle_timer = loop.call_later(self.INGESTION_SESSION_IDLE_SECONDS, self._close_if_idle)
        return out

    async def aclose(self) -> None:
        await super().aclose()
        if self._background is not None:
            self._background.shutdown(wait=False)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._session = self._ingestion_session = None


def open_session(graph: Path, threads: int) -> Any:
    """An ONNX Runtime session on `graph` whose forward passes use `threads` cores."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Workers spin between the operators of a pass (that is where a second core pays off) and stop when it ends.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])


def forward_passes(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """The indices of texts of these token lengths, shortest first, cut into groups whose padded size (texts x
    longest) stays within `max_tokens`; a text longer than that is a group of its own."""
    groups: list[list[int]] = []
    group: list[int] = []
    for index in sorted(range(len(lengths)), key=lengths.__getitem__):
        if group and (len(group) + 1) * lengths[index] > max_tokens:
            groups.append(group)
            group = []
        group.append(index)
    if group:
        groups.append(group)
    return groups

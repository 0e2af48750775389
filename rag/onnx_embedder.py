"""The default embedder: the bundled all-MiniLM-L6-v2 as one ONNX graph run by ONNX Runtime, tokenized by
`tokenizers`. torch is never imported here (only `rag/onnx_export.py` needs it, once, to produce the graph).

Threads, chosen for serving on a few cores: the session runs each batch on the calling thread alone
(`intra_op_num_threads=1`). Parallelism comes from running several batches at once instead, one per core, in
worker threads: no thread pool spins waiting for work, so a busy machine slows an encode down in proportion, never
pathologically (torch with two intra-op threads under contention took 17 times longer per question). Questions
have a lane of their own (one batch at a time, coalesced), so an ingestion of thousands of chunks, which fills
the ingestion lane, never makes a question wait behind it.

Ingestion batches are formed after sorting the texts by length, so that each thread gets texts of about the same
length; the vectors are put back in the caller's order.

Each forward pass holds at most FORWARD_PASS_TOKENS padded tokens: a batch handed to `_encode` is cut into passes
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

import json
import logging
import os
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from rag.embedder import LocalEmbedder, resolve_model_path
from rag.errors import EmbeddingError
from rag.onnx_export import export, onnx_file

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
    def __init__(self, session: Any, tokenizer: Any, model_name: str, dimension: int, batch_size: int) -> None:
        cores = os.cpu_count() or 1
        super().__init__(batch_size, anyio.CapacityLimiter(1), anyio.CapacityLimiter(cores))
        self._session = session
        self._tokenizer = tokenizer
        self.model_name = model_name
        self.dimension = dimension

    @classmethod
    async def load(cls, model_name: str, onnx_dir: Path, batch_size: int) -> OnnxEmbedder:
        return await anyio.to_thread.run_sync(cls._open, model_name, onnx_dir, batch_size)

    @classmethod
    def _open(cls, model_name: str, onnx_dir: Path, batch_size: int) -> OnnxEmbedder:
        model_dir = Path(resolve_model_path(model_name))
        if not model_dir.is_dir():
            raise EmbeddingError(
                f"the ONNX backend needs a local model directory, and {model_name!r} is not one: "
                "give EMBEDDING_MODEL a path, or set EMBEDDER_BACKEND=torch"
            )
        graph = onnx_file(onnx_dir, model_name)
        if not graph.exists():
            logger.info("exporting %s to ONNX (once): %s", model_name, graph)
            export(model_dir, graph)

        import onnxruntime
        from tokenizers import Tokenizer

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        tokenizer.enable_truncation(_max_tokens(model_dir))
        tokenizer.no_padding()  # the file may ask for padding; `_encode` pads each forward pass to its own length
        probe = cls(session, tokenizer, model_name, 0, batch_size)
        dimension = int(probe._encode(["dimension probe"]).shape[1])
        return cls(session, tokenizer, model_name, dimension, batch_size)

    def _encode(self, texts: list[str]) -> np.ndarray:
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
            (vectors,) = self._session.run(None, feed)
            self.forward_passes += 1
            if out is None:
                out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
            out[group] = vectors
        assert out is not None  # `texts` is never empty here
        return out

    async def _encode_many(self, texts: list[str]) -> np.ndarray:
        """Ingestion: batches of similar lengths, several at once (one per core), in the caller's order."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        batches = [order[i : i + self._batch_size] for i in range(0, len(order), self._batch_size)]
        out = np.empty((len(texts), self.dimension), dtype=np.float32)

        async def run(batch: list[int]) -> None:
            vectors = await anyio.to_thread.run_sync(self._encode, [texts[i] for i in batch], limiter=self._ingest_lane)
            out[batch] = vectors

        async with anyio.create_task_group() as group:
            for batch in batches:
                group.start_soon(run, batch)
        return out

    async def aclose(self) -> None:
        await super().aclose()
        self._session = None


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

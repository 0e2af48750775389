"""Embedders: the bundled model in-process (ONNX Runtime by default, or torch), any OpenAI-compatible embeddings
server, or a class of your own; `build_embedder` is the one factory that picks among them from settings."""

from rag.embedders.factory import build_embedder

__all__ = ["build_embedder"]

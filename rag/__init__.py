"""Retrieval-augmented generation: embedder, chunker, vector store, retriever and the chat pipeline.

Nothing in this package knows about HTTP; `api/` renders what the pipeline yields.
"""

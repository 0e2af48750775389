"""An embedder of your own, the simple way: a class with `embed_query(text) -> list[float]` (and, optionally,
`embed_documents(texts)`). No import from the service is needed; it adapts the class itself.

    EMBEDDER=examples.plugins.hashing_embedder:HashingEmbedder EMBEDDER_OPTIONS='{"dimension": 512}'

This one hashes words into buckets (a bag of words): no model to download, and texts that share words come out
close. Swap in a call to your own model or service.
"""

from __future__ import annotations

import hashlib
import re

WORD = re.compile(r"[a-z0-9]+")


class HashingEmbedder:
    def __init__(self, dimension: int = 256) -> None:
        self.dimension = dimension
        self.model_name = f"hashing-{dimension}"  # the store records it, and refuses vectors of another model

    def embed_query(self, text: str) -> list[float]:
        vector = [0.0] * self.dimension
        for word in WORD.findall(text.lower()):
            digest = hashlib.blake2b(word.encode(), digest_size=4).digest()
            vector[int.from_bytes(digest, "big") % self.dimension] += 1.0
        vector[0] += 1e-3  # never all zeros
        return vector

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self.embed_query(text) for text in texts]

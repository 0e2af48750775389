"""An immutable view of the embedded store at one generation: its segments, every row's chunk key, and which rows
are tombstoned. Searches read one; each write or catch-up builds a new one and swaps the reference, so a search
never sees a write half applied."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rag.stores.segments import Segment

SPAN_SLACK = 2  # rows of a segment spanning at most this many times their number are scored over the span


# A ranked row: (row, similarity or BM25 score, legs that found it, BM25 score, fused score)
_Ranked = tuple[int, float, tuple[str, ...], float | None, float | None]


@dataclass(frozen=True, eq=False)
class Snapshot:
    generation: int
    segments: tuple[Segment, ...]
    chunks: int
    documents: int
    offsets: np.ndarray  # row where each segment starts in the concatenated view, and the total at the end
    keys: np.ndarray  # every row's chunk key, in row order
    sorted_keys: np.ndarray  # every chunk key, ascending (segments hold disjoint, ordered key ranges)
    key_rows: np.ndarray  # the row of each of sorted_keys
    dead_rows: np.ndarray  # rows whose chunk is tombstoned, ascending
    dead: tuple[np.ndarray, ...]  # the same, per segment, as local positions

    @classmethod
    def build(
        cls, generation: int, segments: tuple[Segment, ...], tombstones: np.ndarray, chunks: int, documents: int
    ) -> Snapshot:
        offsets = np.zeros(len(segments) + 1, dtype=np.int64)
        np.cumsum([s.rows for s in segments], out=offsets[1:])

        def joined(parts: list[np.ndarray]) -> np.ndarray:
            return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

        keys = joined([s.keys for s in segments])
        sorted_keys = joined([s.sorted_keys for s in segments])
        key_rows = joined([s.by_key + start for s, start in zip(segments, offsets.tolist(), strict=False)])
        positions = np.searchsorted(sorted_keys, tombstones)
        inside = positions < sorted_keys.shape[0]
        positions = positions[inside]
        dead_rows = np.sort(key_rows[positions[sorted_keys[positions] == tombstones[inside]]])
        bounds = np.searchsorted(dead_rows, offsets)
        dead = tuple(dead_rows[bounds[i] : bounds[i + 1]] - offsets[i] for i in range(len(segments)))
        return cls(generation, segments, chunks, documents, offsets, keys, sorted_keys, key_rows, dead_rows, dead)

    @property
    def rows(self) -> int:
        return int(self.offsets[-1])

    def rows_of_keys(self, keys: np.ndarray) -> np.ndarray:
        """Rows of the given chunk keys; -1 for a key this snapshot does not hold, or holds tombstoned."""
        if not self.sorted_keys.shape[0]:
            return np.full(keys.shape, -1, dtype=np.int64)
        positions = np.minimum(np.searchsorted(self.sorted_keys, keys), self.sorted_keys.shape[0] - 1)
        found = self.sorted_keys[positions] == keys
        rows = self.key_rows[positions]
        if self.dead_rows.shape[0]:
            at = np.minimum(np.searchsorted(self.dead_rows, rows), self.dead_rows.shape[0] - 1)
            found &= self.dead_rows[at] != rows
        return np.where(found, rows, -1)

    def scores_of(self, rows: np.ndarray, query: np.ndarray) -> np.ndarray:
        """Similarities of the given rows (ascending). Where a segment's rows lie close together, as a tenant's do,
        the product runs over their span in place, which costs less than gathering them into a copy first."""
        scores = np.empty(rows.shape[0], dtype=np.float32)
        bounds = np.searchsorted(rows, self.offsets)
        for s, segment in enumerate(self.segments):
            picked = rows[bounds[s] : bounds[s + 1]] - self.offsets[s]
            if not picked.shape[0]:
                continue
            low, high = int(picked[0]), int(picked[-1]) + 1
            if high - low <= SPAN_SLACK * picked.shape[0]:
                scores[bounds[s] : bounds[s + 1]] = (segment.vectors[low:high] @ query)[picked - low]
            else:
                scores[bounds[s] : bounds[s + 1]] = segment.vectors[picked] @ query
        return scores

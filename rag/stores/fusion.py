"""Fusion of the dense and keyword legs' rankings into one, shared by every backend.

Two methods, both standard: reciprocal rank fusion (Cormack et al., 2009), which looks only at ranks, and a convex
combination of min-max normalised scores. `bench/fusion.py` chose between them, and the weight, on SciFact's train
queries; the defaults below are its result (docs/benchmarks.md has the figures).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Literal, TypeVar

FusionMethod = Literal["rrf", "minmax"]
K = TypeVar("K", bound=Hashable)  # whatever identifies a candidate: a row, a chunk id

RRF_K = 60  # the constant of the original paper; it damps the head of each ranking
DEFAULT_METHOD: FusionMethod = "minmax"
DEFAULT_DENSE_WEIGHT = 0.7


def _normalised(scores: dict[K, float]) -> dict[K, float]:
    if not scores:
        return {}
    low, high = min(scores.values()), max(scores.values())
    span = high - low
    return {key: (value - low) / span if span > 0 else 1.0 for key, value in scores.items()}


def fuse(
    dense: dict[K, float],
    keyword: dict[K, float],
    method: FusionMethod = DEFAULT_METHOD,
    dense_weight: float = DEFAULT_DENSE_WEIGHT,
) -> list[tuple[K, float]]:
    """Every candidate of either leg with its fused score, best first.

    `dense` and `keyword` map a candidate to its score in that leg (higher is better); a candidate missing from a
    leg's list scores that leg's minimum (min-max) or no contribution (RRF).
    """
    fused: dict[K, float] = {}
    if method == "rrf":
        for weight, scores in ((dense_weight, dense), (1.0 - dense_weight, keyword)):
            ranked = sorted(scores, key=lambda key: scores[key], reverse=True)
            for rank, key in enumerate(ranked):
                fused[key] = fused.get(key, 0.0) + weight / (RRF_K + rank + 1)
    else:
        for weight, scores in ((dense_weight, _normalised(dense)), (1.0 - dense_weight, _normalised(keyword))):
            for key, value in scores.items():
                fused[key] = fused.get(key, 0.0) + weight * value
        for key in dense.keys() | keyword.keys():
            fused.setdefault(key, 0.0)
    return sorted(fused.items(), key=lambda item: item[1], reverse=True)

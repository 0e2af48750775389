"""Ranking figures at rank 10, for one question's ranked document ids against its relevant ones."""

from __future__ import annotations

import math

AT = 10  # the rank the figures are taken at


def ndcg_at(ranked: list[str], relevant: dict[str, int], k: int = AT) -> float:
    dcg = sum(relevant.get(doc, 0) / math.log2(i + 2) for i, doc in enumerate(ranked[:k]))
    ideal = sorted(relevant.values(), reverse=True)[:k]
    return dcg / sum(grade / math.log2(i + 2) for i, grade in enumerate(ideal))


def reciprocal_rank(ranked: list[str], relevant: dict[str, int], k: int = AT) -> float:
    return next((1.0 / (i + 1) for i, doc in enumerate(ranked[:k]) if relevant.get(doc, 0) > 0), 0.0)


def recall_at(ranked: list[str], relevant: dict[str, int], k: int = AT) -> float:
    return sum(1 for doc in ranked[:k] if doc in relevant) / len(relevant)


def percentile_ms(seconds: list[float], q: float) -> float:
    if not seconds:
        return 0.0
    ordered = sorted(seconds)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000

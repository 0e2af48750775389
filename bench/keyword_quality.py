"""The keyword leg's quality beside exhaustive BM25 on the same tokenisation: stopping early must not cost recall.

    .venv/bin/python bench/keyword_quality.py

SciFact's corpus ("title text", cut by the service's chunker at its default size) goes into the embedded store's
keyword index (`rag/stores/keyword_index.py`, Tantivy, which skips postings that cannot enter the top k). The
reference scores every chunk that holds any query term, in Python, with the same analyser's tokens and the same
BM25 (k1 1.2, b 0.75, Lucene's idf). For SciFact's test claims, each side ranks documents by their best chunk among
its top 100 chunks; prints nDCG@10 and recall@10 of both, their difference, how many top-10 lists are identical, and
the time per question of each.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.retrieval import DEFAULT_DATASET, ndcg_at_k, read_jsonl, read_qrels, recall_at_k
from config import Settings
from rag.chunking import split_text
from rag.stores.keyword_index import KeywordIndex

K1, B = 1.2, 0.75
POOL = 100  # chunks each side ranks, as the hybrid search takes from each leg


class ExhaustiveBM25:
    """Every chunk that holds a query term, scored: what a keyword leg without early termination does."""

    def __init__(self, index: KeywordIndex, texts: list[str]) -> None:
        analyser = index._analyzer  # the very analyser the index tokenises chunk text with
        self.lengths: list[int] = []
        self.postings: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for key, text in enumerate(texts):
            tokens = analyser.analyze(text)
            self.lengths.append(len(tokens))
            for term, tf in Counter(tokens).items():
                self.postings[term].append((key, tf))
        self.average = sum(self.lengths) / len(self.lengths)

    def search(self, terms: list[str], limit: int) -> list[tuple[int, float]]:
        scores: dict[int, float] = defaultdict(float)
        n = len(self.lengths)
        for term in terms:
            postings = self.postings.get(term, [])
            idf = math.log(1 + (n - len(postings) + 0.5) / (len(postings) + 0.5))
            for key, tf in postings:
                norm = K1 * (1 - B + B * self.lengths[key] / self.average)
                scores[key] += idf * tf * (K1 + 1) / (tf + norm)
        return sorted(scores.items(), key=lambda item: item[1], reverse=True)[:limit]


def documents(found: list[tuple[int, float]], owner: list[str]) -> list[str]:
    ranked: list[str] = []
    for key, _ in found:  # best first: a document's first chunk in the list is its best
        if owner[key] not in ranked:
            ranked.append(owner[key])
    return ranked


def main() -> None:
    settings = Settings()
    corpus = read_jsonl(DEFAULT_DATASET / "corpus.jsonl")
    queries = {q["_id"]: q["text"] for q in read_jsonl(DEFAULT_DATASET / "queries.jsonl")}
    qrels = read_qrels(DEFAULT_DATASET / "qrels_test.tsv")
    texts, owner = [], []
    for doc in corpus:
        for piece in split_text(
            f"{doc.get('title', '')} {doc['text']}".strip(), settings.chunk_size, settings.chunk_overlap
        ):
            texts.append(piece)
            owner.append(doc["_id"])
    with tempfile.TemporaryDirectory() as tmp:
        index = KeywordIndex(Path(tmp))
        index.rebuild((key, text, None) for key, text in enumerate(texts))
        exhaustive = ExhaustiveBM25(index, texts)
        print(f"SciFact: {len(corpus):,} documents, {len(texts):,} chunks, {len(qrels)} test claims")
        results: dict[str, list[tuple[float, float, list[str]]]] = {"keyword index": [], "exhaustive BM25": []}
        timings: dict[str, float] = {"keyword index": 0.0, "exhaustive BM25": 0.0}
        for query_id, relevant in qrels.items():
            text = queries[query_id]
            for name, search in (
                ("keyword index", lambda text=text: index.search(text, POOL)),
                ("exhaustive BM25", lambda text=text: exhaustive.search(index.terms(text), POOL)),
            ):
                started = time.perf_counter()
                ranked = documents(search(), owner)
                timings[name] += time.perf_counter() - started
                results[name].append((ndcg_at_k(ranked, relevant, 10), recall_at_k(ranked, relevant, 10), ranked[:10]))
        index.close()
    means = {}
    for name, rows in results.items():
        means[name] = sum(r[0] for r in rows) / len(rows)
        recall = sum(r[1] for r in rows) / len(rows)
        per_query = timings[name] / len(rows) * 1000
        print(f"  {name:<16} nDCG@10 {means[name]:.4f}  recall@10 {recall:.4f}  {per_query:8.2f} ms a question")
    same = sum(a[2] == b[2] for a, b in zip(results["keyword index"], results["exhaustive BM25"], strict=True))
    print(
        f"  difference {means['keyword index'] - means['exhaustive BM25']:+.4f} nDCG@10 (target within 0.005); "
        f"identical top-10 documents for {same} of {len(qrels)} claims"
    )


if __name__ == "__main__":
    main()

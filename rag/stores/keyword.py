"""The keyword leg's query: a question's searchable words.

Each word is a term of its own, never query syntax, and a chunk matching any of them scores (the keyword index joins
them by OR). Common English words are dropped: they carry almost no weight in BM25, and a term like "the" matches
nearly every chunk, whose postings the index would then have to read.
"""

from __future__ import annotations

import re

MAX_TERMS = 32

# The stop words of Lucene's English analyzer (what BM25 baselines such as Pyserini's use), plus question words.
STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "but",
        "by",
        "for",
        "if",
        "in",
        "into",
        "is",
        "it",
        "no",
        "not",
        "of",
        "on",
        "or",
        "such",
        "that",
        "the",
        "their",
        "then",
        "there",
        "these",
        "they",
        "this",
        "to",
        "was",
        "will",
        "with",
        "what",
        "which",
        "who",
        "whom",
        "whose",
        "when",
        "where",
        "why",
        "how",
        "does",
        "do",
        "did",
        "can",
        "could",
        "should",
        "would",
        "i",
        "you",
        "we",
        "me",
        "my",
        "our",
        "your",
        "he",
        "she",
        "his",
        "her",
        "its",
        "them",
        "from",
        "has",
        "have",
        "had",
        "been",
        "being",
        "am",
    ]
)

_WORD = re.compile(r"\w+", re.UNICODE)


def query_terms(text: str) -> list[str]:
    """The question's searchable words, lower-cased, without stop words or repeats, at most MAX_TERMS."""
    terms: list[str] = []
    for word in _WORD.findall(text.lower()):
        if word not in STOP_WORDS and word not in terms:
            terms.append(word)
    return terms[:MAX_TERMS]

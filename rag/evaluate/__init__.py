"""`python -m rag.evaluate QUESTIONS.jsonl`: retrieval and answers measured on your own questions (docs/evaluation.md).

Each line of the file is a question with the ids of the documents that answer it, the expected answer, or both:

    {"question": "When does the heron nest?", "documents": ["heron-guide"]}
    {"question": "...", "documents": {"doc-a": 2, "doc-b": 1}}      (graded: higher is more relevant)
    {"question": "...", "expected_answer": "In March, in tall trees."}

Retrieval (questions with documents): every question searched in each mode (`--modes`), at each `--top-k` and, in
hybrid mode, each `--fusion-weight` (the dense leg's share); with `--corpus FILE` and `--chunk-size`, in a store of
that corpus per chunk size. Documents are ranked by their best chunk. Printed as a table, a row per setting: hit rate
(a relevant document in the first 10), MRR@10, nDCG@10, recall@10, the search's p50 and p95, questions with no result.

Answers (`--answers`, questions with an expected answer): each answered through the real pipeline and graded by the
configured model against the expected answer (correct, partial, incorrect), and whether it cites a right source.

Against the service's own store and model (the settings' DATA_DIR or DATABASE_URL, the active embedding space), or a
running instance over HTTP (`--url`, `--api-key`). `--json FILE` writes the report for CI; `--min-ndcg`, `--min-mrr`,
`--min-hit-rate` (each mode at the baseline: the first `--top-k`, the first `--fusion-weight`, the store as it is or
the first `--chunk-size`) and `--min-accuracy` make the command exit 1 when missed. A file that cannot be read exits 2,
naming the line.
"""

from rag.evaluate.metrics import ndcg_at, recall_at, reciprocal_rank
from rag.evaluate.questions import BadQuestions, Question, read_questions

__all__ = ["BadQuestions", "Question", "ndcg_at", "read_questions", "recall_at", "reciprocal_rank"]

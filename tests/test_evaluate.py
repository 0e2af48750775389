"""`python -m rag.evaluate` (rag/evaluate/), run as a command against a live service over HTTP and against the
service's own store: the figures are the ones the ranks give, a sweep gives a row per setting (top_k, fusion weight,
chunk size from a corpus), answers are graded by the configured model (the fake upstream, which sees the grader's
prompt), a missed threshold exits 1 with a JSON report saying so, and a bad questions file exits 2 naming the line."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from main import create_app
from rag.evaluate import ndcg_at, reciprocal_rank
from tests.conftest import make_settings
from tests.fake_upstream import Script
from tests.servers import serve

PROJECT_DIR = Path(__file__).resolve().parent.parent
HASHING = {"embedder": "examples.plugins.hashing_embedder:HashingEmbedder", "embedder_options": {"dimension": 64}}
DOCUMENTS = {
    "heron": "The grey heron nests in tall alder trees beside the reservoir every March.",
    "kingfisher": "A kingfisher dives for minnows from the willow branch at dawn.",
    "otter": "Otters hunt eels in the estuary mud at night.",
}
QUESTIONS = [
    {"question": "Where does the grey heron nest in March?", "documents": ["heron"]},
    {"question": "What does the kingfisher dive for at dawn?", "documents": {"kingfisher": 2}},
    {"question": "Which bird sings the dawn chorus first?", "documents": ["nightingale"]},  # not stored
]


def evaluate(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rag.evaluate", *args],
        capture_output=True, text=True, timeout=300, cwd=PROJECT_DIR, env={**os.environ, **(env or {})},
    )  # fmt: skip


def write_questions(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def test_the_figures_against_a_running_instance_and_the_own_store(tmp_path: Path, upstream: Any) -> None:
    questions = write_questions(tmp_path / "questions.jsonl", QUESTIONS)
    settings = make_settings(tmp_path / "data", upstream.url, api_keys=["k1"], similarity_threshold=0.0, **HASHING)
    with serve(create_app(settings)) as url:
        body = {"documents": list(DOCUMENTS.values()), "ids": list(DOCUMENTS)}
        httpx.post(f"{url}/api/v1/documents/add", json=body, headers={"Authorization": "Bearer k1"}).raise_for_status()
        report_path = tmp_path / "report.json"
        done = evaluate([str(questions), "--url", url, "--api-key", "k1", "--modes", "keyword",
                         "--json", str(report_path), "--min-hit-rate", "0.9"])  # fmt: skip
        assert done.returncode == 1, done.stderr  # two of three found: 0.667 < 0.9
        assert "missed: keyword: hit_rate 0.6667 < 0.9" in done.stderr
        report = json.loads(report_path.read_text())
        keyword = report["modes"][0]
        assert keyword["mode"] == "keyword" and keyword["questions"] == 3
        # each found document is the first of its question's ranking: every figure is 2 of 3
        for name in ("hit_rate", "mrr", "ndcg", "recall"):
            assert keyword[name] == pytest.approx(2 / 3), name
        assert report["missed"] == ["keyword: hit_rate 0.6667 < 0.9"]
        passing = evaluate([str(questions), "--url", url, "--api-key", "k1", "--min-hit-rate", "0.6"])
        assert passing.returncode == 0, passing.stderr
        assert {line.split()[0] for line in passing.stdout.splitlines()[2:]} == {"dense", "keyword", "hybrid"}
        refused = evaluate([str(questions), "--url", url, "--modes", "keyword"])  # no key
        assert refused.returncode != 0 and "401" in refused.stderr
    # the service's own store, from the same settings, with the service stopped
    env = {
        "DATA_DIR": str(tmp_path / "data"),
        "EMBEDDER": HASHING["embedder"],
        "EMBEDDER_OPTIONS": json.dumps(HASHING["embedder_options"]),
        "SIMILARITY_THRESHOLD": "0",
    }
    own = evaluate([str(questions), "--modes", "keyword", "--json", str(tmp_path / "own.json")], env)
    assert own.returncode == 0, own.stderr
    assert json.loads((tmp_path / "own.json").read_text())["modes"][0]["hit_rate"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ('{"question": "a", "documents": ["x"]}\nnot json\n', ":2: not JSON"),
        ('{"question": "", "documents": ["x"]}\n', ':1: each line needs "question"'),
        ('{"question": "a", "documents": []}\n', ':1: "documents" must be'),
        ('{"question": "a", "documents": {"x": 0}}\n', ':1: "documents" must be'),
        ('{"question": "a"}\n', ':1: needs "documents", "expected_answer" or both'),
        ('{"question": "a", "rated_answer": "b"}\n', "format=questions: fill them in"),
        ('{"question": "a", "expected_answer": ""}\n', ':1: "expected_answer" must be'),
        ("\n\n", "no questions"),
    ],
)
def test_a_bad_questions_file_exits_2_naming_the_line(tmp_path: Path, content: str, named: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    done = evaluate([str(path), "--url", "http://127.0.0.1:9"])
    assert done.returncode == 2 and named in done.stderr, done.stderr


def test_bad_options_are_refused_by_name(tmp_path: Path) -> None:
    questions = write_questions(tmp_path / "q.jsonl", QUESTIONS[:1])
    done = evaluate([str(questions), "--modes", "psychic"])
    assert done.returncode == 2 and "--modes: unknown psychic" in done.stderr
    done = evaluate([str(questions), "--top-k", "3"])
    assert done.returncode == 2 and "--top-k: each value must be at least 10" in done.stderr
    done = evaluate([str(questions), "--fusion-weight", "0.5,1.5"])
    assert done.returncode == 2 and "--fusion-weight: each value must be between 0 and 1" in done.stderr
    done = evaluate([str(questions), "--chunk-size", "400"])
    assert done.returncode == 2 and "--chunk-size and --corpus go together" in done.stderr


def serve_with_documents(tmp_path: Path, upstream: Any) -> Any:
    settings = make_settings(tmp_path / "data", upstream.url, api_keys=["k1"], similarity_threshold=0.0, **HASHING)
    return serve(create_app(settings))


def add_documents(url: str) -> None:
    body = {"documents": list(DOCUMENTS.values()), "ids": list(DOCUMENTS)}
    httpx.post(f"{url}/api/v1/documents/add", json=body, headers={"Authorization": "Bearer k1"}).raise_for_status()


def test_a_sweep_gives_a_row_per_setting(tmp_path: Path, upstream: Any) -> None:
    questions = write_questions(tmp_path / "questions.jsonl", QUESTIONS)
    with serve_with_documents(tmp_path, upstream) as url:
        add_documents(url)
        report_path = tmp_path / "report.json"
        done = evaluate([str(questions), "--url", url, "--api-key", "k1", "--modes", "keyword,hybrid",
                         "--top-k", "10,20", "--fusion-weight", "0,1", "--json", str(report_path),
                         "--min-mrr", "0.6"])  # fmt: skip
        assert done.returncode == 0, done.stderr
        bad = httpx.get(f"{url}/api/v1/documents/search", params={"query": "heron", "fusion_weight": 1.5},
                        headers={"Authorization": "Bearer k1"})  # fmt: skip
        assert bad.status_code == 422 and "fusion_weight" in bad.json()["error"]["message"]
    report = json.loads(report_path.read_text())
    rows = {(r["mode"], r["top_k"], r["fusion_weight"]): r for r in report["sweep"]}
    assert set(rows) == {
        ("keyword", 10, None), ("keyword", 20, None),
        ("hybrid", 10, 0.0), ("hybrid", 10, 1.0), ("hybrid", 20, 0.0), ("hybrid", 20, 1.0),
    }  # fmt: skip
    # the baseline (first top_k, first weight) is what the thresholds and "modes" hold
    assert [(r["mode"], r["top_k"], r["fusion_weight"]) for r in report["modes"]] == [
        ("keyword", 10, None), ("hybrid", 10, 0.0),
    ]  # fmt: skip
    # at weight 0 the fusion ranks by the keyword leg alone: the keyword mode's figures
    assert rows[("hybrid", 10, 0.0)]["mrr"] == pytest.approx(rows[("keyword", 10, None)]["mrr"])
    header = done.stdout.splitlines()[1].split()
    assert header[:4] == ["mode", "top_k", "weight", "chunks"]


def test_chunk_sizes_are_measured_on_a_corpus_stored_again(tmp_path: Path) -> None:
    questions = write_questions(tmp_path / "questions.jsonl", QUESTIONS)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in DOCUMENTS.items()))
    env = {
        "DATA_DIR": str(tmp_path / "empty"),
        "EMBEDDER": HASHING["embedder"],
        "EMBEDDER_OPTIONS": json.dumps(HASHING["embedder_options"]),
        "SIMILARITY_THRESHOLD": "0",
    }
    report_path = tmp_path / "report.json"
    done = evaluate([str(questions), "--modes", "keyword", "--corpus", str(corpus), "--chunk-size", "100,200",
                     "--json", str(report_path)], env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = json.loads(report_path.read_text())["sweep"]
    assert [(r["chunk_size"], r["hit_rate"]) for r in rows] == [
        (100, pytest.approx(2 / 3)),
        (200, pytest.approx(2 / 3)),
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no id"}\n')
    done = evaluate([str(questions), "--corpus", str(bad), "--chunk-size", "200"], env)
    assert done.returncode == 2 and 'needs "id" (or "_id") and "text"' in done.stderr


def test_answers_are_graded_by_the_configured_model(tmp_path: Path, upstream: Any) -> None:
    lines = [
        {"question": "Where does the grey heron nest in March?", "documents": ["heron"],
         "expected_answer": "In tall alder trees beside the reservoir."},
        {"question": "What do otters hunt?", "expected_answer": "Eels."},
    ]  # fmt: skip
    questions = write_questions(tmp_path / "questions.jsonl", lines)
    grader = {"LLM_PROVIDER": "openai", "OPENAI_BASE_URL": upstream.url, "OPENAI_API_KEY": "test-key"}
    with serve_with_documents(tmp_path, upstream) as url:
        add_documents(url)
        # The fake upstream says the same to the service answering and to the grader: "correct [1]".
        upstream.reset(Script(tokens=["correct", " [1]"]))
        report_path = tmp_path / "report.json"
        done = evaluate([str(questions), "--url", url, "--api-key", "k1", "--answers", "--modes", "keyword",
                         "--json", str(report_path)], grader)  # fmt: skip
        assert done.returncode == 0, done.stderr
        graded = json.loads(report_path.read_text())
        prompts = [r["messages"][-1]["content"] for r in upstream.requests if "Answer to grade" in str(r["messages"])]
        assert (
            len(prompts) == 2
            and "Expected answer: Eels." in prompts[1]
            and "Answer to grade: correct [1]" in prompts[1]
        )
        upstream.reset(Script(tokens=["incorrect"]))
        failed = evaluate([str(questions), "--url", url, "--api-key", "k1", "--answers", "--modes", "keyword",
                           "--min-accuracy", "0.5"], grader)  # fmt: skip
    answers = graded["answers"]
    assert (answers["answered"], answers["accuracy"], answers["correct"]) == (2, 1.0, 2)
    # the heron answer cites source 1, the heron guide; the otter question names no documents
    assert [g["cites_right_source"] for g in graded["graded"]] == [True, None]
    assert answers["cites_right_source"] == 1.0
    assert failed.returncode == 1 and "answers: accuracy 0.0000 < 0.5" in failed.stderr
    assert "0 correct, 0 partial, 2 incorrect" in failed.stdout


def test_graded_ndcg_and_reciprocal_rank() -> None:
    relevant = {"a": 2, "b": 1}
    ideal = 2 + 1 / math.log2(3)
    assert ndcg_at(["b", "x", "a"], relevant) == pytest.approx((1 + 2 / math.log2(4)) / ideal)
    assert reciprocal_rank(["x", "y", "b"], relevant) == pytest.approx(1 / 3)
    assert reciprocal_rank(["x"] * 10 + ["a"], relevant) == 0.0  # past rank 10

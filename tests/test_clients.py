"""The README's Python and JavaScript clients, run as a user would, against the live service."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from config import PROJECT_DIR
from tests.fake_upstream import FakeUpstream, Script

# Newlines and a would-be terminator inside tokens: the wire format must carry them as text.
TOKENS = ["First line\n", "second line ", "data: [DONE]", " é✓"]


def test_python_client_prints_the_streamed_answer(live_url: str, upstream: FakeUpstream) -> None:
    upstream.reset(Script(tokens=TOKENS, delay=0.02))
    result = subprocess.run(
        [sys.executable, str(PROJECT_DIR / "examples" / "chat_client.py"), "hello?", "--url", live_url],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert result.stdout == "".join(TOKENS) + "\n"
    assert "[sources:" in result.stderr


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_javascript_client_prints_the_streamed_answer(live_url: str, upstream: FakeUpstream) -> None:
    upstream.reset(Script(tokens=TOKENS, delay=0.02))
    result = subprocess.run(
        ["node", str(PROJECT_DIR / "examples" / "chat_client.mjs"), "hello?", live_url],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert result.stdout.startswith("".join(TOKENS))
    assert "[sources:" in result.stdout


def test_python_client_reports_an_error_status(live_url: str, upstream: FakeUpstream) -> None:
    upstream.reset(Script(status=429, retry_after="3"))
    result = subprocess.run(
        [sys.executable, str(PROJECT_DIR / "examples" / "chat_client.py"), "hello?", "--url", live_url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert "HTTP 429 upstream_rate_limited" in result.stderr


@pytest.fixture
def two_files(tmp_path: Path) -> tuple[Path, Path]:
    from bench import sample_files

    good = tmp_path / "ferry.pdf"
    good.write_bytes(sample_files.pdf(["The client-test ferry sails at dawn.", "It returns at dusk."]))
    bad = tmp_path / "locked.pdf"
    bad.write_bytes(sample_files.encrypted_pdf("secret"))
    return good, bad


def test_python_upload_client_follows_the_job(live_url: str, two_files: tuple[Path, Path]) -> None:
    good, bad = two_files
    result = subprocess.run(
        [sys.executable, str(PROJECT_DIR / "examples" / "upload_client.py"), str(good), str(bad), "--url", live_url],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1  # one file failed
    assert "ferry.pdf: done, 2 chunks" in result.stdout
    assert "locked.pdf failed: cannot open the PDF: it is encrypted with a password" in result.stderr
    assert "running:" in result.stderr or "failed:" in result.stderr  # progress was printed


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_javascript_upload_client_follows_the_job(live_url: str, two_files: tuple[Path, Path]) -> None:
    good, bad = two_files
    result = subprocess.run(
        ["node", str(PROJECT_DIR / "examples" / "upload_client.mjs"), live_url, str(good), str(bad)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "ferry.pdf: done, 2 chunks" in result.stdout
    assert "locked.pdf failed: cannot open the PDF: it is encrypted with a password" in result.stdout

"""The README's Python and JavaScript clients, run as a user would, against the live service."""

from __future__ import annotations

import shutil
import subprocess
import sys

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

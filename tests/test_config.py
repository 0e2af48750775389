from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from config import PROJECT_DIR, Settings


def test_provider_defaults_to_local_without_key_or_url() -> None:
    assert Settings(_env_file=None).resolved_llm_provider == "local"


@pytest.mark.parametrize("values", [{"openai_api_key": "sk-x"}, {"openai_base_url": "http://127.0.0.1:1/v1"}])
def test_provider_defaults_to_openai_with_key_or_url(values: dict) -> None:
    assert Settings(_env_file=None, **values).resolved_llm_provider == "openai"


def test_explicit_provider_wins() -> None:
    assert Settings(_env_file=None, openai_api_key="sk-x", llm_provider="local").resolved_llm_provider == "local"


def test_seed_keys_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_MODEL", "deepseek-chat")
    monkeypatch.setenv("TOP_K_RESULTS", "7")
    monkeypatch.setenv("SIMILARITY_THRESHOLD", "0.5")
    monkeypatch.setenv("USE_OPENAI_EMBEDDINGS", "true")
    settings = Settings(_env_file=None)
    assert (settings.openai_model, settings.top_k_results, settings.similarity_threshold) == ("deepseek-chat", 7, 0.5)
    assert settings.use_openai_embeddings is True


def test_api_key_is_secret() -> None:
    settings = Settings(_env_file=None, openai_api_key="sk-very-secret")
    assert "sk-very-secret" not in repr(settings)


def test_relative_data_dir_is_anchored_to_the_project() -> None:
    assert Settings(_env_file=None, data_dir=Path("store-x")).data_dir == PROJECT_DIR / "store-x"


@pytest.mark.parametrize("values", [{"chunk_size": 100, "chunk_overlap": 100}, {"top_k_results": 60, "max_top_k": 50}])
def test_inconsistent_settings_are_refused(values: dict) -> None:
    with pytest.raises(ValidationError):
        Settings(_env_file=None, **values)


def test_env_example_lists_every_setting() -> None:
    example = (PROJECT_DIR / ".env.example").read_text()
    keys = {line.split("=", 1)[0] for line in example.splitlines() if "=" in line and not line.startswith("#")}
    assert keys == {name.upper() for name in Settings.model_fields}


def test_the_service_raises_its_open_file_limit_to_the_hard_limit() -> None:
    import resource

    from main import raise_open_file_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip("the hard limit leaves nothing to raise")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))  # as low as a stingy default
    try:
        allowed = raise_open_file_limit()
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == allowed > 256
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_env_example_copied_as_is_gives_the_defaults() -> None:
    """`cp .env.example .env` must start the service as it starts without one: empty values mean the default."""
    copied = Settings(_env_file=PROJECT_DIR / ".env.example")
    defaults = Settings(_env_file=None)
    assert {name for name in Settings.model_fields if getattr(copied, name) != getattr(defaults, name)} == set()


@pytest.mark.parametrize(
    ("command", "variable"),
    [(["main.py"], "MAX_TOP_K"), (["-m", "rag.ingest.bulk", "-"], "PG_HNSW_EF_CONSTRUCTION")],
)
def test_a_command_with_a_bad_setting_says_which_without_a_traceback(
    command: list[str], variable: str, tmp_path: Path
) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(PROJECT_DIR), variable: "0"}
    result = subprocess.run(
        [sys.executable, *command],
        cwd=tmp_path if command[0] == "-m" else PROJECT_DIR,
        env=env,
        input="",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "error: invalid settings" in result.stderr and variable.lower() in result.stderr
    assert "Traceback" not in result.stderr
